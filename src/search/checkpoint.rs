//! Checkpoints: the complete state of a search as one JSON file, so a run can be resumed and
//! end exactly where an uninterrupted run with the same seed ends.
//!
//! The file holds the options, the fitness ground truth (to refuse resuming on another set), the
//! iteration reached, the RNG state, the population with its fitness, the hall of fame, the set
//! of canonical keys already seen (the `duplicate` rule depends on it), the counters and the
//! curve so far. The sub-expression memo is not saved: it is a cache, results never depend on
//! it (a resumed run starts with a cold memo and recomputes what it needs).
//!
//! Floating-point numbers that results depend on (fitness values, the curve, the ground truth)
//! are written as decimal strings in Rust's shortest round-trip form and read back with Rust's
//! correctly rounded parser, so they come back bit for bit (JSON numbers parsed by `serde_json`
//! without its `float_roundtrip` feature may differ in the last bit). Files are written with
//! [`write_atomic`], so a crash never leaves a half-written checkpoint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::genome::Genome;
use super::hall_of_fame::{HallEntry, HallOfFame};
use super::options::{SearchOptions, RESULT_NEUTRAL_OPTIONS};
use super::{Counters, CurvePoint, Member, SearchState};
use crate::report::write_atomic;
use crate::rng::Rng;

/// File name of the checkpoint inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Identifies the file format.
const FORMAT: &str = "lpzero-search-checkpoint";

/// Format version, bumped on incompatible changes.
const VERSION: u32 = 1;

/// An `f64` written as an exact decimal string (see the module docs); reads numbers too.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Exact(f64);

impl Serialize for Exact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => s
                .parse::<f64>()
                .map(Exact)
                .map_err(|e| serde::de::Error::custom(format!("bad number `{s}`: {e}"))),
            serde_json::Value::Number(n) => n
                .as_f64()
                .map(Exact)
                .ok_or_else(|| serde::de::Error::custom("bad number")),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, found {other}"
            ))),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct FileMember {
    genome: Genome,
    expr: String,
    key: String,
    fitness: Exact,
    born: usize,
}

#[derive(Serialize, Deserialize)]
struct FileHallEntry {
    expr: String,
    key: String,
    fitness: Exact,
    iteration: usize,
}

#[derive(Serialize, Deserialize)]
struct FileCurvePoint {
    iteration: usize,
    best: Exact,
    median: Exact,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    options: serde_json::Value,
    truth: Vec<Exact>,
    iteration: usize,
    rng: Rng,
    population: Vec<FileMember>,
    hall_of_fame_capacity: usize,
    hall_of_fame: Vec<FileHallEntry>,
    seen: Vec<String>,
    counters: Counters,
    curve: Vec<FileCurvePoint>,
    elapsed_seconds: f64,
}

/// A loaded checkpoint: the options and ground truth it was written with, and the state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The options of the run that wrote it (as JSON, compared with the resuming run's).
    pub options: serde_json::Value,
    /// The fitness ground truth of that run.
    pub truth: Vec<f64>,
    /// The search state at the end of iteration `state.iteration`.
    pub state: SearchState,
}

/// `options` as JSON after a text round trip (so it compares equal with a loaded one).
fn options_json(options: &SearchOptions) -> Result<serde_json::Value> {
    let text = serde_json::to_string(options)?;
    Ok(serde_json::from_str(&text)?)
}

