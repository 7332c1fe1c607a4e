//! A whole search on a benchmark: probe the fitness set, run the GP loop, then score the hall
//! of fame on the held-out architectures and write the summary.
//!
//! This is what `lpzero search` runs; it glues probing (`probe`), the loop (`search::run`) and
//! the statistics (`stats`) together and owns `summary.json`, `scatter.svg` and `heldout.svg`.
//! The held-out pass also scores every single-pass baseline from the same probes and compares
//! ([`crate::compare`]): the summary says whether the searched proxy won.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use super::budget::{MemoryBudget, PROBING_ROOM_BYTES};
use super::summary::{
    self, CombinedEnsemble, EnsembleResult, HallSummary, RestartSummary, SearchSummary,
};
use super::{checkpoint, restarts, FitnessData, SearchOptions, SearchOutcome};
use crate::bench::Benchmark;
use crate::compare::{self, BaselineColumns, Comparison, Corr};
use crate::models::{self, probe_map_within};
use crate::probe::memory::{LimitSource, MemoryLimit};
use crate::probe::spill::{SpillFile, Spilled};
use crate::probe::{Probe, ProbeOptions};
use crate::proxy::builtin::Orientation;
use crate::proxy::eval::InputSource;
use crate::proxy::expr::Expr;
use crate::proxy::set::{set_values, SetPlan};
use crate::scoring::Proxy;
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
    /// Keep the fitness probes' inputs in a spill file in this directory instead of memory
    /// ([`crate::probe::spill`]: the same values, read back per evaluation); `None`: memory,
    /// as far as `budget` allows.
    pub spill_dir: Option<PathBuf>,
    /// Memory the search aims to stay within ([`super::budget`]): fitness probes beyond its
    /// share go to a spill file in the system's temporary folder (when `spill_dir` is not
    /// given), and probes take turns within it; `None`: no budget (probes in memory up to
    /// what the system has available).
    pub budget: Option<MemoryBudget>,
}

/// The parts of a search a progress callback hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Probing the fitness architectures (`done` of `total` architectures).
    Probe,
    /// The GP loop (`done` of `total` iterations).
    Search,
    /// The held-out pass (`done` of `total` architectures).
    Heldout,
}

/// Progress callbacks: `(phase, done, total)`.
pub type Progress<'a> = &'a (dyn Fn(Phase, usize, usize) + Sync);

/// A fitness probe as the search keeps it: in memory, or in a spill file (`--spill-dir`).
enum Held {
    Memory(Probe),
    Disk(Spilled),
}

impl Held {
    /// What expressions read from it.
    fn source(&self) -> &dyn InputSource {
        match self {
            Held::Memory(p) => p,
            Held::Disk(s) => s,
        }
    }
}

/// Where the fitness probes go: with `--spill-dir`, all into a spill file there; under a
/// memory budget, into memory while those held fit in its share
/// ([`MemoryBudget::in_memory_share`]) and the rest into a spill file made in the system's
/// temporary folder when first needed; otherwise all into memory. Which probes land where
/// changes no value (a spilled probe reads back bit for bit).
struct Placement {
    /// The spill file, made at the start for `--spill-dir`, else when first needed.
    file: std::sync::OnceLock<std::sync::Arc<SpillFile>>,
    /// Where a spill file made when needed goes.
    dir: PathBuf,
    /// Bytes the probes may hold in memory (`None`: as much as the [`MemoryGuard`] allows).
    share: Option<f64>,
    /// Bytes placed in memory so far.
    placed: std::sync::Mutex<f64>,
    /// The limit probes take turns within ([`probe_map_within`]).
    turns: Option<MemoryLimit>,
}

