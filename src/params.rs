//! Parameter counts of benchmark architectures, counted from the built models' tensors.
//!
//! Each family counts its own ([`crate::models::Family::count_params`]): FlexiBERT reports the
//! total only; GPT-2 also reports the four other columns of `params_summary.yaml`
//! ([`crate::models::gpt2_flex::COLUMNS`]), obtained by grouping the model's registered tensors
//! by kind.

use crate::bench::Benchmark;
use crate::models;
use crate::probe::{memory, SizeMode};

use anyhow::{Context, Result};

/// The parameter count of one architecture.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParamCount {
    /// Architecture key.
    pub key: String,
    /// Every trainable parameter, tied tensors once.
    pub total: usize,
    /// Further columns of the family, in output order: empty for FlexiBERT; for GPT-2
    /// `AdaEmb`, `Attn`, `FFN`, `nonembedding`.
    pub columns: Vec<(&'static str, usize)>,
}

impl ParamCount {
    /// The value of the column `name` (`total` included), if the family has it.
    pub fn get(&self, name: &str) -> Option<usize> {
        if name == "total" {
            return Some(self.total);
        }
        self.columns.iter().find(|(n, _)| *n == name).map(|c| c.1)
    }
}

/// The parameter count (with the family's extra columns) of each selected architecture, in
/// selection order. `sizes` applies to the families with a size mode (FlexiBERT). Fails
/// before building anything when a model's parameters alone need more memory than probing may
/// use ([`crate::probe::memory::check_fits`]).
pub fn count_columns(
    bench: &Benchmark,
    selection: &[usize],
    sizes: SizeMode,
) -> Result<Vec<ParamCount>> {
    let family = models::family(bench.kind);
    let opts = crate::probe::ProbeOptions {
        sizes,
        ..family.probe_options()
    };
    let limit = memory::MemoryLimit::current()?;
    let size_of = |entry: &crate::bench::Entry| family.size(&entry.arch, &opts);
    let work = memory::Work::Build;
    memory::check_fits(bench, selection, &opts, limit, work, &size_of)?;
    selection
        .iter()
        .map(|&i| {
            let entry = &bench.entries[i];
            // Name the architecture by its key: a bench file's own id, not a position.
            let counted = family
                .count_params(&entry.arch, &opts)
                .with_context(|| format!("{} architecture {}", bench.kind, entry.key))?;
            Ok(ParamCount {
                key: entry.key.clone(),
                total: counted.total,
                columns: counted.columns,
            })
        })
        .collect()
}

/// `(key, total parameters)` for each selected architecture, in selection order.
pub fn count(
    bench: &Benchmark,
    selection: &[usize],
    sizes: SizeMode,
) -> Result<Vec<(String, usize)>> {
    Ok(count_columns(bench, selection, sizes)?
        .into_iter()
        .map(|c| (c.key, c.total))
        .collect())
}
