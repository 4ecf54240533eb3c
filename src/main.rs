//! The `deeprecall` binary.

fn main() -> std::process::ExitCode {
    deeprecall::cli::main()
}
