//! The GPT-2 benchmark (LiteTransformerSearch / archai `random_GPT2_wt103`): 200 decoders
//! with per-layer heads and MLP widths and adaptive input/output, trained on WikiText-103.
//!
//! Folder layout (`gpt2_wt103/` inside the data folder):
//!
//! * `configs/<key>.yaml`: one model config per architecture; the key is the file stem
//!   (`config_0_j0`). Only the keys the model uses are read (see [`Record`]); the others
//!   (`mem_len`, `attn_type`, ...) are ignored.
//! * `ppl_summary.yaml`: key → `{valid_ppl, test_ppl, ...}`. The ground truth is
//!   `-valid_ppl` (perplexity is lower-is-better; lpzero orients every truth higher-is-better).
//! * `params_summary.yaml`: key → `{AdaEmb, Attn, FFN, nonembedding, total}` (floats holding
//!   integers), kept on each record for tests and for reference.
//!
//! A key given twice in a summary or a config is an error (YAML readers usually keep one of
//! the values silently).
//!
//! Entries are sorted lexicographically by key (`config_0_j0`, `config_0_j1`, …,
//! `config_10_j0`, …, `config_1_j0`, …), the order of the reference's evaluation script. Every
//! file is parsed into typed structs; a missing or invalid key gives a one-line error naming the
//! file and the key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::bounds::{self, at_most};
use super::{Arch, BenchFormat, BenchKind, Benchmark, DataSource, Entry, FieldError};
use crate::report::{clip_to, MESSAGE_CHARS};

pub mod space;

/// The GPT-2 family's benchmark format: truth `valid_ppl`, lower is better; a bench-file
/// record is keyed by its id.
const FORMAT: BenchFormat = BenchFormat {
    name: "gpt2",
    raw_truth: ("valid_ppl", -1.0),
    load,
    record_from_config: |config, _index, id| record_from_config(config, id).map(Arch::new),
};

/// The GPT-2 family.
pub const KIND: BenchKind = BenchKind::new(&FORMAT);

/// Folder of the benchmark inside the data directory.
pub const DIR: &str = "gpt2_wt103";
/// Sub-folder of [`DIR`] holding one YAML config per architecture.
pub const CONFIGS: &str = "configs";
/// Perplexities after training (ground truth: `valid_ppl`).
pub const PPL_FILE: &str = "ppl_summary.yaml";
/// Parameter counts by group.
pub const PARAMS_FILE: &str = "params_summary.yaml";

/// One architecture's model config (the keys of `model_config.yaml` the model uses) with its
/// results from the two summary files.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Record {
    /// Architecture key (file stem), e.g. `config_0_j0`.
    pub key: String,
    /// Vocabulary size (50 264).
    pub n_token: usize,
    /// Hidden size D.
    pub d_model: usize,
    /// Embedding width E.
    pub d_embed: usize,
    /// Adaptive embedding/softmax divisor k (cluster `i` has width E / kⁱ).
    pub div_val: usize,
    /// Heads of each layer (length = number of layers).
    pub n_head: Vec<usize>,
    /// MLP width of each layer (length = number of layers).
    pub d_inner: Vec<usize>,
    /// Cutoffs as stored in the file (cleaned by [`clean_cutoffs`], see [`Record::clusters`]).
    pub cutoffs: Vec<usize>,
    /// Output tables tied to the embedding tables.
    pub tie_weight: bool,
    /// Per cluster: output projection tied to the embedding projection (as stored; only the
    /// first `clean_cutoffs(..).len()` entries are used).
    pub tie_projs: Vec<bool>,
    /// Sequence length of training, also the size of the position table.
    pub tgt_len: usize,
    /// Residual dropout probability.
    pub dropout: f64,
    /// Attention-probability dropout probability (0 in the whole benchmark).
    pub dropatt: f64,
    /// Standard deviation of weights and tables at initialisation.
    pub weight_init_std: f64,
    /// Standard deviation of the projections at initialisation.
    pub proj_init_std: f64,
    /// Every perplexity column of `ppl_summary.yaml` (`None` for a bench-file record, whose
    /// ground truth is its `truth` field).
    pub ppl: Option<PplSummary>,
    /// The five columns of `params_summary.yaml` (`None` for a bench-file record).
    pub params: Option<ParamsSummary>,
}

