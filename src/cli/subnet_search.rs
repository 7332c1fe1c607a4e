//! Command-line wiring of `lpzero subnet search`.

use anyhow::{bail, Result};
use clap::Args;

/// `lpzero subnet search`.
#[derive(Args)]
pub struct SearchArgs {}

/// Runs the search.
pub fn search(_a: SearchArgs) -> Result<()> {
    bail!("lpzero subnet search is not implemented yet")
}
