//! `readtier`: see [`readtier::cli`].

fn main() -> std::process::ExitCode {
    readtier::cli::main()
}
