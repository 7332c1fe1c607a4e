//! Checkpoints: the complete state of a search as one JSON file, so a run can be resumed and
//! end exactly where an uninterrupted run with the same seed ends.
//!
//! The file holds the options, the settings that produced the fitness inputs (for a benchmark
//! search: the probe settings, see [`crate::models::Family::settings`]) and the fitness
//! ground truth (to refuse resuming on other inputs), the iteration reached, the RNG state, the
//! population with its fitness, the hall of fame, the set of canonical keys already seen (the
//! `duplicate` rule depends on it), the counters and the curve so far. The sub-expression memo
//! is not saved: it is a cache, results never depend on it (a resumed run starts with a cold
//! memo and recomputes what it needs).
//!
//! A checkpoint is not trusted blindly. It carries a checksum of its content (64-bit FNV-1a
//! over the compact JSON form of everything else), so an edited or damaged file is refused,
//! and [`load`] checks that the state is one a search can reach: the iteration within the
//! run's iterations and equal to the curve's length, every fitness finite and within [−1, 1],
//! a full population of genomes of the run's shape whose texts and keys are those of their
//! genomes, and a hall of fame of the run's capacity, sorted and with distinct, correct keys.
//!
//! Floating-point numbers that results depend on (fitness values, the curve, the ground truth)
//! are written as decimal strings in Rust's shortest round-trip form and read back with Rust's
//! correctly rounded parser, so they come back bit for bit (JSON numbers parsed by `serde_json`
//! without its `float_roundtrip` feature may differ in the last bit). Files are written with
//! [`write_atomic`], so a crash never leaves a half-written checkpoint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::genome::Genome;
use super::hall_of_fame::{HallEntry, HallOfFame};
use super::options::{SearchOptions, RESULT_NEUTRAL_OPTIONS};
use super::{Counters, CurvePoint, Member, SearchState};
use crate::proxy::canonical;
use crate::proxy::expr::Expr;
use crate::proxy::ops::UnaryOp;
use crate::proxy::parse::parse;
use crate::report::{clip, fnv1a64, write_atomic};
use crate::rng::Rng;

/// File name of the checkpoint inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Identifies the file format.
const FORMAT: &str = "lpzero-search-checkpoint";

/// Format version, bumped on incompatible changes (2: fitness-input settings and checksum).
const VERSION: u32 = 2;

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
    #[serde(default)]
    ranking: u64,
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
    options: Value,
    inputs: Value,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

/// Key of the checksum in the file.
const CHECKSUM_KEY: &str = "checksum";

/// The checksum of a checkpoint's JSON value without its checksum key: FNV-1a over the compact
/// text (maps have sorted keys, so the text depends on the content only).
fn checksum_of(value: &Value) -> String {
    format!("fnv1a64:{:016x}", fnv1a64(value.to_string().as_bytes()))
}

/// A loaded checkpoint: the options, input settings and ground truth it was written with, and
/// the state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The options of the run that wrote it (as JSON, compared with the resuming run's).
    pub options: Value,
    /// The settings that produced its fitness inputs (`null` when the writer gave none).
    pub inputs: Value,
    /// The fitness ground truth of that run.
    pub truth: Vec<f64>,
    /// The search state at the end of iteration `state.iteration`.
    pub state: SearchState,
}

/// `value` as JSON after a text round trip (so it compares equal with a loaded one).
fn round_trip(value: &impl Serialize) -> Result<Value> {
    let text = serde_json::to_string(value)?;
    Ok(serde_json::from_str(&text)?)
}