impl Placement {
    fn new(job: &SearchJob<'_>, memo_budget: u64) -> Result<Self> {
        let file = std::sync::OnceLock::new();
        let (dir, share, turns) = match (&job.spill_dir, job.budget) {
            (Some(dir), budget) => {
                // Made now, so that a folder that cannot take it fails before any probing.
                let _ = file.set(SpillFile::create_in(dir)?);
                (dir.clone(), Some(0.0), budget.map(|b| b.limit()))
            }
            (None, Some(budget)) => (
                std::env::temp_dir(),
                Some(budget.in_memory_share(memo_budget)),
                Some(budget.probing_limit(memo_budget)),
            ),
            (None, None) => (std::env::temp_dir(), None, None),
        };
        Ok(Self {
            file,
            dir,
            share,
            placed: std::sync::Mutex::new(0.0),
            turns,
        })
    }

    /// Keeps `p` in memory (counted by `guard`) or in the spill file.
    fn place(&self, p: Probe, guard: &MemoryGuard) -> Result<Held> {
        let in_memory = match self.share {
            None => true,
            Some(share) => {
                let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
                let bytes = p.input_bytes() as f64;
                let fits = *placed + bytes <= share;
                if fits {
                    *placed += bytes;
                }
                fits
            }
        };
        if in_memory {
            guard.add(&p)?;
            return Ok(Held::Memory(p));
        }
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let made = SpillFile::create_in(&self.dir)?;
                if self.file.set(made).is_ok() {
                    eprintln!(
                        "note: the fitness probes need more memory than the budget leaves them \
                         ({}); the others go to a spill file in {} (the same values, read \
                         back as needed; --spill-dir chooses the folder, --memory-budget the \
                         budget)",
                        crate::report::format_bytes(self.share.unwrap_or(0.0)),
                        self.dir.display()
                    );
                }
                self.file.get().expect("the spill file was just set")
            }
        };
        Ok(Held::Disk(file.spill(&p)?))
    }

    /// Bytes the spill file holds (0 without one).
    fn spilled_bytes(&self) -> u64 {
        self.file.get().map_or(0, |f| f.bytes())
    }

    /// Fails when a read from the spill file failed.
    fn check(&self) -> Result<()> {
        match self.file.get() {
            Some(file) => file.check(),
            None => Ok(()),
        }
    }
}

/// Keeps only what expressions read, so a fitness set of many architectures fits in memory.
fn slim(mut p: Probe) -> Probe {
    p.linears = Default::default();
    p.mixer_outputs = Default::default();
    p
}

