//! The `deeprecall` binary.

/// mimalloc instead of the system allocator: a query allocates and frees many small buffers
/// (request and reply JSON, trace events, search hits) across worker threads, where glibc's
/// allocator spends a fifth of the CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    deeprecall::cli::main()
}
