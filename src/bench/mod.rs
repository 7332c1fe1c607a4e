//! Benchmarks: trained architectures with their ground truth.
//!
//! A [`Benchmark`] is a list of [`Entry`] values, one per architecture, each with a key, the
//! architecture description of its family and its ground truth oriented so that higher is
//! better everywhere in the tool. Each family's benchmark format lives in a file of its own
//! (`flexibert.rs`, `gpt2.rs`) that declares its [`BenchFormat`]; this module knows no family
//! by name: a [`BenchKind`] is a handle to a family's format, and an [`Arch`] holds the
//! family's own record type. The shipped benchmarks are read from a [`DataSource`]: the copy compiled
//! into the library, or a data folder with the same layout.

pub mod flexibert;
pub mod gpt2;
pub mod json;
pub mod jsonl;
pub mod llama;
pub mod source;
pub mod space;

pub use source::{DataSource, DATA_ENV};

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

/// What a family's bench file provides: its name, how its ground truth is oriented, how its
/// shipped benchmark is loaded and how a bench-file record's `config` is read. The benchmark
/// half of the family seam (the model half is [`crate::models::Family`]).
pub struct BenchFormat {
    /// The family's name on the command line, in bench files and in outputs (`flexibert`).
    pub name: &'static str,
    /// The benchmark's own ground-truth column and the sign that orients it (higher =
    /// better): `("glue", 1)` or `("valid_ppl", −1)`. A correlation against the oriented truth
    /// times the sign is the raw correlation against that column.
    pub raw_truth: (&'static str, f64),
    /// Loads the family's shipped benchmark from a data source (the embedded copy or a data
    /// folder).
    pub load: fn(&DataSource) -> Result<Benchmark>,
    /// Reads the `config` object of a bench-file record into an architecture, with the checks
    /// of the shipped benchmark, given the record's position among the file's records and its
    /// `id` field. Field paths in errors are relative to `config`.
    pub record_from_config: fn(&serde_json::Value, usize, &str) -> Result<Arch, FieldError>,
}

/// A benchmark family: a handle to its [`BenchFormat`], compared, hashed, printed and
/// serialised by name. Each bench file defines its own (`bench::flexibert::KIND`); the family
/// registry ([`crate::models::FAMILIES`]) finds a family's model from it.
#[derive(Clone, Copy)]
pub struct BenchKind(&'static BenchFormat);

impl BenchKind {
    /// The family whose benchmark format is `format`.
    pub const fn new(format: &'static BenchFormat) -> Self {
        BenchKind(format)
    }

    /// The family's benchmark format.
    pub fn format(self) -> &'static BenchFormat {
        self.0
    }

    /// The benchmark's own ground-truth column and the sign that orients it (see
    /// [`BenchFormat::raw_truth`]).
    pub fn raw_truth(self) -> (&'static str, f64) {
        self.0.raw_truth
    }

    /// The name used on the command line and in outputs.
    pub fn name(self) -> &'static str {
        self.0.name
    }
}

impl PartialEq for BenchKind {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for BenchKind {}

impl Hash for BenchKind {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl fmt::Debug for BenchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BenchKind({})", self.name())
    }
}

impl fmt::Display for BenchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for BenchKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// A family's record type as an [`Arch`] holds it: any comparable, printable, thread-safe
/// value (the blanket implementation covers every such type).
pub trait ArchRecord: Any + fmt::Debug + Send + Sync {
    /// The record as [`Any`], for [`Arch::get`].
    fn as_any(&self) -> &dyn Any;

    /// True when `other` is a record of the same type and equal to this one.
    fn same_as(&self, other: &dyn ArchRecord) -> bool;
}

impl<T: Any + fmt::Debug + PartialEq + Send + Sync> ArchRecord for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same_as(&self, other: &dyn ArchRecord) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// One architecture's description, in its family's own record type (a FlexiBERT
/// [`flexibert::Record`], a GPT-2 [`gpt2::Record`], ...). Cloning shares the record.
#[derive(Clone)]
pub struct Arch(Arc<dyn ArchRecord>);

impl Arch {
    /// Wraps a family's record.
    pub fn new<T: ArchRecord>(record: T) -> Self {
        Arch(Arc::new(record))
    }

