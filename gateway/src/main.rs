//! The `edgejoin` binary: see [`edgejoin::cli`].

fn main() -> std::process::ExitCode {
    edgejoin::cli::main()
}
