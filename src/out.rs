//! Standard output of the command line. Every command prints through [`line`], so that a
//! reader that goes away early (`lpzero ... | head`) ends the program quietly with status 0,
//! and any other write error (a full disk behind `> file`) is one error line and status 1,
//! never a panic.

use std::fmt;
use std::io::{ErrorKind, Write};

use anyhow::{anyhow, Result};

/// The reader of stdout has gone (a broken pipe): not a failure, the program just stops.
#[derive(Debug)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for Closed {}

/// Writes `text` and a newline to stdout and flushes, so a failure shows here and not at exit.
/// Errors: [`Closed`] for a broken pipe, else `cannot write to stdout: <cause>`.
pub fn line(text: impl fmt::Display) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => anyhow!(Closed),
            _ => anyhow!("cannot write to stdout: {e}"),
        })
}