    /// The record, when it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The record as a `T`, or an error naming the type expected and the record found (a
    /// family reads its own records with it).
    pub fn of<T: Any>(&self) -> Result<&T> {
        self.get().with_context(|| {
            format!(
                "expected a {} record, found {:?}",
                std::any::type_name::<T>(),
                self
            )
        })
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_as(other.0.as_ref())
    }
}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One benchmark architecture with its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Stable key of the architecture (the record id for FlexiBERT, the file stem for GPT-2).
    pub key: String,
    /// Ground truth oriented so that higher is better (GLUE as is, GPT-2 `-valid_ppl`); NaN
    /// when the source gives none (a bench file whose records have no `truth`).
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
    /// How messages name the file or folder it was read from.
    pub source: PathBuf,
    /// The data source it was read from, where companion files such as the FlexiBERT
    /// reference proxy table are looked up.
    pub data: Option<DataSource>,
    /// Architectures in benchmark order.
    pub entries: Vec<Entry>,
    /// What the ground truth is, in words (e.g. "GLUE average, higher is better").
    pub truth_name: &'static str,
    /// The source's own ground-truth column and the sign that orients it, as
    /// [`BenchKind::raw_truth`] (a bench file: `("truth", ±1)` after its `higher_is_better`).
    pub raw_truth: (&'static str, f64),
}

impl Benchmark {
    /// Loads the benchmark of `kind` from `data` (the embedded copy or a data folder).
    pub fn load(kind: BenchKind, data: &DataSource) -> Result<Self> {
        (kind.format().load)(data)
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

    /// True when every architecture has a ground truth. Only a bench file can lack it; then
    /// proxies can be computed but not correlated, and a search has nothing to fit.
    pub fn has_truth(&self) -> bool {
        self.entries.iter().all(|e| !e.truth.is_nan())
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

/// A problem with one field of a record: where (a path such as
/// `encoder_layers[1].num_feed_forward`) and what was wrong or expected. The per-family
/// checks return it so that each loader can add its own location (file, record or line, and
/// the path of the enclosing object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field inside the object that was checked (`.` for the object itself).
    pub field: String,
    /// What was wrong, and what was expected.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A deserialisation error, located at the path where it happened, with serde's Rust
    /// type names (`usize`, `f64`) said in words and long quoted values clipped
    /// ([`crate::report::clip_to`]).
    pub fn from_serde<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> Self {
        let mut message = e.inner().to_string().replace('\n', " ");
        for (rust, words) in [
            ("expected usize", "expected a non-negative integer"),
            ("expected u64", "expected a non-negative integer"),
            ("expected f64", "expected a number"),
        ] {
            message = message.replace(rust, words);
        }
        // A value quoted by serde (a whole string, say) is clipped, not echoed whole.
        let clip = |t: &str| crate::report::clip_to(t, crate::report::MESSAGE_CHARS).into_owned();
        FieldError {
            field: clip(&e.path().to_string()),
            message: clip(&message),
        }
    }

    /// The same problem seen from the object holding this one under `prefix`.
    pub fn within(self, prefix: &str) -> Self {
        let field = if self.field == "." {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.field)
        };
        FieldError { field, ..self }
    }
}

/// Describes a JSON value for messages: short scalars as written, containers by kind.
fn describe(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
        Value::String(s) if s.chars().count() > 40 => "a long string".to_string(),
        other => other.to_string(),
    }
}

/// A selection of architectures by position, parsed from `--archs`.
///
/// Accepted forms: `all`, `A..B` (half-open), `A..=B`, `N` (one), and comma-separated lists
/// of these (`0..10,42`). An architecture may be selected only once: a repeat would count it
/// twice in every correlation.
pub fn parse_selection(text: &str, n: usize) -> Result<Vec<usize>> {
    let text = text.trim();
    if text.is_empty() || text == "all" {
        return Ok((0..n).collect());
    }
    let mut out = Vec::new();
    let mut first_part: Vec<Option<&str>> = vec![None; n];
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
        for (i, by) in first_part.iter_mut().enumerate().take(hi).skip(lo) {
            if let Some(earlier) = by {
                bail!(
                    "`{text}`: architecture {i} is selected twice (by `{earlier}` and by \
                     `{part}`); each architecture may be selected once"
                );
            }
            *by = Some(part);
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
    Ok(crate::rng::Rng::derive(seed, &[10]).sample_indices(n, count))
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
        let e = parse_selection("0..4,3,3", 5).unwrap_err().to_string();
        assert!(e.contains("architecture 3 is selected twice"), "{e}");
        let e = parse_selection("0..3,2..5", 5).unwrap_err().to_string();
        assert!(e.contains("architecture 2") && e.contains("`2..5`"), "{e}");
    }
}