/// Writes the checkpoint of `state` to `path` (atomically, with its checksum). `inputs`
/// describes how the fitness inputs were made (see the module docs; `null` when unknown).
pub fn save(
    path: &Path,
    options: &SearchOptions,
    inputs: &Value,
    truth: &[f64],
    state: &SearchState,
) -> Result<()> {
    let mut file = File {
        format: FORMAT.to_string(),
        version: VERSION,
        options: round_trip(options)?,
        inputs: round_trip(inputs)?,
        truth: truth.iter().map(|&t| Exact(t)).collect(),
        iteration: state.iteration,
        rng: state.rng.clone(),
        population: state
            .population
            .iter()
            .map(|m| FileMember {
                genome: m.genome.clone(),
                expr: m.expr.to_string(),
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
                expr: e.expr.to_string(),
                key: e.key.clone(),
                fitness: Exact(e.fitness),
                iteration: e.iteration,
                ranking: e.ranking,
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
        checksum: None,
    };
    // The checksum covers the value as a reader will parse it back from the text.
    let unsigned: Value = serde_json::from_str(&serde_json::to_string_pretty(&file)?)?;
    file.checksum = Some(checksum_of(&unsigned));
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

/// Reads a checkpoint (a file, or a run folder holding `checkpoint.json`), verifies its
/// checksum and checks that its state is consistent (see the module docs). Errors name the
/// file and what is wrong.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let path = resolve(path);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    let mut value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid checkpoint", path.display()))?;
    let header = (
        value.get("format").and_then(Value::as_str).unwrap_or(""),
        value.get("version").and_then(Value::as_u64).unwrap_or(0),
    );
    if header != (FORMAT, u64::from(VERSION)) {
        bail!(
            "{}: unsupported checkpoint (format `{}` version {}; this lpzero reads `{FORMAT}` \
             version {VERSION}, which records the probe settings and a checksum)",
            path.display(),
            clip(header.0),
            header.1
        );
    }
    let stored = value
        .as_object_mut()
        .and_then(|o| o.remove(CHECKSUM_KEY))
        .ok_or_else(|| anyhow!("{}: the checkpoint has no checksum", path.display()))?;
    let computed = checksum_of(&value);
    if stored.as_str() != Some(computed.as_str()) {
        bail!(
            "{}: the checksum does not match the content (stored {}, computed {computed}): the \
             file was edited or damaged; resume from an intact checkpoint or start a new run",
            path.display(),
            clip(&stored.to_string())
        );
    }
    let file: File = serde_json::from_value(value)
        .with_context(|| format!("{}: not a valid checkpoint", path.display()))?;
    from_file(file)
        .and_then(|c| c.check_consistent().map(|()| c))
        .map_err(|e| anyhow!("{}: inconsistent checkpoint: {e}", path.display()))
}

/// The checkpoint a parsed file holds (the hall of fame checked, the rest not yet).
fn from_file(file: File) -> Result<Checkpoint, String> {
    let entries = file
        .hall_of_fame
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let expr = check_expr(&format!("hall-of-fame entry {}", i + 1), &e.expr, &e.key)?;
            Ok(HallEntry {
                negated: matches!(&expr, Expr::Unary(UnaryOp::Neg, _)),
                expr,
                key: e.key,
                fitness: e.fitness.0,
                iteration: e.iteration,
                ranking: e.ranking,
                restart: 0,
            })
        })
        .collect::<Result<_, String>>()?;
    let population = file
        .population
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let expr = check_expr(&format!("population member {}", i + 1), &m.expr, &m.key)?;
            Ok(Member {
                // Reported negated exactly when it is not the genome's own expression (the
                // consistency check then requires it to be `neg` of it).
                negated: expr != m.genome.to_expr(),
                genome: m.genome,
                expr,
                key: m.key,
                fitness: m.fitness.0,
                born: m.born,
            })
        })
        .collect::<Result<_, String>>()?;
    let state = SearchState {
        iteration: file.iteration,
        rng: file.rng,
        population,
        hall_of_fame: HallOfFame::from_saved(file.hall_of_fame_capacity, entries)?,
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
        inputs: file.inputs,
        truth: file.truth.into_iter().map(|t| t.0).collect(),
        state,
    })
}

/// Fails unless `f` is a finite fitness (a Spearman ρ or |ρ|, so within [−1, 1]).
fn check_fitness(what: &str, f: f64) -> Result<(), String> {
    if f.is_finite() && (-1.0..=1.0).contains(&f) {
        Ok(())
    } else {
        Err(format!(
            "{what} has fitness {f}, expected a finite number within [-1, 1]"
        ))
    }
}

