//! The `deeprecall` binary.

/// mimalloc instead of the system allocator: a query allocates and frees many small buffers
/// (request and reply JSON, trace events, search hits) across worker threads, where glibc's
/// allocator spends a fifth of the CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keep_memory_in_small_pages();
    deeprecall::cli::main()
}

/// Turns transparent huge pages off for this process unless `MIMALLOC_ALLOW_THP` asks for
/// them. mimalloc reserves its memory in 1 GiB regions and advises the kernel to back them
/// with 2 MiB pages, and a huge page is resident whole once any byte of it is touched: under
/// 64 concurrent queries the server held nearly twice what its allocations needed (peak 141
/// against 74 MiB, BENCHMARKS.md) for no measurable gain in speed. The kernel reads the flag
/// at each page fault, so setting it before the first thread starts covers the process, and
/// processes it starts inherit it.
fn keep_memory_in_small_pages() {
    #[cfg(target_os = "linux")]
    {
        if !deeprecall::config::transparent_huge_pages_asked()
            && let Err(error) = nix::sys::prctl::set_thp_disable(true)
        {
            eprintln!("warning: cannot turn transparent huge pages off: {error}");
        }
    }
}
