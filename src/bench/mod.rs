//! Benchmarks: trained architectures with their ground truth, read from a data directory.
//!
//! A [`Benchmark`] is a list of [`Entry`] values, one per architecture, each with a key, the
//! architecture description of its family and its ground truth oriented so that higher is
//! better everywhere in the tool. Families sit side by side in [`Arch`].

pub mod flexibert;
pub mod gpt2;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The benchmark families lpzero knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BenchKind {
    /// 500 FlexiBERT encoders with GLUE scores (`flexibert/BERT_benchmark.json`).
    Flexibert,
    /// 200 GPT-2 decoders with WikiText-103 perplexities (`gpt2_wt103/`).
    Gpt2,
}

impl BenchKind {
    /// The benchmark's own ground-truth column and the sign that orients it (higher = better):
    /// `("glue", 1)` or `("valid_ppl", −1)`. A correlation against the oriented truth times the
    /// sign is the raw correlation against that column.
    pub fn raw_truth(self) -> (&'static str, f64) {
        match self {
            BenchKind::Flexibert => ("glue", 1.0),
            BenchKind::Gpt2 => ("valid_ppl", -1.0),
        }
    }

    /// The name used on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            BenchKind::Flexibert => "flexibert",
            BenchKind::Gpt2 => "gpt2",
        }
    }
}

impl fmt::Display for BenchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One architecture's description, by family.
#[derive(Clone, Debug, PartialEq)]
pub enum Arch {
    /// A FlexiBERT encoder record.
    Flexibert(flexibert::Record),
    /// A GPT-2 decoder config with its perplexities and parameter counts (boxed: much larger
    /// than a FlexiBERT record).
    Gpt2(Box<gpt2::Record>),
}

/// One benchmark architecture with its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Stable key of the architecture (the record id for FlexiBERT, the file stem for GPT-2).
    pub key: String,
    /// Ground truth oriented so that higher is better (GLUE as is, GPT-2 `-valid_ppl`).
    pub truth: f64,
    /// The architecture itself.
    pub arch: Arch,
}

/// A loaded benchmark: its family, where it came from and its architectures in benchmark order
/// (file order for FlexiBERT, keys sorted lexicographically for GPT-2).
#[derive(Clone, Debug)]
pub struct Benchmark {
    /// Which family this is.
    pub kind: BenchKind,
    /// The file or folder it was read from (for messages).
    pub source: PathBuf,
    /// Architectures in benchmark order.
    pub entries: Vec<Entry>,
    /// What the ground truth is, in words (e.g. "GLUE average, higher is better").
    pub truth_name: &'static str,
}

impl Benchmark {
    /// Loads the benchmark of `kind` from the data directory `data_dir`.
    pub fn load(kind: BenchKind, data_dir: &Path) -> Result<Self> {
        match kind {
            BenchKind::Flexibert => flexibert::load(&data_dir.join(flexibert::FILE)),
            BenchKind::Gpt2 => gpt2::load(&data_dir.join(gpt2::DIR)),
        }
    }

    /// Number of architectures.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the benchmark holds no architecture.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ground truth of the selected architectures, in selection order.
    pub fn truths(&self, selection: &[usize]) -> Vec<f64> {
        selection.iter().map(|&i| self.entries[i].truth).collect()
    }
}

/// Sanity bounds on architecture sizes read from benchmark files: far above any real language
/// model (GPT-3 has width 12 288, MLP width 49 152, 96 layers), so only a damaged or hostile
/// file reaches them. Values past them are refused at load time, naming the file, the record
/// and the field, before any arithmetic on them can overflow or any allocation can abort.
/// Whether a legal size fits this machine is checked later ([`crate::probe::memory`]).
pub mod bounds {
    /// Hidden size, `d_model`, `d_embed`.
    pub const MAX_WIDTH: usize = 1 << 14;
    /// FFN or MLP width (`feed_forward_dimension`, `d_inner`).
    pub const MAX_FFN_WIDTH: usize = 1 << 16;
    /// Layers of one model.
    pub const MAX_LAYERS: usize = 256;
    /// Heads of one layer.
    pub const MAX_HEADS: usize = 1024;
    /// FFN layers of one FlexiBERT encoder layer (`num_feed_forward`).
    pub const MAX_FFN_LAYERS: usize = 64;
    /// DSC kernel size.
    pub const MAX_KERNEL: usize = 511;
    /// Vocabulary size (`n_token`) and every cutoff.
    pub const MAX_VOCAB: usize = 1 << 22;
    /// Position-table size (`tgt_len`).
    pub const MAX_POSITIONS: usize = 1 << 16;
    /// Adaptive divisor (`div_val`) and number of cutoffs.
    pub const MAX_CLUSTERS: usize = 64;

    /// `Ok` when `value ≤ max`, else the message `expected at most MAX, found VALUE`.
    pub fn at_most(value: usize, max: usize) -> Result<(), String> {
        if value <= max {
            Ok(())
        } else {
            Err(format!("expected at most {max}, found {value}"))
        }
    }
}

