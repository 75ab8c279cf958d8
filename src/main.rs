use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fenice::cli::Cli::parse();
    match fenice::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fenice: {e:#}");
            fenice::cli::exit_code(&e)
        }
    }
}
