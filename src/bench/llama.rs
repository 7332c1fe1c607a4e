//! The Llama family's records: a sub-network of a pretrained Llama (a model folder and the
//! sub-network's per-layer FFN widths and heads). There is no shipped Llama benchmark: the
//! records come from bench files (`--bench-file`), one per line:
//!
//! ```json
//! {"id": "s0", "family": "llama", "config": {"model": "results/llama/model",
//!  "ffn_widths": [352, 264, 176, 308]}, "truth": 31.2, "higher_is_better": false}
//! ```
//!
//! `model` is a folder holding `config.json` (and the weights, else they are drawn from the
//! probe seed) or the `config.json` file itself, relative to the working directory; `heads`
//! (one query-head count per layer) is optional. The sub-network is checked against the model
//! when it is probed.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{Arch, BenchFormat, BenchKind, Benchmark, DataSource, FieldError};

/// The Llama family's benchmark format: truth as the bench file orients it (`truth` with
/// `higher_is_better`), nominally a held-out perplexity (lower is better).
const FORMAT: BenchFormat = BenchFormat {
    name: "llama",
    raw_truth: ("heldout_ppl", -1.0),
    load,
    record_from_config: |config, _index, _id| record_from_config(config).map(Arch::new),
};

/// The Llama family.
pub const KIND: BenchKind = BenchKind::new(&FORMAT);

/// One sub-network of a model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The model folder (or its `config.json`).
    pub model: String,
    /// FFN width of each layer.
    pub ffn_widths: Vec<usize>,
    /// Query heads of each layer (`None`: every head).
    #[serde(default)]
    pub heads: Option<Vec<usize>>,
}

/// There is no shipped Llama benchmark.
fn load(_source: &DataSource) -> Result<Benchmark> {
    bail!(
        "the llama family ships no benchmark: give sub-networks with --bench-file (records \
         {{\"id\", \"family\": \"llama\", \"config\": {{\"model\", \"ffn_widths\"}}, \"truth\"}}) \
         or use `lpzero subnet`"
    )
}

/// Reads a bench-file record's `config`: `model` (non-empty) and at least one FFN width.
fn record_from_config(config: &serde_json::Value) -> Result<Record, FieldError> {
    let r: Record = serde_path_to_error::deserialize(config).map_err(FieldError::from_serde)?;
    if r.model.is_empty() {
        return Err(FieldError::new(
            "model",
            "expected a model folder, found \"\"",
        ));
    }
    if r.ffn_widths.is_empty() {
        return Err(FieldError::new(
            "ffn_widths",
            "expected one FFN width per layer, found none",
        ));
    }
    Ok(r)
}
