//! The `asymm` command line: parse arguments, dispatch to a subcommand, map errors to exit codes
//! (1: failure, 2: usage, 3: verification found corrupt artifacts).

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
