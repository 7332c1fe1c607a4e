//! A whole search on a benchmark: probe the fitness set, run the GP loop, then score the hall
//! of fame on the held-out architectures and write the summary.
//!
//! This is what `lpzero search` runs; it glues probing (`probe`), the loop (`search::run`) and
//! the statistics (`stats`) together and owns `summary.json` and `scatter.svg`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::{checkpoint, run_with_inputs, rundir, FitnessData, SearchOptions};
use crate::bench::Benchmark;
use crate::probe::memory::{LimitSource, MemoryLimit};
use crate::probe::{probe_map, Probe, ProbeOptions};
use crate::proxy::eval::list_bytes;
use crate::proxy::expr::{self, Expr, InputSource};
use crate::report::json_number;
use crate::stats;

/// What a search on a benchmark needs besides the GP options.
pub struct SearchJob<'a> {
    /// The benchmark.
    pub bench: &'a Benchmark,
    /// Architectures whose Spearman is the fitness.
    pub fitness: Vec<usize>,
    /// Architectures held out for the final evaluation (empty: skip it).
    pub heldout: Vec<usize>,
    /// How each architecture is probed.
    pub probe: ProbeOptions,
    /// Worker threads for probing.
    pub threads: usize,
    /// Run directory (written when given).
    pub out: Option<PathBuf>,
    /// Run directory or checkpoint to resume from.
    pub resume: Option<PathBuf>,
}

/// Progress callbacks: `(phase, done, total)` with phases `probe`, `search`, `heldout`.
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// Keeps only what expressions read, so a fitness set of many architectures fits in memory.
fn slim(mut p: Probe) -> Probe {
    p.linears = Default::default();
    p.mixer_outputs = Default::default();
    p
}

/// Bytes of the expression inputs a slimmed probe holds (`head` once when it is `act`'s list).
fn input_bytes(p: &Probe) -> u64 {
    let head = if std::sync::Arc::ptr_eq(&p.head, &p.act) {
        0
    } else {
        list_bytes(&p.head)
    };
    list_bytes(&p.act)
        + head
        + list_bytes(&p.softmax)
        + list_bytes(&p.grad)
        + list_bytes(&p.weight)
        + list_bytes(std::slice::from_ref(&p.position_grad))
}

/// Room left for the fitness probes besides the memo and the GP loop.
const PROBE_SLACK_BYTES: u64 = 2 << 30;

/// Keeps a running total of the fitness probes' inputs and stops the search before the
/// system runs out of memory (which would kill it without a word).
struct MemoryGuard {
    /// Bytes the probes may hold: `$LPZERO_PROBE_MEMORY_GB`, else the memory available at the
    /// start less the memo budget and [`PROBE_SLACK_BYTES`] (`None`: unknown, no check).
    limit: Option<MemoryLimit>,
    held: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicUsize,
    warned: std::sync::atomic::AtomicBool,
    total: usize,
}

impl MemoryGuard {
    /// The guard for `total` probes: the limit is `$LPZERO_PROBE_MEMORY_GB` when set (for
    /// containers, whose `MemAvailable` is the host's), else derived from the free memory.
    fn new(memo_budget: u64, total: usize) -> Result<Self> {
        let limit = MemoryLimit::current()?.map(|l| match l.source {
            LimitSource::Environment => l,
            LimitSource::Available => l.less((memo_budget + PROBE_SLACK_BYTES) as f64),
        });
        Ok(Self {
            limit,
            held: 0.into(),
            done: 0.into(),
            warned: false.into(),
            total,
        })
    }

    /// Counts one more probe; an error once the probes hold more than the limit, a warning
    /// on stderr (once) when the average so far projects past it.
    fn add(&self, p: &Probe) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes = input_bytes(p);
        let held = self.held.fetch_add(bytes, Relaxed) + bytes;
        let done = self.done.fetch_add(1, Relaxed) + 1;
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let gb = |b: u64| crate::report::format_bytes(b as f64);
        let reserved = match limit.source {
            LimitSource::Environment => "",
            LimitSource::Available => ", less the memo budget and 2 GiB",
        };
        if held as f64 > limit.bytes {
            anyhow::bail!(
                "the fitness probes need more memory than probing may use: they hold {} after \
                 {done} of {} architectures, and the limit is {}{reserved}. Lower the batch \
                 rows or seq_len, or use fewer fitness architectures",
                gb(held),
                self.total,
                limit.describe()
            );
        }
        let projected = held / done as u64 * self.total as u64;
        if done >= 5 && projected as f64 > limit.bytes && !self.warned.swap(true, Relaxed) {
            eprintln!(
                "warning: the fitness probes may need about {} ({} after {done} of {} \
                 architectures) and the limit is {}{reserved}; the search stops if they exceed \
                 it",
                gb(projected),
                gb(held),
                self.total,
                limit.describe()
            );
        }
        Ok(())
    }
}

