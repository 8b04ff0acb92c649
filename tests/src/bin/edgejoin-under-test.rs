//! `edgejoin` as the end-to-end tests run it (the same entry point as the
//! shipped binary).

fn main() -> std::process::ExitCode {
    edgejoin::cli::main()
}