/// Parses a saved expression text and checks that `key` is its canonical key.
fn check_expr(what: &str, text: &str, key: &str) -> Result<Expr, String> {
    let e = parse(text).map_err(|e| format!("{what}: `{}`: {e}", clip(text)))?;
    let canon = canonical::key(&e);
    if canon != key {
        return Err(format!(
            "{what}: key `{}` is not the canonical key `{}` of its expression",
            clip(key),
            clip(&canon)
        ));
    }
    Ok(e)
}

impl Checkpoint {
    /// Checks that the state is one the search with the checkpoint's own options can reach
    /// (the list is in the module docs); the error says what is wrong.
    fn check_consistent(&self) -> Result<(), String> {
        let opts: SearchOptions =
            serde_json::from_value(self.options.clone()).map_err(|e| format!("options: {e}"))?;
        opts.validate().map_err(|e| format!("options: {e}"))?;
        let st = &self.state;
        if let Some(t) = self.truth.iter().find(|t| !t.is_finite()) {
            return Err(format!("a fitness ground truth of {t}"));
        }
        if st.iteration > opts.iterations {
            return Err(format!(
                "iteration {} is past the run's {} iterations",
                st.iteration, opts.iterations
            ));
        }
        if st.curve.len() != st.iteration + 1
            || st.curve.iter().enumerate().any(|(i, c)| c.iteration != i)
        {
            return Err(format!(
                "the curve holds {} points, expected iterations 0..={} in order",
                st.curve.len(),
                st.iteration
            ));
        }
        for c in &st.curve {
            check_fitness(&format!("the curve at iteration {}", c.iteration), c.best)?;
            check_fitness(
                &format!("the curve median at iteration {}", c.iteration),
                c.median,
            )?;
        }
        if st.rng.is_stuck() {
            return Err("the random generator's state is all zero".into());
        }
        let c = &st.counters;
        if !(c.valid <= c.evaluated
            && c.fully_evaluated <= c.evaluated
            && c.evaluated <= c.candidates)
        {
            return Err(format!(
                "counters out of order: {} candidates, {} evaluated, {} fully evaluated, {} valid",
                c.candidates, c.evaluated, c.fully_evaluated, c.valid
            ));
        }
        if st.population.len() != opts.population {
            return Err(format!(
                "a population of {} members, the run's population is {}",
                st.population.len(),
                opts.population
            ));
        }
        let spec = opts.genome_spec();
        for (i, m) in st.population.iter().enumerate() {
            let what = format!("population member {}", i + 1);
            check_fitness(&what, m.fitness)?;
            if m.born > st.iteration {
                return Err(format!(
                    "{what} was born at iteration {}, after the checkpoint",
                    m.born
                ));
            }
            m.genome.check(&spec).map_err(|e| format!("{what}: {e}"))?;
            let plain = m.genome.to_expr();
            let negated = Expr::unary(UnaryOp::Neg, plain.clone());
            if m.expr != plain && !(opts.either_sign && m.expr == negated) {
                return Err(format!(
                    "{what}: the expression `{}` is not its genome's `{}`",
                    clip(&m.expr.to_string()),
                    clip(&plain.to_string())
                ));
            }
            if !st.seen.contains(&canonical::key(&plain)) {
                return Err(format!("{what} is missing from the keys already seen"));
            }
        }
        let fitness: Vec<f64> = st.population.iter().map(|m| m.fitness).collect();
        let last = st.curve[st.iteration];
        let best = fitness.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if last.best != best || last.median != crate::stats::median(&fitness) {
            return Err(format!(
                "the curve's last point (best {}, median {}) is not the population's",
                last.best, last.median
            ));
        }
        let hall = &st.hall_of_fame;
        if hall.capacity() != opts.hall_of_fame {
            return Err(format!(
                "a hall of fame of capacity {}, the run's is {}",
                hall.capacity(),
                opts.hall_of_fame
            ));
        }
        for (i, e) in hall.entries().iter().enumerate() {
            let what = format!("hall-of-fame entry {}", i + 1);
            check_fitness(&what, e.fitness)?;
            if e.iteration > st.iteration {
                return Err(format!(
                    "{what} was found at iteration {}, after the checkpoint",
                    e.iteration
                ));
            }
        }
        Ok(())
    }

