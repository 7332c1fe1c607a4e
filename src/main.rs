//! The `lpzero` command-line tool (a thin layer over the `lpzero` library).

mod cli;
mod out;

use clap::Parser;

fn main() {
    lpzero::probe::memory::reuse_freed_memory();
    let args = cli::Cli::parse();
    if let Err(err) = cli::run(args) {
        if err.downcast_ref::<out::Closed>().is_some() {
            // The reader of stdout went away: like `head`, stop quietly.
            return;
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