/// Keeps a running total of the fitness probes' inputs and stops the search before the
/// system runs out of memory (which would kill it without a word).
struct MemoryGuard {
    /// Bytes the probes may hold: `$LPZERO_PROBE_MEMORY_GB`, else the memory available at the
    /// start less the memo budget and [`PROBING_ROOM_BYTES`] (`None`: unknown, no check).
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
            LimitSource::Available => l.less((memo_budget + PROBING_ROOM_BYTES) as f64),
            _ => l,
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
        let bytes = p.input_bytes();
        let held = self.held.fetch_add(bytes, Relaxed) + bytes;
        let done = self.done.fetch_add(1, Relaxed) + 1;
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let gb = |b: u64| crate::report::format_bytes(b as f64);
        let reserved = match limit.source {
            LimitSource::Available => ", less the memo budget and 2 GiB",
            _ => "",
        };
        if held as f64 > limit.bytes {
            anyhow::bail!(
                "the fitness probes need more memory than probing may use: they hold {} after \
                 {done} of {} architectures, and the limit is {}{reserved}. Keep the probes \
                 as bf16 (half the memory) or in a spill file on disk (`--spill-dir`), lower \
                 the batch rows or seq_len, or use fewer fitness architectures",
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

/// What the fitness phase of a search produced: the GP outcome and the baselines' values on the
/// fitness architectures (from the same probes).
pub struct FitnessPhase {
    /// The GP outcome.
    pub outcome: SearchOutcome,
    /// `fitness_baselines[a][b]`: baseline `b` (of [`baseline_proxies`]) on fitness
    /// architecture `a`.
    pub fitness_baselines: Vec<Vec<f64>>,
    /// Seconds spent probing the fitness set.
    pub probe_seconds: f64,
    /// Seconds spent in the GP loop.
    pub search_seconds: f64,
    /// Bytes the slimmed fitness probes held in memory (0 when they were spilled).
    pub probe_bytes: u64,
    /// Bytes the fitness probes took in the spill file (0 when they were kept in memory).
    pub spilled_bytes: u64,
    /// Spearman ρ of the best proxy on the fitness set (its fitness when the measure is
    /// Spearman).
    pub fitness_spearman: f64,
    /// `hall_values[h][a]`: hall-of-fame entry `h` on fitness architecture `a` (what the
    /// hall-of-fame ensemble is chosen on).
    pub hall_values: Vec<Vec<f64>>,
    /// The best proxy's values on the fitness set.
    pub best_values: Vec<f64>,
}

impl FitnessPhase {
    /// What the held-out pass evaluates: the hall of fame (best first), then the search's best
    /// proxy (which the hall of fame may hold under another expression with the same ranking of
    /// the fitness set), then every restart's best proxy (in restart order).
    pub fn heldout_exprs(&self) -> Result<Vec<Expr>> {
        let outcome = &self.outcome;
        let mut exprs: Vec<Expr> = outcome
            .hall_of_fame
            .iter()
            .map(|h| h.expr.clone())
            .collect();
        exprs.push(outcome.best.clone());
        exprs.extend(outcome.restarts.iter().map(|r| r.best.clone()));
        Ok(exprs)
    }
}

/// The baselines every search is compared with: the family's single-pass built-in proxies and
/// its published LPZero genotypes (what `score --proxy all` computes).
pub fn baseline_proxies(kind: crate::bench::BenchKind) -> Result<Vec<Proxy>> {
    Proxy::parse_list("all", kind)
}

/// Probes the fitness set (computing the baselines from each probe before it is slimmed) and
/// runs the GP loop.
pub fn fitness_phase(
    job: &SearchJob<'_>,
    opts: &SearchOptions,
    baselines: &[Proxy],
    progress: Progress<'_>,
) -> Result<FitnessPhase> {
    let start = Instant::now();
    let bench = job.bench;
    // Refuse an incompatible resume before any probing.
    let settings = models::family(bench.kind).settings(&job.probe)?;
    let truth = bench.truths(&job.fitness);
    for (r, path) in restarts::resume_paths(opts, job.resume.as_deref())?
        .iter()
        .enumerate()
    {
        if let Some(path) = path {
            let restart = restarts::restart_options(opts, r);
            checkpoint::load(path)?.check_compatible(&restart, &settings, &truth)?;
        }
    }
    let total = job.fitness.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let guard = MemoryGuard::new(opts.memo_budget_bytes, total)?;
    let placement = Placement::new(job, opts.memo_budget_bytes)?;
    let fitted = probe_map_within(
        bench,
        &job.fitness,
        &job.probe,
        job.threads,
        placement.turns,
        |_, p| {
            let values = crate::scoring::compute_all(baselines, &p);
            let held = placement.place(slim(p), &guard)?;
            Ok((held, values))
        },
        || {
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress(Phase::Probe, n, total);
        },
    )?;
    let (probes, fitness_baselines): (Vec<Held>, Vec<Vec<f64>>) = fitted.into_iter().unzip();
    let probe_bytes = guard.held.into_inner();
    let spilled_bytes = placement.spilled_bytes();
    let probe_seconds = start.elapsed().as_secs_f64();
    let sources: Vec<&dyn InputSource> = probes.iter().map(Held::source).collect();
    let iterations = opts.iterations * opts.restarts;
    let companion = if opts.complement {
        Some(complement_columns(baselines, &fitness_baselines, &truth)?)
    } else {
        None
    };
    let fitness = FitnessData {
        probes: &sources,
        truth: &truth,
        settings: &settings,
        companion: companion.as_deref(),
    };
    let outcome = restarts::run_restarts(
        opts,
        &fitness,
        job.out.as_deref(),
        job.resume.as_deref(),
        &|i| progress(Phase::Search, i, iterations),
    )?;
    let values_of = |e: &Expr| -> Vec<f64> { set_values(e, &sources) };
    let best_values = values_of(&outcome.best);
    let fitness_spearman = stats::spearman(&truth, &stats::sanitize(&best_values).0);
    let hall_values = outcome
        .hall_of_fame
        .iter()
        .map(|h| values_of(&h.expr))
        .collect();
    // A failed read served "no list": the search must not stand on it.
    placement.check()?;
    Ok(FitnessPhase {
        outcome,
        fitness_baselines,
        probe_seconds,
        search_seconds: start.elapsed().as_secs_f64() - probe_seconds,
        probe_bytes,
        spilled_bytes,
        fitness_spearman,
        hall_values,
        best_values,
    })
}

/// The companion columns of a complement search: the two baselines of the pair ensemble chosen
/// on the fitness set (as [`Comparison::new`] chooses it), oriented higher-is-better, one value
/// per fitness architecture (`rows[i]` holds architecture `i`'s values of `baselines`).
fn complement_columns(
    baselines: &[Proxy],
    rows: &[Vec<f64>],
    truth: &[f64],
) -> Result<Vec<Vec<f64>>> {
    let columns: Vec<Vec<f64>> = (0..baselines.len())
        .map(|b| fitness_column(baselines, rows, b))
        .collect();
    match compare::best_pair(truth, &columns) {
        Some((i, j, _)) => Ok(vec![columns[i].clone(), columns[j].clone()]),
        None => anyhow::bail!(
            "complement search: no pair of baselines has a defined rank correlation on the \
             fitness set"
        ),
    }
}

/// Baseline `b`'s values on the fitness set, oriented higher-is-better (`rows[i]` holds
/// architecture `i`'s values of `baselines`).
fn fitness_column(baselines: &[Proxy], rows: &[Vec<f64>], b: usize) -> Vec<f64> {
    let raw: Vec<f64> = rows.iter().map(|r| r[b]).collect();
    compare::oriented(&raw, baselines[b].orientation())
}

/// One probe per architecture of `archs` (of `job`'s benchmark, probed as `job` says, taking
/// turns within its budget): the values of `exprs` followed by those of `baselines`, one row
/// per architecture (in `archs` order); a rank join among `exprs` is joined across `archs`
/// ([`SetPlan`]). `on_done` ticks per architecture.
pub fn heldout_values(
    job: &SearchJob<'_>,
    archs: &[usize],
    exprs: &[Expr],
    baselines: &[Proxy],
    on_done: impl Fn() + Sync,
) -> Result<Vec<Vec<f64>>> {
    let plan = SetPlan::new(exprs);
    let rows = part_values(job, archs, &plan, baselines, on_done)?;
    Ok(plan.join_rows(&rows))
}

/// Like [`heldout_values`] but before the join: each row holds the values of `plan`'s parts,
/// then the baselines' (for a caller that joins over subsets of `archs`, as the study does).
pub fn part_values(
    job: &SearchJob<'_>,
    archs: &[usize],
    plan: &SetPlan,
    baselines: &[Proxy],
    on_done: impl Fn() + Sync,
) -> Result<Vec<Vec<f64>>> {
    if archs.is_empty() {
        return Ok(Vec::new());
    }
    probe_map_within(
        job.bench,
        archs,
        &job.probe,
        job.threads,
        job.budget.map(|b| b.limit()),
        |_, p| {
            let mut row = plan.part_values(&p);
            row.extend(crate::scoring::compute_all(baselines, &p));
            Ok(row)
        },
        on_done,
    )
}

/// Runs the job and returns the summary (also written to `summary.json` in the run folder).
pub fn search_benchmark(
    job: &SearchJob<'_>,
    opts: &SearchOptions,
    progress: Progress<'_>,
) -> Result<SearchSummary> {
    let start = Instant::now();
    let baselines = baseline_proxies(job.bench.kind)?;
    let phase = fitness_phase(job, opts, &baselines, progress)?;
    let hall = phase.heldout_exprs()?;
    let heldout_start = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let n_held = job.heldout.len();
    let rows = heldout_values(job, &job.heldout, &hall, &baselines, || {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(Phase::Heldout, n, n_held);
    })?;
    let heldout_seconds = heldout_start.elapsed().as_secs_f64();
    let mut summary = summarize(job, opts, &phase, &baselines, &rows)?;
    summary.heldout_seconds = heldout_seconds;
    summary.seconds = start.elapsed().as_secs_f64();
    if let Some(dir) = &job.out {
        write(
            &dir.join("summary.json"),
            &serde_json::to_string_pretty(&summary)?,
        )?;
    }
    Ok(summary)
}

/// The summary of a search from its fitness phase and the held-out rows of
/// [`heldout_values`] (per held-out architecture of `job.heldout`, the values of
/// [`FitnessPhase::heldout_exprs`] then the baselines'; empty when there is no held-out set). Writes `scatter.svg`
/// and `heldout.svg` into the run folder when there is one (not `summary.json`).
pub fn summarize(
    job: &SearchJob<'_>,
    opts: &SearchOptions,
    phase: &FitnessPhase,
    baselines: &[Proxy],
    rows: &[Vec<f64>],
) -> Result<SearchSummary> {
    let bench = job.bench;
    let outcome = &phase.outcome;
    let n_hall = outcome.hall_of_fame.len();
    let n_held = job.heldout.len();
    let held_truth = bench.truths(&job.heldout);
    let column = |k: usize| -> Vec<f64> { rows.iter().map(|r| r[k]).collect() };
    let correlate = |values: &[f64]| {
        let (clean, bad) = stats::sanitize(values);
        (stats::correlate(&held_truth, &clean), bad)
    };
    let hall_of_fame: Vec<HallSummary> = outcome
        .hall_of_fame
        .iter()
        .enumerate()
        .map(|(k, h)| {
            let held = (n_held > 0).then(|| correlate(&column(k)));
            HallSummary {
                expr: h.expr.clone(),
                key: h.key.clone(),
                fitness: h.fitness,
                iteration: h.iteration,
                restart: h.restart,
                heldout_spearman: held.as_ref().map(|(c, _)| c.spearman),
                heldout_kendall: held.as_ref().map(|(c, _)| c.kendall),
                heldout_non_finite: held.map(|(_, bad)| bad),
            }
        })
        .collect();
    let best_text = outcome.best.to_string();
    // Columns of `rows`: the hall of fame, the best proxy, every restart's best, then the
    // baselines.
    let best_column = n_hall;
    let n_restarts = outcome.restarts.len();
    let first_baseline = n_hall + 1 + n_restarts;
    let restarts: Vec<RestartSummary> = outcome
        .restarts
        .iter()
        .enumerate()
        .map(|(r, res)| {
            let held = (n_held > 0).then(|| correlate(&column(n_hall + 1 + r)).0);
            RestartSummary {
                seed: res.seed,
                fitness: res.fitness,
                best: res.best.clone(),
                heldout_spearman: held.as_ref().map(|c| c.spearman),
                heldout_kendall: held.as_ref().map(|c| c.kendall),
            }
        })
        .collect();
    let (held_rho, held_tau) = match n_held {
        0 => (f64::NAN, f64::NAN),
        _ => {
            let values = column(best_column);
            let (c, _) = correlate(&values);
            if let Some(dir) = &job.out {
                let title = format!(
                    "best proxy on {n_held} held-out {} architectures",
                    bench.kind
                );
                write(
                    &dir.join("scatter.svg"),
                    &crate::svg::scatter(&held_truth, &values, &title),
                )?;
            }
            (c.spearman, c.kendall)
        }
    };
    // The comparison with the baselines on the same held-out architectures and probes.
    let comparison = (n_held > 0).then(|| {
        let fit_cols: Vec<Vec<f64>> = (0..baselines.len())
            .map(|b| phase.fitness_baselines.iter().map(|r| r[b]).collect())
            .collect();
        let held_cols: Vec<Vec<f64>> = (0..baselines.len())
            .map(|b| column(first_baseline + b))
            .collect();
        let names: Vec<String> = baselines.iter().map(Proxy::name).collect();
        let columns: Vec<BaselineColumns<'_>> = baselines
            .iter()
            .enumerate()
            .map(|(b, proxy)| BaselineColumns {
                name: &names[b],
                orientation: proxy.orientation(),
                fitness: &fit_cols[b],
                heldout: &held_cols[b],
            })
            .collect();
        Comparison::new(&bench.truths(&job.fitness), &held_truth, &columns)
    });
    // The hall-of-fame ensemble: a rank sum of hall entries chosen greedily on the fitness set.
    let hall_fit: Vec<Vec<f64>> = phase
        .hall_values
        .iter()
        .map(|v| compare::oriented(v, Orientation::HigherIsBetter))
        .collect();
    let hall_held = |h: usize| compare::oriented(&column(h), Orientation::HigherIsBetter);
    let hof_ensemble = (n_held > 0 && n_hall > 0).then(|| {
        let (members, fit_rho) =
            compare::greedy_ensemble(&bench.truths(&job.fitness), &hall_fit, HOF_ENSEMBLE_SIZE);
        let cols: Vec<Vec<f64>> = members.iter().map(|&h| hall_held(h)).collect();
        let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
        (
            members,
            fit_rho,
            Corr::of(&held_truth, &stats::rank_sum(&refs)),
        )
    });
    let pair = comparison.as_ref().and_then(|c| c.pair_ensemble.as_ref());
    // The rank sum of searched proxies (each with its fitness-set and held-out values) and the
    // pair's two baselines.
    let with_pair = |searched: Vec<(Vec<f64>, Vec<f64>, Expr)>| -> Option<CombinedEnsemble> {
        let pair = pair?;
        if searched.is_empty() {
            return None;
        }
        let mut fit = Vec::new();
        let mut held = Vec::new();
        let mut exprs = Vec::new();
        for (f, h, e) in searched {
            fit.push(f);
            held.push(h);
            exprs.push(e);
        }
        // The comparison's columns are the baselines, in order.
        for &b in &pair.columns {
            fit.push(fitness_column(baselines, &phase.fitness_baselines, b));
            held.push(compare::oriented(
                &column(first_baseline + b),
                baselines[b].orientation(),
            ));
        }
        let sum = |cols: &[Vec<f64>]| {
            let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
            stats::rank_sum(&refs)
        };
        let held_corr = Corr::of(&held_truth, &sum(&held));
        let names = pair.members.to_vec();
        Some(CombinedEnsemble {
            spearman: held_corr.spearman,
            kendall: held_corr.kendall,
            fitness_spearman: crate::stats::spearman(&bench.truths(&job.fitness), &sum(&fit)),
            proxy_list: CombinedEnsemble::list_of(&exprs, &names),
            searched: exprs,
            baselines: names,
            margin: comparison
                .as_ref()
                .map_or(f64::NAN, |c| c.margin(held_corr.spearman)),
        })
    };
    // The combined ensemble: the hall-of-fame ensemble's members and the pair's two baselines.
    let combined = hof_ensemble.as_ref().and_then(|(members, _, _)| {
        with_pair(
            members
                .iter()
                .map(|&h| {
                    let expr = outcome.hall_of_fame[h].expr.clone();
                    (hall_fit[h].clone(), hall_held(h), expr)
                })
                .collect(),
        )
    });
    // The complement ensemble: the searched proxy and the pair's two baselines (what a
    // complement search optimises on the fitness set).
    // (`with_pair` gives none without a held-out set: there is no pair then.)
    let complement = with_pair(vec![(
        compare::oriented(&phase.best_values, Orientation::HigherIsBetter),
        compare::oriented(&column(best_column), Orientation::HigherIsBetter),
        outcome.best.clone(),
    )]);
    if let (Some(dir), Some(cmp)) = (&job.out, &comparison) {
        write(
            &dir.join("heldout.svg"),
            &heldout_chart(
                &best_text,
                held_rho,
                combined.as_ref().map(|c| c.spearman),
                cmp,
                n_held,
            ),
        )?;
    }
    Ok(SearchSummary {
        bench: bench.kind.name().to_string(),
        best: outcome.best.clone(),
        fitness: outcome.fitness_spearman,
        fitness_measure: opts.fitness,
        fitness_spearman: phase.fitness_spearman,
        heldout_spearman: held_rho,
        heldout_kendall: held_tau,
        heldout_n: n_held,
        fitness_n: job.fitness.len(),
        fitness_archs: job
            .fitness
            .iter()
            .map(|&i| bench.entries[i].key.clone())
            .collect(),
        seconds: phase.probe_seconds + phase.search_seconds,
        probe_seconds: phase.probe_seconds,
        fitness_probe_bytes: phase.probe_bytes,
        fitness_spilled_bytes: phase.spilled_bytes,
        memory_budget_gb: job.budget.map(|b| b.bytes / 1e9),
        search_seconds: phase.search_seconds,
        heldout_seconds: 0.0,
        evaluated: outcome.evaluated,
        candidates: outcome.candidates,
        valid: outcome.valid,
        rejected_by_rule: outcome.rejected_by_rule.clone(),
        seconds_saved_by_rule: outcome.seconds_saved_by_rule.clone(),
        hall_of_fame,
        heldout_baselines: comparison.as_ref().map(summary::heldout_baselines),
        best_baseline: comparison.as_ref().map(|c| c.best_baseline.clone()),
        best_baseline_spearman: comparison.as_ref().map(|c| c.best.spearman),
        best_baseline_kendall: comparison.as_ref().map(|c| c.best.kendall),
        margin: comparison.as_ref().map(|c| c.margin(held_rho)),
        hall_of_fame_ensemble: hof_ensemble.map(|(members, fit_rho, c)| EnsembleResult {
            spearman: c.spearman,
            kendall: c.kendall,
            members: members
                .iter()
                .map(|&h| outcome.hall_of_fame[h].expr.clone())
                .collect(),
            fitness_spearman: fit_rho,
        }),
        combined_ensemble: combined,
        complement_ensemble: complement,
        restarts,
        chosen_restart: outcome.chosen_restart,
        seed: opts.seed,
        structure: opts.structure,
        iterations: opts.iterations,
        population: opts.population,
        rps: opts.rps.enabled,
        probe: job.probe.clone(),
        peak_rss_mib: crate::report::peak_rss_mib(),
    })
}

/// The most hall-of-fame entries the hall-of-fame ensemble sums the ranks of.
pub const HOF_ENSEMBLE_SIZE: usize = 5;

/// Bar chart of held-out ρ: the searched proxy first (and the combined ensemble second), then
/// the pair ensemble and every baseline, best first.
fn heldout_chart(
    best: &str,
    ours: f64,
    combined: Option<f64>,
    cmp: &Comparison,
    n: usize,
) -> String {
    let mut bars: Vec<(String, f64)> = cmp
        .baselines
        .iter()
        .map(|(name, c)| (name.clone(), c.spearman))
        .collect();
    if let Some(p) = &cmp.pair_ensemble {
        bars.push((
            format!("pair_ensemble ({} + {})", p.members[0], p.members[1]),
            p.heldout.spearman,
        ));
    }
    bars.sort_by(|a, b| b.1.total_cmp(&a.1));
    bars.insert(0, ("searched proxy".to_string(), ours));
    if let Some(rho) = combined {
        bars.insert(1, ("combined ensemble (searched + pair)".to_string(), rho));
    }
    // The expression can be long: the title names it, cut to a readable length.
    let shown: String = best.chars().take(90).collect();
    let ellipsis = if shown.len() < best.len() { "…" } else { "" };
    let title = format!("held-out Spearman on {n} architectures: {shown}{ellipsis}");
    crate::svg::bar_chart(&title, &bars)
}

fn write(path: &Path, text: &str) -> Result<()> {
    crate::report::write_atomic(path, text)
}
