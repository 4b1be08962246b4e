//! nhiwatch binary: hands the command line to the library.

fn main() -> std::process::ExitCode {
    match nhiwatch::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error names paths a user or a process chose: one line, like the logs.
            eprintln!("nhiwatch: {}", nhiwatch::cli::one_line(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