impl Record {
    /// Number of decoder layers.
    pub fn n_layer(&self) -> usize {
        self.n_head.len()
    }

    /// Validation perplexity after training (lower is better; the benchmark's truth is its
    /// negation), when the record comes from the benchmark.
    pub fn valid_ppl(&self) -> Option<f64> {
        self.ppl.as_ref().map(|p| p.valid_ppl)
    }

    /// The cleaned cutoffs ([`clean_cutoffs`]): the end of each cluster of the adaptive
    /// embedding and softmax, the last one `n_token`.
    pub fn clusters(&self) -> Vec<usize> {
        clean_cutoffs(&self.cutoffs, self.n_token)
    }

    /// Checks that the decoder's shapes hold together: positive sizes, at least one layer with
    /// one `d_inner` entry per `n_head` entry, head counts dividing `d_model`, positive MLP
    /// widths, strictly increasing positive cutoffs after cleaning, a `tie_projs` entry per
    /// cluster, and whole cluster widths (`d_embed` divisible by `div_val` to the number of
    /// tail clusters). Every record read from a benchmark file passed it; the model checks a
    /// record built by hand with it. Field paths are the config's.
    pub fn check_shapes(&self) -> Result<(), FieldError> {
        let err = |field: &str, msg: String| FieldError::new(field, msg);
        for (name, v) in [
            ("n_token", self.n_token),
            ("d_model", self.d_model),
            ("d_embed", self.d_embed),
            ("div_val", self.div_val),
            ("tgt_len", self.tgt_len),
        ] {
            if v == 0 {
                return Err(err(name, "expected a positive integer, found 0".into()));
            }
        }
        if self.n_head.is_empty() || self.d_inner.len() != self.n_head.len() {
            return Err(err(
                "d_inner",
                format!(
                    "expected one entry per layer (≥ 1 layer), found {} heads and {} widths",
                    self.n_head.len(),
                    self.d_inner.len()
                ),
            ));
        }
        for (l, &h) in self.n_head.iter().enumerate() {
            if h == 0 || !self.d_model.is_multiple_of(h) {
                return Err(err(
                    &format!("n_head[{l}]"),
                    format!("{h} heads do not divide d_model = {}", self.d_model),
                ));
            }
        }
        if let Some(l) = self.d_inner.iter().position(|&d| d == 0) {
            return Err(err(
                &format!("d_inner[{l}]"),
                "expected a positive integer, found 0".into(),
            ));
        }
        let cutoffs = self.clusters();
        if cutoffs[0] == 0 || cutoffs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err(
                "cutoffs",
                format!(
                    "expected strictly increasing positive cutoffs, found {:?} (cleaned {cutoffs:?})",
                    self.cutoffs
                ),
            ));
        }
        if self.tie_projs.len() < cutoffs.len() {
            return Err(err(
                "tie_projs",
                format!(
                    "expected at least one entry per cluster ({}), found {}",
                    cutoffs.len(),
                    self.tie_projs.len()
                ),
            ));
        }
        if self.div_val > 1 {
            let widest_divisor = (self.div_val as u64).checked_pow(cutoffs.len() as u32 - 1);
            if widest_divisor.is_none_or(|d| !(self.d_embed as u64).is_multiple_of(d)) {
                return Err(err(
                    "d_embed",
                    format!(
                        "{} is not divisible by div_val^{} (div_val = {}): cluster widths must be whole",
                        self.d_embed,
                        cutoffs.len() - 1,
                        self.div_val
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One entry of `ppl_summary.yaml`. Only `valid_ppl` is required.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
pub struct PplSummary {
    /// Validation perplexity (the ground truth, lower is better).
    pub valid_ppl: f64,
    /// Test perplexity.
    #[serde(default)]
    pub test_ppl: Option<f64>,
    /// Test perplexity without memory.
    #[serde(default)]
    pub test_ppl_nomem: Option<f64>,
    /// Test word-level perplexity.
    #[serde(default)]
    pub test_word_ppl: Option<f64>,
    /// Test word-level perplexity without memory.
    #[serde(default)]
    pub test_word_ppl_nomem: Option<f64>,
    /// Training time in seconds.
    #[serde(default)]
    pub train_elapsed: Option<f64>,
}

/// One entry of `params_summary.yaml` (the counts lpzero reproduces from the built model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParamsSummary {
    /// Embedding tables, input projections and the position table.
    pub ada_emb: u64,
    /// `c_attn` and attention `c_proj` of every block (weights and biases).
    pub attn: u64,
    /// `c_fc` and MLP `c_proj` of every block (weights and biases).
    pub ffn: u64,
    /// `Attn + FFN` + every LayerNorm.
    pub nonembedding: u64,
    /// Every trainable parameter, tied ones once.
    pub total: u64,
}

#[derive(Deserialize)]
struct RawParams {
    #[serde(rename = "AdaEmb")]
    ada_emb: f64,
    #[serde(rename = "Attn")]
    attn: f64,
    #[serde(rename = "FFN")]
    ffn: f64,
    nonembedding: f64,
    total: f64,
}

/// The keys of a model config the model needs; other keys are ignored.
#[derive(Deserialize)]
struct RawConfig {
    n_token: usize,
    n_layer: usize,
    d_model: usize,
    d_embed: usize,
    div_val: usize,
    n_head: Vec<usize>,
    d_inner: Vec<usize>,
    cutoffs: Vec<usize>,
    tie_weight: bool,
    tie_projs: Vec<bool>,
    adaptive: bool,
    tgt_len: usize,
    dropout: f64,
    dropatt: f64,
    weight_init_std: f64,
    proj_init_std: f64,
}

/// Cleans a cutoff list as archai does: keep entries up to (excluding) the first one larger
/// than `n_token`, then append `n_token` when the last kept entry is below it.
/// `[19997, 39997, 199997, 50264]` with 50 264 tokens gives `[19997, 39997, 50264]`.
pub fn clean_cutoffs(cutoffs: &[usize], n_token: usize) -> Vec<usize> {
    let mut out: Vec<usize> = cutoffs
        .iter()
        .copied()
        .take_while(|&c| c <= n_token)
        .collect();
    if out.last().is_none_or(|&c| c < n_token) {
        out.push(n_token);
    }
    out
}

/// Loads the benchmark folder [`DIR`] of `data`.
pub fn load(data: &DataSource) -> Result<Benchmark> {
    let configs_dir = format!("{DIR}/{CONFIGS}");
    let names = data.list(&configs_dir, "yaml").with_context(|| {
        "cannot read the GPT-2 benchmark configs (expected one YAML file per architecture)"
    })?;
    if names.is_empty() {
        bail!(
            "{}: holds no *.yaml model config",
            data.name(&configs_dir).display()
        );
    }
    let ppl_rel = format!("{DIR}/{PPL_FILE}");
    let params_rel = format!("{DIR}/{PARAMS_FILE}");
    let (ppl_path, params_path) = (data.name(&ppl_rel), data.name(&params_rel));
    let ppl = parse_summary(
        &data.read(&ppl_rel, "the GPT-2 perplexity summary")?,
        &ppl_path,
        parse_ppl,
    )?;
    let params = parse_summary(
        &data.read(&params_rel, "the GPT-2 parameter-count summary")?,
        &params_path,
        parse_params,
    )?;
    let mut texts = Vec::with_capacity(names.len());
    for name in names {
        let rel = format!("{configs_dir}/{name}");
        let text = data.read(&rel, "a GPT-2 model config")?;
        let key = name.trim_end_matches(".yaml").to_string();
        texts.push((key, data.name(&rel), text));
    }
    let mut bench = assemble(
        texts
            .iter()
            .map(|(k, p, t)| (k.as_str(), p.as_path(), t.as_str())),
        &ppl,
        &params,
        &ppl_path,
        &params_path,
    )?;
    bench.source = data.name(DIR);
    bench.data = Some(data.clone());
    Ok(bench)
}

/// Builds the benchmark from config texts `(key, path, text)` and the parsed summaries; the
/// paths only name sources in errors. Entries come out sorted by key.
fn assemble<'a>(
    configs: impl Iterator<Item = (&'a str, &'a Path, &'a str)>,
    ppl: &BTreeMap<String, PplSummary>,
    params: &BTreeMap<String, ParamsSummary>,
    ppl_path: &Path,
    params_path: &Path,
) -> Result<Benchmark> {
    let mut entries = Vec::new();
    for (key, path, text) in configs {
        let p = ppl.get(key).ok_or_else(|| {
            anyhow!(
                "{}: key `{key}`: missing (no ground truth for {})",
                ppl_path.display(),
                path.display()
            )
        })?;
        let counts = params.get(key).ok_or_else(|| {
            anyhow!(
                "{}: key `{key}`: missing (no parameter counts for {})",
                params_path.display(),
                path.display()
            )
        })?;
        let mut record = parse_config(text, path, key)?;
        record.ppl = Some(p.clone());
        record.params = Some(*counts);
        entries.push(Entry {
            key: key.to_string(),
            truth: -p.valid_ppl,
            arch: Arch::new(record),
        });
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    if entries.is_empty() {
        bail!("the GPT-2 benchmark holds no architecture");
    }
    Ok(Benchmark {
        kind: KIND,
        source: ppl_path.parent().map(Path::to_path_buf).unwrap_or_default(),
        data: None,
        entries,
        truth_name: "negated validation perplexity (-valid_ppl), higher is better",
        raw_truth: KIND.raw_truth(),
    })
}

/// Formats a serde error located at `path` inside the file `file`: `file: key `a.b`: message`.
fn located(file: &Path, path: &serde_path_to_error::Path, inner: impl std::fmt::Display) -> String {
    let path = clip_to(&path.to_string(), MESSAGE_CHARS).into_owned();
    let inner = clip_to(&inner.to_string().replace('\n', " "), MESSAGE_CHARS).into_owned();
    if path == "." {
        format!("{}: {inner}", file.display())
    } else {
        format!("{}: key `{path}`: {inner}", file.display())
    }
}

/// A YAML file that could not be read as `expected`: a key given twice, or anything else.
fn yaml_error(path: &Path, e: serde_yaml::Error, expected: &str) -> anyhow::Error {
    let inner = clip_to(&e.to_string().replace('\n', " "), MESSAGE_CHARS).into_owned();
    if inner.contains("duplicate entry") {
        anyhow!("{}: {inner}; expected each key once", path.display())
    } else {
        anyhow!("{}: expected {expected}: {inner}", path.display())
    }
}

fn parse_summary<T>(
    text: &str,
    path: &Path,
    parse: impl Fn(&serde_yaml::Value, &str) -> Result<T, String>,
) -> Result<BTreeMap<String, T>> {
    // A `Mapping` (unlike a `BTreeMap`) refuses a key given twice, which would otherwise
    // silently replace an architecture's entry.
    let map: serde_yaml::Mapping = serde_yaml::from_str(text)
        .map_err(|e| yaml_error(path, e, "a mapping from architecture key to entry"))?;
    let mut out = BTreeMap::new();
    for (key, value) in &map {
        let Some(key) = key.as_str() else {
            bail!(
                "{}: expected architecture keys such as `config_0_j0`, found the key {}",
                path.display(),
                serde_yaml::to_string(key)
                    .unwrap_or_default()
                    .trim_end()
                    .replace('\n', " ")
            );
        };
        let parsed = parse(value, key).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        out.insert(key.to_string(), parsed);
    }
    Ok(out)
}

/// Deserialises `value` into `T`, naming `key.field` on failure.
fn typed<T: serde::de::DeserializeOwned>(
    value: &serde_yaml::Value,
    key: &str,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = clip_to(&e.path().to_string(), MESSAGE_CHARS).into_owned();
        let inner = clip_to(&e.inner().to_string().replace('\n', " "), MESSAGE_CHARS).into_owned();
        if path == "." {
            format!("key `{key}`: {inner}")
        } else {
            format!("key `{key}.{path}`: {inner}")
        }
    })
}

fn parse_ppl(value: &serde_yaml::Value, key: &str) -> Result<PplSummary, String> {
    let p: PplSummary = typed(value, key)?;
    if !(p.valid_ppl.is_finite() && p.valid_ppl > 0.0) {
        return Err(format!(
            "key `{key}.valid_ppl`: expected a finite positive perplexity, found {}",
            p.valid_ppl
        ));
    }
    Ok(p)
}

fn parse_params(value: &serde_yaml::Value, key: &str) -> Result<ParamsSummary, String> {
    let raw: RawParams = typed(value, key)?;
    let int = |name: &str, v: f64| -> Result<u64, String> {
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
            Ok(v as u64)
        } else {
            Err(format!(
                "key `{key}.{name}`: expected a non-negative whole number, found {v}"
            ))
        }
    };
    Ok(ParamsSummary {
        ada_emb: int("AdaEmb", raw.ada_emb)?,
        attn: int("Attn", raw.attn)?,
        ffn: int("FFN", raw.ffn)?,
        nonembedding: int("nonembedding", raw.nonembedding)?,
        total: int("total", raw.total)?,
    })
}

/// Parses and validates one model config (`path` names the file in errors). The record has
/// no summaries yet (`ppl` and `params` are `None`).
pub fn parse_config(text: &str, path: &Path, key: &str) -> Result<Record> {
    // Through a `Value` first: its mappings refuse a key given twice (deserialising straight
    // into the struct would let a repeated ignored key pass).
    let value: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| yaml_error(path, e, "a YAML mapping of model settings"))?;
    let raw: RawConfig = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow!("{}", located(path, e.path(), e.inner())))?;
    check_config(raw, key)
        .map_err(|e| anyhow!("{}: key `{}`: {}", path.display(), e.field, e.message))
}

