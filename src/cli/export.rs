//! Command-line wiring of `lpzero export`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use lpzero::export::{self, Target};
use lpzero::report;

use crate::out;

/// `lpzero export`.
#[derive(Args)]
pub struct ExportArgs {
    /// The proxy: an expression (e.g. `add(mean(pow2(head)), mean(abs(act)))`) or a published
    /// genotype (`lpzero_bert`, `lpzero_csv_bert`, `lpzero_gpt2`), as `score --proxy` reads it.
    #[arg(value_name = "EXPR")]
    expr: String,
    /// What to write: a self-contained PyTorch module defining
    /// `proxy(act, head, softmax, grad, weight)`, or the LaTeX formula.
    #[arg(long, value_enum)]
    to: Target,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Exports an expression to Python or LaTeX.
pub fn export(a: ExportArgs) -> Result<()> {
    let expr = export::resolve(&a.expr).context("EXPR")?;
    let text = export::export(&expr, a.to)?;
    match &a.out {
        Some(path) => report::write_atomic(path, text),
        None => out::line(text.trim_end()),
    }
}