    /// Fails unless a run with `options`, fitness inputs made with `inputs` and ground truth
    /// `truth` can continue this checkpoint: the same ground truth (bit for bit), the same input
    /// settings, the same options except those that do not change results (`iterations`,
    /// `checkpoint_every`, `init_attempts_per_member`, `memo_budget_bytes`, `threads`), and no
    /// more iterations done than `options.iterations`. The error names every differing setting
    /// with its value in the checkpoint and now.
    pub fn check_compatible(
        &self,
        options: &SearchOptions,
        inputs: &Value,
        truth: &[f64],
    ) -> Result<()> {
        let now = round_trip(inputs)?;
        let differ = differences(&self.inputs, &now, &[]);
        if !differ.is_empty() {
            bail!(
                "cannot resume: the fitness inputs were made with other settings: {}",
                differ.join("; ")
            );
        }
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
        let differ = differences(
            &self.options,
            &round_trip(options)?,
            &RESULT_NEUTRAL_OPTIONS,
        );
        if !differ.is_empty() {
            bail!(
                "cannot resume: options differ from the checkpoint's: {}",
                differ.join("; ")
            );
        }
        if self.state.iteration > options.iterations {
            bail!(
                "cannot resume: the checkpoint is at iteration {}, past the {} iterations asked \
                 for",
                self.state.iteration,
                options.iterations
            );
        }
        Ok(())
    }
}