/// Runs the job and returns the summary (also written to `summary.json` in the run folder).
pub fn search_benchmark(
    job: &SearchJob<'_>,
    opts: &SearchOptions,
    progress: Progress<'_>,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    let bench = job.bench;
    // Refuse an incompatible resume before any probing.
    let settings = job.probe.settings(bench.kind)?;
    if let Some(path) = &job.resume {
        let truth = bench.truths(&job.fitness);
        checkpoint::load(path)?.check_compatible(opts, &settings, &truth)?;
    }
    let total = job.fitness.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = |phase: &str, total: usize| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(phase, n, total);
    };
    let guard = MemoryGuard::new(opts.memo_budget_bytes, total)?;
    let probes = probe_map(
        bench,
        &job.fitness,
        &job.probe,
        job.threads,
        |_, p| {
            let p = slim(p);
            guard.add(&p)?;
            Ok(p)
        },
        || tick("probe", total),
    )?;
    let probe_bytes = guard.held.into_inner();
    let probe_seconds = start.elapsed().as_secs_f64();
    let sources: Vec<&dyn InputSource> = probes.iter().map(|p| p as &dyn InputSource).collect();
    let truth = bench.truths(&job.fitness);
    let iterations = opts.iterations;
    let fitness = FitnessData {
        probes: &sources,
        truth: &truth,
        settings: &settings,
    };
    let outcome = run_with_inputs(
        opts,
        &fitness,
        job.out.as_deref(),
        job.resume.as_deref(),
        &|i| progress("search", i, iterations),
    )?;
    drop(sources);
    drop(probes);
    let search_seconds = start.elapsed().as_secs_f64() - probe_seconds;

    // Held-out evaluation of every hall-of-fame proxy from one probe per architecture.
    let hall: Vec<Expr> = outcome
        .hall_of_fame
        .iter()
        .map(|h| expr::parse(&h.expr).with_context(|| format!("hall of fame entry `{}`", h.expr)))
        .collect::<Result<_>>()?;
    let heldout_start = Instant::now();
    done.store(0, std::sync::atomic::Ordering::Relaxed);
    let n_held = job.heldout.len();
    let rows: Vec<Vec<f64>> = if n_held == 0 {
        Vec::new()
    } else {
        probe_map(
            bench,
            &job.heldout,
            &job.probe,
            job.threads,
            |_, p| {
                Ok(hall
                    .iter()
                    .map(|e| expr::eval(e, &p).unwrap_or(f64::NAN))
                    .collect())
            },
            || tick("heldout", n_held),
        )?
    };
    let heldout_seconds = heldout_start.elapsed().as_secs_f64();
    let held_truth = bench.truths(&job.heldout);
    let column = |k: usize| -> Vec<f64> { rows.iter().map(|r| r[k]).collect() };
    let correlate = |values: &[f64]| {
        let (clean, bad) = stats::sanitize(values);
        (stats::correlate(&held_truth, &clean), bad)
    };
    let mut hall_json = Vec::new();
    for (k, h) in outcome.hall_of_fame.iter().enumerate() {
        let mut entry = json!({"expr": h.expr, "key": h.key, "fitness_spearman": json_number(h.fitness), "iteration": h.iteration});
        if n_held > 0 {
            let (c, bad) = correlate(&column(k));
            entry["heldout_spearman"] = json_number(c.spearman);
            entry["heldout_kendall"] = json_number(c.kendall);
            entry["heldout_non_finite"] = json!(bad);
        }
        hall_json.push(entry);
    }
    let best_text = outcome.best.to_string();
    let best_index = outcome
        .hall_of_fame
        .iter()
        .position(|h| h.key == outcome.best_key);
    let (held_rho, held_tau) = match (n_held, best_index) {
        (0, _) | (_, None) => (f64::NAN, f64::NAN),
        (_, Some(k)) => {
            let values = column(k);
            let (c, _) = correlate(&values);
            if let Some(dir) = &job.out {
                let title = format!(
                    "best proxy on {n_held} held-out {} architectures",
                    bench.kind
                );
                write(
                    &dir.join("scatter.svg"),
                    &rundir::scatter_svg(&held_truth, &values, &title),
                )?;
            }
            (c.spearman, c.kendall)
        }
    };
    let summary = json!({
        "bench": bench.kind.name(),
        "best": best_text,
        "fitness_spearman": json_number(outcome.fitness_spearman),
        "heldout_spearman": json_number(held_rho),
        "heldout_kendall": json_number(held_tau),
        "heldout_n": n_held,
        "fitness_n": job.fitness.len(),
        "fitness_archs": job.fitness.iter().map(|&i| bench.entries[i].key.clone()).collect::<Vec<_>>(),
        "seconds": start.elapsed().as_secs_f64(),
        "probe_seconds": probe_seconds,
        "fitness_probe_bytes": probe_bytes,
        "search_seconds": search_seconds,
        "heldout_seconds": heldout_seconds,
        "evaluated": outcome.evaluated,
        "candidates": outcome.candidates,
        "valid": outcome.valid,
        "rejected_by_rule": outcome.rejected_by_rule,
        "seconds_saved_by_rule": outcome.seconds_saved_by_rule,
        "hall_of_fame": hall_json,
        "seed": opts.seed,
        "structure": opts.structure.name(),
        "iterations": opts.iterations,
        "population": opts.population,
        "rps": opts.rps.enabled,
        "probe": job.probe,
        "peak_rss_mib": crate::report::peak_rss_mib(),
    });
    if let Some(dir) = &job.out {
        write(
            &dir.join("summary.json"),
            &serde_json::to_string_pretty(&summary)?,
        )?;
    }
    Ok(summary)
}

fn write(path: &Path, text: &str) -> Result<()> {
    crate::report::write_atomic(path, text)
}
