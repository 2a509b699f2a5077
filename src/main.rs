//! The `asymm` command line: parse arguments, dispatch to a subcommand, map errors to exit codes
//! (1: failure, 2: usage, 3: verification found corrupt artifacts, 4: a remote refused the
//! credential, as a read-only key refuses a push).

mod cli;

use clap::Parser;

fn main() {
    // `asymm show` prints polars tables: every selected row and column (`--rows` and
    // `--columns` choose them), not polars' default abbreviation, unless the user set these.
    for (var, value) in [
        ("POLARS_FMT_MAX_ROWS", "-1"),
        ("POLARS_FMT_MAX_COLS", "-1"),
        ("POLARS_TABLE_WIDTH", "400"),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: the program has not started any other thread yet.
            unsafe { std::env::set_var(var, value) };
        }
    }
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            use asymm::store::StoreError::RemoteDenied;
            let denied = e.chain().any(|c| {
                matches!(c.downcast_ref(), Some(RemoteDenied { .. }))
                    || matches!(
                        c.downcast_ref(),
                        Some(asymm::dag::DagError::Store(RemoteDenied { .. }))
                    )
            });
            std::process::exit(if denied { 4 } else { 1 });
        }
    }
}