/// Builds the record `key` from the `config` object of a bench-file record (the keys of a
/// benchmark config, in JSON), with the benchmark's checks. Field paths in errors are relative
/// to `config`; keys the model does not use are ignored, as in the YAML files.
fn record_from_config(config: &serde_json::Value, key: &str) -> Result<Record, FieldError> {
    let raw: RawConfig =
        serde_path_to_error::deserialize(config).map_err(FieldError::from_serde)?;
    check_config(raw, key)
}

/// Validates a model config and builds its record (without summaries): first what only the
/// file says (at least one layer, sanity bounds, `adaptive`, one `n_head` and `d_inner` entry
/// per layer, finite probabilities and deviations), then the record's shapes
/// ([`Record::check_shapes`], which also refuses zero sizes).
fn check_config(raw: RawConfig, key: &str) -> Result<Record, FieldError> {
    let err = |field: &str, msg: String| FieldError::new(field, msg);
    if raw.n_layer == 0 {
        return Err(err(
            "n_layer",
            "expected a positive integer, found 0".into(),
        ));
    }
    for (name, v, max) in [
        ("n_token", raw.n_token, bounds::MAX_VOCAB),
        ("n_layer", raw.n_layer, bounds::MAX_LAYERS),
        ("d_model", raw.d_model, bounds::MAX_WIDTH),
        ("d_embed", raw.d_embed, bounds::MAX_WIDTH),
        ("div_val", raw.div_val, bounds::MAX_CLUSTERS),
        ("tgt_len", raw.tgt_len, bounds::MAX_POSITIONS),
        ("cutoffs", raw.cutoffs.len(), bounds::MAX_CLUSTERS),
    ] {
        at_most(v, max).map_err(|m| {
            let m = if name == "cutoffs" {
                format!("{m} entries")
            } else {
                m
            };
            err(name, m)
        })?;
    }
    if !raw.adaptive {
        return Err(err(
            "adaptive",
            "expected true (lpzero builds the adaptive-input/softmax model only)".into(),
        ));
    }
    for (name, list) in [("n_head", &raw.n_head), ("d_inner", &raw.d_inner)] {
        if list.len() != raw.n_layer {
            return Err(err(
                name,
                format!(
                    "expected one entry per layer (n_layer = {}), found {}",
                    raw.n_layer,
                    list.len()
                ),
            ));
        }
    }
    for (name, list, max) in [
        ("n_head", &raw.n_head, bounds::MAX_HEADS),
        ("d_inner", &raw.d_inner, bounds::MAX_FFN_WIDTH),
    ] {
        for (l, &v) in list.iter().enumerate() {
            at_most(v, max).map_err(|m| err(&format!("{name}[{l}]"), m))?;
        }
    }
    for (name, v) in [
        ("dropout", raw.dropout),
        ("dropatt", raw.dropatt),
        ("weight_init_std", raw.weight_init_std),
        ("proj_init_std", raw.proj_init_std),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(err(
                name,
                format!("expected a finite non-negative number, found {v}"),
            ));
        }
    }
    if raw.dropout >= 1.0 {
        return Err(err(
            "dropout",
            format!("expected a probability below 1, found {}", raw.dropout),
        ));
    }
    let record = Record {
        key: key.to_string(),
        n_token: raw.n_token,
        d_model: raw.d_model,
        d_embed: raw.d_embed,
        div_val: raw.div_val,
        n_head: raw.n_head,
        d_inner: raw.d_inner,
        cutoffs: raw.cutoffs,
        tie_weight: raw.tie_weight,
        tie_projs: raw.tie_projs,
        tgt_len: raw.tgt_len,
        dropout: raw.dropout,
        dropatt: raw.dropatt,
        weight_init_std: raw.weight_init_std,
        proj_init_std: raw.proj_init_std,
        ppl: None,
        params: None,
    };
    record.check_shapes()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_are_cleaned_as_archai() {
        assert_eq!(
            clean_cutoffs(&[19997, 39997, 199997, 50264], 50264),
            vec![19997, 39997, 50264]
        );
        assert_eq!(clean_cutoffs(&[10, 20], 30), vec![10, 20, 30]);
        assert_eq!(clean_cutoffs(&[10, 30], 30), vec![10, 30]);
        assert_eq!(clean_cutoffs(&[], 30), vec![30]);
    }

    const CONFIG: &str = "n_token: 60\nn_layer: 2\nd_model: 16\nd_embed: 8\ndiv_val: 2\n\
        n_head: [2, 4]\nd_inner: [24, 40]\ncutoffs: [20, 40, 600, 60]\ntie_weight: true\n\
        tie_projs: [false, true, true, true]\nadaptive: true\ntgt_len: 12\ndropout: 0.1\n\
        dropatt: 0.0\nweight_init_std: 0.02\nproj_init_std: 0.01\nmem_len: 12\n";

    #[test]
    fn config_parses_and_validates() {
        let r = parse_config(CONFIG, Path::new("c.yaml"), "c").unwrap();
        assert_eq!(r.n_layer(), 2);
        assert_eq!(r.d_inner, vec![24, 40]);
        let bad = CONFIG.replace("n_head: [2, 4]", "n_head: [2, 3]");
        let e = parse_config(&bad, Path::new("c.yaml"), "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.yaml") && e.contains("n_head[1]"), "{e}");
        let bad = CONFIG.replace("d_model: 16\n", "");
        let e = parse_config(&bad, Path::new("c.yaml"), "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.yaml") && e.contains("d_model"), "{e}");
        let bad = CONFIG.replace("d_inner: [24, 40]", "d_inner: [24, wide]");
        let e = parse_config(&bad, Path::new("c.yaml"), "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("d_inner[1]"), "{e}");
    }
}