/// The settings on which two JSON objects (or values) differ, each as
/// `name: <old> in the checkpoint, <new> now`, sorted by name; keys in `ignore` are skipped.
fn differences(old: &Value, new: &Value, ignore: &[&str]) -> Vec<String> {
    let shown = |v: Option<&Value>| match v {
        None => "absent".to_string(),
        Some(v) => clip(&v.to_string()).into_owned(),
    };
    match (old.as_object(), new.as_object()) {
        (Some(a), Some(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .filter(|k| !ignore.contains(&k.as_str()) && a.get(*k) != b.get(*k))
                .map(|k| {
                    format!(
                        "{k}: {} in the checkpoint, {} now",
                        shown(a.get(k)),
                        shown(b.get(k))
                    )
                })
                .collect()
        }
        _ if old == new => Vec::new(),
        _ => vec![format!(
            "{} in the checkpoint, {} now",
            shown(Some(old)),
            shown(Some(new))
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::Synthetic;
    use super::*;
    use serde_json::json;

    /// A run folder with a checkpoint at iteration 12 of a small tree search.
    fn written(name: &str, opts: &SearchOptions) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lpzero-ckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Synthetic::new(12, 4);
        super::super::run(opts, &s.sources(), &s.truth, Some(&dir), None, &|_| {}).unwrap();
        dir
    }

    fn options() -> SearchOptions {
        SearchOptions {
            population: 8,
            iterations: 12,
            hall_of_fame: 4,
            checkpoint_every: 6,
            ..SearchOptions::reference()
        }
    }

    /// Rewrites the checkpoint of `dir` after `edit`, with a correct checksum, and loads it.
    fn edited(dir: &Path, edit: impl Fn(&mut Value)) -> Result<Checkpoint> {
        let path = dir.join(CHECKPOINT_FILE);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove(CHECKSUM_KEY);
        edit(&mut v);
        v[CHECKSUM_KEY] = json!(checksum_of(&v));
        let copy = dir.join("edited.json");
        std::fs::write(&copy, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        load(&copy)
    }

    fn refused(dir: &Path, edit: impl Fn(&mut Value), expected: &str) {
        let err = format!("{:#}", edited(dir, edit).unwrap_err());
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }

    #[test]
    fn edited_or_impossible_checkpoints_are_refused() {
        let dir = written("edits", &options());
        let ck = load(&dir).unwrap();
        assert_eq!(ck.state.iteration, 12);
        edited(&dir, |_| {}).unwrap();

        // Any change without a new checksum.
        let path = dir.join(CHECKPOINT_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let tampered = dir.join("tampered.json");
        std::fs::write(
            &tampered,
            text.replace("\"iteration\": 12", "\"iteration\": 9999"),
        )
        .unwrap();
        let err = format!("{:#}", load(&tampered).unwrap_err());
        assert!(err.contains("checksum does not match"), "{err}");
        std::fs::write(&tampered, text.replace("\"checksum\"", "\"sum\"")).unwrap();
        assert!(format!("{:#}", load(&tampered).unwrap_err()).contains("no checksum"));

        // Edits that keep the checksum right but describe an impossible state.
        refused(
            &dir,
            |v| v["iteration"] = json!(9999),
            "past the run's 12 iterations",
        );
        refused(
            &dir,
            |v| v["iteration"] = json!(5),
            "the curve holds 13 points",
        );
        refused(
            &dir,
            |v| v["population"][0]["fitness"] = json!("NaN"),
            "fitness NaN",
        );
        refused(
            &dir,
            |v| v["population"][1]["fitness"] = json!("1.5"),
            "fitness 1.5",
        );
        refused(
            &dir,
            |v| v["population"] = json!([]),
            "a population of 0 members",
        );
        refused(
            &dir,
            |v| v["hall_of_fame_capacity"] = json!(0),
            "capacity 0",
        );
        refused(
            &dir,
            |v| v["hall_of_fame_capacity"] = json!(9),
            "capacity 9, the run's is 4",
        );
        refused(
            &dir,
            |v| {
                let hall = v["hall_of_fame"].as_array_mut().unwrap();
                hall.swap(0, 1);
            },
            "not sorted",
        );
        let other = "add(mean(head), mean(act))";
        let other_key = canonical::key(&parse(other).unwrap());
        refused(
            &dir,
            |v| {
                v["population"][0]["expr"] = json!(other);
                v["population"][0]["key"] = json!(other_key);
            },
            "is not its genome's",
        );
        refused(
            &dir,
            |v| v["population"][0]["key"] = json!("act"),
            "not the canonical key",
        );
        refused(
            &dir,
            |v| v["hall_of_fame"][0]["expr"] = json!("add(("),
            "hall-of-fame entry 1",
        );
        refused(&dir, |v| v["rng"]["s"] = json!([0, 0, 0, 0]), "all zero");
        refused(
            &dir,
            |v| v["seen"] = json!([]),
            "missing from the keys already seen",
        );
        refused(&dir, |v| v["version"] = json!(1), "unsupported checkpoint");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn either_sign_checkpoints_with_negated_members_load() {
        let opts = SearchOptions {
            either_sign: true,
            iterations: 30,
            ..options()
        };
        let dir = written("either", &opts);
        let ck = load(&dir).unwrap();
        let negated = ck
            .state
            .population
            .iter()
            .filter(|m| m.negated && m.expr.to_string().starts_with("neg("));
        assert!(negated.count() > 0, "no backward proxy in this run");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn resuming_names_every_differing_setting() {
        let dir = written("settings", &options());
        let ck = load(&dir).unwrap();
        let truth = ck.truth.clone();
        let longer = SearchOptions {
            iterations: 20,
            ..options()
        };
        ck.check_compatible(&longer, &Value::Null, &truth).unwrap();
        let probe = json!({"batch": 2, "seq_len": 16});
        let err = ck
            .check_compatible(&longer, &probe, &truth)
            .unwrap_err()
            .to_string();
        assert!(err.contains("null in the checkpoint"), "{err}");
        let other = SearchOptions {
            p_mutation: 0.9,
            ..longer.clone()
        };
        let err = ck
            .check_compatible(&other, &Value::Null, &truth)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p_mutation: 0.5 in the checkpoint, 0.9 now"),
            "{err}"
        );
        let shorter = SearchOptions {
            iterations: 6,
            ..options()
        };
        let err = ck
            .check_compatible(&shorter, &Value::Null, &truth)
            .unwrap_err()
            .to_string();
        assert!(err.contains("past the 6 iterations"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
