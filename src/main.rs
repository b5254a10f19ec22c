//! The `ringblast` command line (see `ringblast --help` and src/cli/).

fn main() -> std::process::ExitCode {
    ringblast::cli::main()
}
