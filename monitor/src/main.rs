//! nhiwatch binary: hands the command line to the library.

fn main() -> std::process::ExitCode {
    match nhiwatch::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nhiwatch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