/// Writes the checkpoint of `state` to `path` (atomically).
pub fn save(
    path: &Path,
    options: &SearchOptions,
    truth: &[f64],
    state: &SearchState,
) -> Result<()> {
    let file = File {
        format: FORMAT.to_string(),
        version: VERSION,
        options: options_json(options)?,
        truth: truth.iter().map(|&t| Exact(t)).collect(),
        iteration: state.iteration,
        rng: state.rng.clone(),
        population: state
            .population
            .iter()
            .map(|m| FileMember {
                genome: m.genome.clone(),
                expr: m.expr.clone(),
                key: m.key.clone(),
                fitness: Exact(m.fitness),
                born: m.born,
            })
            .collect(),
        hall_of_fame_capacity: state.hall_of_fame.capacity(),
        hall_of_fame: state
            .hall_of_fame
            .entries()
            .iter()
            .map(|e| FileHallEntry {
                expr: e.expr.clone(),
                key: e.key.clone(),
                fitness: Exact(e.fitness),
                iteration: e.iteration,
            })
            .collect(),
        seen: state.seen.iter().cloned().collect(),
        counters: state.counters.clone(),
        curve: state
            .curve
            .iter()
            .map(|c| FileCurvePoint {
                iteration: c.iteration,
                best: Exact(c.best),
                median: Exact(c.median),
            })
            .collect(),
        elapsed_seconds: state.elapsed_seconds,
    };
    write_atomic(path, serde_json::to_string_pretty(&file)?)
}

/// The checkpoint file for `path`: `path/checkpoint.json` when `path` is a folder, else `path`.
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CHECKPOINT_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Reads a checkpoint (a file, or a run folder holding `checkpoint.json`).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let path = resolve(path);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid checkpoint", path.display()))?;
    if file.format != FORMAT || file.version != VERSION {
        bail!(
            "{}: unsupported checkpoint format {} version {}",
            path.display(),
            file.format,
            file.version
        );
    }
    let entries = file
        .hall_of_fame
        .into_iter()
        .map(|e| HallEntry {
            expr: e.expr,
            key: e.key,
            fitness: e.fitness.0,
            iteration: e.iteration,
        })
        .collect();
    let state = SearchState {
        iteration: file.iteration,
        rng: file.rng,
        population: file
            .population
            .into_iter()
            .map(|m| Member {
                genome: m.genome,
                expr: m.expr,
                key: m.key,
                fitness: m.fitness.0,
                born: m.born,
            })
            .collect(),
        hall_of_fame: HallOfFame::from_entries(file.hall_of_fame_capacity, entries),
        seen: file.seen.into_iter().collect::<BTreeSet<_>>(),
        counters: file.counters,
        curve: file
            .curve
            .into_iter()
            .map(|c| CurvePoint {
                iteration: c.iteration,
                best: c.best.0,
                median: c.median.0,
            })
            .collect(),
        elapsed_seconds: file.elapsed_seconds,
    };
    Ok(Checkpoint {
        options: file.options,
        truth: file.truth.into_iter().map(|t| t.0).collect(),
        state,
    })
}

impl Checkpoint {
    /// Fails unless `options` and `truth` can continue this checkpoint: the same ground truth
    /// (bit for bit) and the same options except those that do not change results
    /// (`iterations`, `checkpoint_every`, `init_attempts_per_member`, `memo_budget_bytes`).
    pub fn check_compatible(&self, options: &SearchOptions, truth: &[f64]) -> Result<()> {
        let same_truth = self.truth.len() == truth.len()
            && self
                .truth
                .iter()
                .zip(truth)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same_truth {
            bail!(
                "cannot resume: the checkpoint was written for another fitness set ({} architectures, now {})",
                self.truth.len(),
                truth.len()
            );
        }
        let now = options_json(options)?;
        let (Some(old), Some(new)) = (self.options.as_object(), now.as_object()) else {
            bail!("cannot resume: the checkpoint's options are not an object");
        };
        let mut differ: Vec<&str> = new
            .iter()
            .filter(|(k, v)| {
                !RESULT_NEUTRAL_OPTIONS.contains(&k.as_str()) && old.get(k.as_str()) != Some(*v)
            })
            .map(|(k, _)| k.as_str())
            .collect();
        differ.sort_unstable();
        if !differ.is_empty() {
            bail!(
                "cannot resume: options differ from the checkpoint's in {}",
                differ.join(", ")
            );
        }
        Ok(())
    }
}