/// Environment variable naming the data directory when `--data-dir` is absent.
pub const DATA_ENV: &str = "LPZERO_DATA";

/// Finds the data directory: `explicit` (from `--data-dir`), else `$LPZERO_DATA`, else
/// `../shared/benchmarks` next to the project root (the source checkout, then the current
/// directory), else an error that says how to provide the data.
pub fn resolve_data_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        if !dir.is_dir() {
            bail!("--data-dir {}: not a directory", dir.display());
        }
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(DATA_ENV) {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!("{DATA_ENV}={}: not a directory", dir.display());
        }
        return Ok(dir);
    }
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/benchmarks"),
        PathBuf::from("../shared/benchmarks"),
    ];
    for c in candidates {
        if c.is_dir() {
            return Ok(c);
        }
    }
    bail!(
        "no benchmark data found: pass --data-dir DIR or set {DATA_ENV}=DIR, where DIR holds \
         flexibert/BERT_benchmark.json (the public FlexiBERT benchmark of Serianni & Kalita, \
         also shipped with pprp/LPZero) and/or gpt2_wt103/ (the GPT-2 benchmark of \
         LiteTransformerSearch); by default lpzero looks in ../shared/benchmarks \
         beside the project root"
    )
}

/// A selection of architectures by position, parsed from `--archs`.
///
/// Accepted forms: `all`, `A..B` (half-open), `A..=B`, `N` (one), and comma-separated lists
/// of these (`0..10,42`).
pub fn parse_selection(text: &str, n: usize) -> Result<Vec<usize>> {
    let text = text.trim();
    if text.is_empty() || text == "all" {
        return Ok((0..n).collect());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = if let Some((a, b)) = part.split_once("..=") {
            (parse_index(a, part)?, after(parse_index(b, part)?, part)?)
        } else if let Some((a, b)) = part.split_once("..") {
            let lo = if a.is_empty() {
                0
            } else {
                parse_index(a, part)?
            };
            let hi = if b.is_empty() {
                n
            } else {
                parse_index(b, part)?
            };
            (lo, hi)
        } else {
            let i = parse_index(part, part)?;
            (i, after(i, part)?)
        };
        if lo >= hi {
            bail!("`{text}`: range `{part}` is empty");
        }
        if hi > n {
            bail!("`{text}`: range `{part}` reaches past the {n} architectures of the benchmark");
        }
        out.extend(lo..hi);
    }
    Ok(out)
}

/// Like [`parse_selection`], plus `random:N`: `N` distinct architectures drawn with `seed`
/// (returned in benchmark order).
pub fn parse_sample(text: &str, n: usize, seed: u64) -> Result<Vec<usize>> {
    let Some(count) = text.trim().strip_prefix("random:") else {
        return parse_selection(text, n);
    };
    let count: usize = count
        .trim()
        .parse()
        .with_context(|| format!("`{text}`: expected random:N with N a count"))?;
    if count == 0 || count > n {
        bail!("`{text}`: N must be within 1..={n}");
    }
    let mut rng = crate::rng::Rng::derive(seed, &[10]);
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..count {
        let j = rng.range(i, n);
        all.swap(i, j);
    }
    let mut picked = all[..count].to_vec();
    picked.sort_unstable();
    Ok(picked)
}

#[cfg(test)]
#[test]
fn random_samples_are_seeded_and_distinct() {
    let a = parse_sample("random:3", 10, 1).unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a[2] < 10);
    assert_eq!(a, parse_sample("random:3", 10, 1).unwrap());
    assert_eq!(parse_sample("0..2", 10, 1).unwrap(), vec![0, 1]);
    assert!(parse_sample("random:11", 10, 1).is_err());
}

/// `i + 1` without wrapping around (an index that large is past any benchmark).
fn after(i: usize, part: &str) -> Result<usize> {
    i.checked_add(1)
        .with_context(|| format!("`{}`: index {i} is too large", crate::report::clip(part)))
}

fn parse_index(s: &str, part: &str) -> Result<usize> {
    s.trim().parse::<usize>().with_context(|| {
        format!(
            "`{}` is not a range like 0..50, 7, or all",
            crate::report::clip(part)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(parse_selection("all", 3).unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_selection("1..3", 5).unwrap(), vec![1, 2]);
        assert_eq!(parse_selection("1..=3", 5).unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_selection("0..2,4", 5).unwrap(), vec![0, 1, 4]);
        assert_eq!(parse_selection("3..", 5).unwrap(), vec![3, 4]);
        assert!(parse_selection("0..9", 5)
            .unwrap_err()
            .to_string()
            .contains("past"));
        assert!(parse_selection("x", 5)
            .unwrap_err()
            .to_string()
            .contains("not a range"));
        assert!(parse_selection("3..3", 5)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
