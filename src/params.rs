//! Parameter counts of benchmark architectures, counted from the built models' tensors.
//!
//! FlexiBERT reports the total only. GPT-2 also reports the four other columns of
//! `params_summary.yaml` ([`GPT2_COLUMNS`]), obtained by grouping the model's registered
//! tensors by kind (see [`crate::models::gpt2_flex::GROUP_ATTN`] and its siblings).

use crate::bench::{Arch, Benchmark};
use crate::models::flexibert::{Config, FlexiBert, SizeMode};
use crate::models::gpt2_flex::{self, Gpt2Flex};
use crate::probe::{memory, ProbeOptions};

use anyhow::{Context, Result};

/// The GPT-2 columns besides `total`, in `params_summary.yaml` order.
pub const GPT2_COLUMNS: [&str; 4] = ["AdaEmb", "Attn", "FFN", "nonembedding"];

/// The parameter count of one architecture.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParamCount {
    /// Architecture key.
    pub key: String,
    /// Every trainable parameter, tied tensors once.
    pub total: usize,
    /// Further columns of the family, in output order: empty for FlexiBERT; for GPT-2 the
    /// columns named by [`GPT2_COLUMNS`] (`AdaEmb`, `Attn`, `FFN`, `nonembedding`).
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

/// The GPT-2 columns ([`GPT2_COLUMNS`] order) from a model's parameter groups
/// ([`Gpt2Flex::param_groups`]): `AdaEmb`, `Attn`, `FFN`, and
/// `nonembedding = Attn + FFN + LayerNorm`.
pub fn gpt2_columns(groups: &[(&'static str, usize)]) -> Vec<(&'static str, usize)> {
    let group = |name: &str| {
        groups
            .iter()
            .filter(|(g, _)| *g == name)
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    let attn = group(gpt2_flex::GROUP_ATTN);
    let ffn = group(gpt2_flex::GROUP_FFN);
    vec![
        (GPT2_COLUMNS[0], group(gpt2_flex::GROUP_ADA_EMB)),
        (GPT2_COLUMNS[1], attn),
        (GPT2_COLUMNS[2], ffn),
        (
            GPT2_COLUMNS[3],
            attn + ffn + group(gpt2_flex::GROUP_LAYER_NORM),
        ),
    ]
}

/// The parameter count (with the family's extra columns) of each selected architecture, in
/// selection order. `sizes` applies to FlexiBERT only. Fails before building anything when a
/// model's parameters alone need more memory than probing may use
/// ([`crate::probe::memory::check_fits`]).
pub fn count_columns(
    bench: &Benchmark,
    selection: &[usize],
    sizes: SizeMode,
) -> Result<Vec<ParamCount>> {
    let opts = ProbeOptions {
        sizes,
        ..ProbeOptions::default()
    };
    let limit = memory::MemoryLimit::current()?;
    memory::check_fits(bench, selection, &opts, 1, limit, memory::Work::Build)?;
    selection
        .iter()
        .map(|&i| {
            let entry = &bench.entries[i];
            let counted = || -> Result<(usize, Vec<(&'static str, usize)>)> {
                Ok(match &entry.arch {
                    Arch::Flexibert(record) => {
                        let config = Config::from_record(record, sizes)?;
                        (
                            FlexiBert::shapes_only(&config)?.params().count(),
                            Vec::new(),
                        )
                    }
                    Arch::Gpt2(record) => {
                        let config = gpt2_flex::Config::from_record(record)?;
                        let model = Gpt2Flex::shapes_only(&config)?;
                        (model.params().count(), gpt2_columns(&model.param_groups()))
                    }
                })
            };
            // Name the architecture by its key: a bench file's own id, not a position.
            let (total, columns) =
                counted().with_context(|| format!("{} architecture {}", bench.kind, entry.key))?;
            Ok(ParamCount {
                key: entry.key.clone(),
                total,
                columns,
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
