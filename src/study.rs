//! A ranking-quality study: the same search on several random fitness splits, each judged on
//! the architectures it never saw against every baseline and the pair ensemble.
//!
//! One split is what `lpzero search --seed S --fitness-archs random:N --probe-seed P` does:
//! the fitness set is `random:N` drawn with seed `S`, the GP is seeded with `S`, every other
//! architecture is held out, and the probes use seed `P` for every split. Because the probes
//! are the same for every split, one pass over the benchmark serves the held-out evaluation of
//! all splits (the hall of fame of every split and every baseline are computed from each
//! probe), instead of one pass per split.
//!
//! Outputs (in the study folder): `study.json` (options, per-split summaries, aggregate),
//! `study.md` (per-split table and mean ± sd per proxy), `study.csv` (one row per split and
//! proxy) and `study.svg` (mean held-out ρ per proxy); each split's run folder `split_S/`
//! holds what `lpzero search --out` writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::{self, Benchmark};
use crate::probe::ProbeOptions;
use crate::proxy::set::SetPlan;
use crate::search::budget::MemoryBudget;
use crate::search::pipeline::{self, FitnessPhase, SearchJob};
use crate::search::summary::{CombinedEnsemble, SearchSummary};
use crate::search::SearchOptions;

/// The result of a study: what `study.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct StudyReport {
    /// The benchmark family.
    pub bench: String,
    /// Number of splits.
    pub splits: usize,
    /// Fitness architectures per split.
    pub fitness_n: usize,
    /// Each split's seed.
    pub seeds: Vec<u64>,
    /// The probe options shared by the splits.
    pub probe: ProbeOptions,
    /// The search options (each split with its own seed).
    pub search: SearchOptions,
    /// Mean ± sd of every row and the win counts.
    pub aggregate: Aggregate,
    /// Every split's summary, as `search` writes it.
    pub per_split: Vec<SearchSummary>,
    /// Wall-clock seconds of the study.
    pub seconds: f64,
    /// Seconds of the one held-out pass.
    pub heldout_seconds: f64,
    /// Peak resident memory in MiB (Linux).
    pub peak_rss_mib: Option<f64>,
}

/// The held-out results of one row (a proxy or an ensemble) over the splits.
#[derive(Debug, Clone, Serialize)]
pub struct RowStats {
    /// Mean held-out ρ over the splits (finite values only).
    pub spearman_mean: f64,
    /// Its standard deviation (population).
    pub spearman_sd: f64,
    /// Mean held-out τ.
    pub kendall_mean: f64,
    /// Its standard deviation.
    pub kendall_sd: f64,
    /// Held-out ρ per split.
    pub spearman: Vec<f64>,
    /// Held-out τ per split.
    pub kendall: Vec<f64>,
}

/// Every row's statistics and how often the searched proxy won.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    /// By row name: `searched`, `hall_of_fame_ensemble`, `pair_ensemble`,
    /// `best_single_baseline` and every baseline.
    pub rows: BTreeMap<String, RowStats>,
    /// Splits where the searched proxy beat the best baseline (single or pair, chosen on
    /// held-out ρ).
    pub wins_over_best_baseline: usize,
    /// Splits where it beat the pair ensemble.
    pub wins_over_pair_ensemble: usize,
    /// Splits where the combined ensemble (hall-of-fame ensemble + pair ensemble members)
    /// beat the best baseline (single or pair, chosen on held-out ρ).
    pub combined_wins_over_best_baseline: usize,
    /// Splits where the combined ensemble beat the pair ensemble.
    pub combined_wins_over_pair_ensemble: usize,
    /// Splits where the complement ensemble (searched proxy + pair ensemble members) beat the
    /// best baseline (single or pair, chosen on held-out ρ).
    pub complement_wins_over_best_baseline: usize,
    /// Splits where the complement ensemble beat the pair ensemble.
    pub complement_wins_over_pair_ensemble: usize,
    /// Number of splits.
    pub splits: usize,
}

/// What a study needs besides the GP options.
pub struct StudyJob<'a> {
    /// The benchmark.
    pub bench: &'a Benchmark,
    /// Number of splits.
    pub splits: usize,
    /// Fitness architectures per split (drawn at random).
    pub fitness_n: usize,
    /// Seed of the first split; split `k` uses `first_seed + k`.
    pub first_seed: u64,
    /// Probe options, shared by every split (their `seed` is the probe seed).
    pub probe: ProbeOptions,
    /// Worker threads.
    pub threads: usize,
    /// Study folder (written when given).
    pub out: Option<PathBuf>,
    /// Where each split keeps its fitness probes ([`SearchJob::spill_dir`]).
    pub spill_dir: Option<PathBuf>,
    /// Memory each split's search and the held-out pass aim to stay within
    /// ([`SearchJob::budget`]).
    pub budget: Option<MemoryBudget>,
}

pub use crate::search::pipeline::{Phase, Progress};

/// The rows of the per-split comparison that every study reports.
const HEADLINE: [&str; 6] = [
    "searched",
    "hall_of_fame_ensemble",
    "combined_ensemble",
    "complement_ensemble",
    "pair_ensemble",
    "best_single_baseline",
];

/// Runs the study and returns its report (also written when `job.out` is set).
pub fn run(
    job: &StudyJob<'_>,
    opts: &SearchOptions,
    on_split: &dyn Fn(usize),
    progress: Progress<'_>,
) -> Result<StudyReport> {
    let start = Instant::now();
    let bench = job.bench;
    let n = bench.len();
    if job.splits == 0 {
        anyhow::bail!("a study needs at least one split");
    }
    if job.fitness_n < 2 || job.fitness_n >= n {
        anyhow::bail!(
            "fitness architectures per split must be within 2..{n} (the benchmark has {n}), got {}",
            job.fitness_n
        );
    }
    if let Some(dir) = &job.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the study folder", dir.display()))?;
    }
    let baselines = pipeline::baseline_proxies(bench.kind)?;
    // 1. Per split: probe the fitness set and search.
    let mut jobs = Vec::with_capacity(job.splits);
    let mut phases: Vec<FitnessPhase> = Vec::with_capacity(job.splits);
    for k in 0..job.splits {
        on_split(k);
        let seed = job.first_seed + k as u64;
        let fitness = bench::parse_sample(&format!("random:{}", job.fitness_n), n, seed)?;
        let heldout: Vec<usize> = (0..n)
            .filter(|i| fitness.binary_search(i).is_err())
            .collect();
        let split_job = SearchJob {
            bench,
            fitness,
            heldout,
            probe: job.probe.clone(),
            threads: job.threads,
            out: job.out.as_ref().map(|d| d.join(format!("split_{seed}"))),
            resume: None,
            spill_dir: job.spill_dir.clone(),
            budget: job.budget,
        };
        let split_opts = SearchOptions {
            seed,
            ..opts.clone()
        };
        phases.push(
            pipeline::fitness_phase(&split_job, &split_opts, &baselines, progress)
                .with_context(|| format!("split {k} (seed {seed})"))?,
        );
        jobs.push((split_job, split_opts));
    }
    // 2. One pass over the benchmark: every split's hall of fame and every baseline.
    let halls: Vec<Vec<crate::proxy::expr::Expr>> = phases
        .iter()
        .map(FitnessPhase::heldout_exprs)
        .collect::<Result<_>>()?;
    let all_exprs: Vec<_> = halls.iter().flatten().cloned().collect();
    let archs: Vec<usize> = (0..n).collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let heldout_start = Instant::now();
    // Parts, not values: a rank join ranks within each split's held-out set, as its search's
    // own held-out pass does.
    let plan = SetPlan::new(&all_exprs);
    // Every split's job probes the benchmark the same way (options, threads, budget).
    let rows = pipeline::part_values(&jobs[0].0, &archs, &plan, &baselines, || {
        let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(Phase::Heldout, d, n);
    })?;
    let heldout_seconds = heldout_start.elapsed().as_secs_f64();
    // 3. Per split: its hall of fame's columns and the baselines, on its held-out rows.
    let mut summaries = Vec::with_capacity(job.splits);
    let mut offset = 0;
    let n_parts = plan.parts().len();
    for ((split_job, split_opts), (phase, hall)) in jobs.iter().zip(phases.iter().zip(&halls)) {
        // The split's parts are a contiguous run of the whole plan's, in the same order.
        let split_plan = SetPlan::new(hall);
        let k = split_plan.parts().len();
        let columns: Vec<usize> = (offset..offset + k)
            .chain(n_parts..n_parts + baselines.len())
            .collect();
        offset += k;
        let part_rows: Vec<Vec<f64>> = split_job
            .heldout
            .iter()
            .map(|&i| columns.iter().map(|&c| rows[i][c]).collect())
            .collect();
        let split_rows = split_plan.join_rows(&part_rows);
        let summary = pipeline::summarize(split_job, split_opts, phase, &baselines, &split_rows)?;
        if let Some(dir) = &split_job.out {
            write(
                &dir.join("summary.json"),
                &serde_json::to_string_pretty(&summary)?,
            )?;
        }
        summaries.push(summary);
    }
    let study = StudyReport {
        bench: bench.kind.name().to_string(),
        splits: job.splits,
        fitness_n: job.fitness_n,
        seeds: (0..job.splits).map(|k| job.first_seed + k as u64).collect(),
        probe: job.probe.clone(),
        search: opts.clone(),
        aggregate: aggregate(&summaries),
        per_split: summaries,
        seconds: start.elapsed().as_secs_f64(),
        heldout_seconds,
        peak_rss_mib: crate::report::peak_rss_mib(),
    };
    if let Some(dir) = &job.out {
        write(
            &dir.join("study.json"),
            &serde_json::to_string_pretty(&study)?,
        )?;
        write(&dir.join("study.md"), &markdown(&study))?;
        write(&dir.join("study.csv"), &csv(&study.per_split))?;
        write(&dir.join("study.svg"), &chart(&study))?;
    }
    Ok(study)
}

/// Per split, the held-out (ρ, τ) of every row: the searched proxy, the hall-of-fame ensemble,
/// the pair ensemble, the best single baseline (by held-out ρ) and every baseline by name.
fn split_rows(summary: &SearchSummary) -> Vec<(String, f64, f64)> {
    let ensemble = summary.hall_of_fame_ensemble.as_ref();
    let combined = summary.combined_ensemble.as_ref();
    let complement = summary.complement_ensemble.as_ref();
    let mut out = vec![
        (
            "searched".to_string(),
            summary.heldout_spearman,
            summary.heldout_kendall,
        ),
        (
            "hall_of_fame_ensemble".to_string(),
            ensemble.map_or(f64::NAN, |e| e.spearman),
            ensemble.map_or(f64::NAN, |e| e.kendall),
        ),
        (
            "combined_ensemble".to_string(),
            combined.map_or(f64::NAN, |e| e.spearman),
            combined.map_or(f64::NAN, |e| e.kendall),
        ),
        (
            "complement_ensemble".to_string(),
            complement.map_or(f64::NAN, |e| e.spearman),
            complement.map_or(f64::NAN, |e| e.kendall),
        ),
    ];
    // With restarts, the first run alone: what a single-run search would have reported.
    if let (true, Some(first)) = (summary.restarts.len() > 1, summary.restarts.first()) {
        out.push((
            "single_run".to_string(),
            first.heldout_spearman.unwrap_or(f64::NAN),
            first.heldout_kendall.unwrap_or(f64::NAN),
        ));
    }
    let Some(baselines) = &summary.heldout_baselines else {
        return out;
    };
    let mut best_single = (f64::NAN, f64::NAN);
    for (name, c) in baselines {
        if name != "pair_ensemble" && (best_single.0.is_nan() || c.spearman > best_single.0) {
            best_single = (c.spearman, c.kendall);
        }
        out.push((name.clone(), c.spearman, c.kendall));
    }
    out.push((
        "best_single_baseline".to_string(),
        best_single.0,
        best_single.1,
    ));
    out
}

/// Mean and standard deviation (population) of the finite values; NaN when there are none.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

/// Mean ± sd of every row over the splits, and how often the searched proxy beat the best
/// baseline (`best_baseline` of the summary: single or pair, chosen on held-out ρ) and the pair
/// ensemble.
fn aggregate(summaries: &[SearchSummary]) -> Aggregate {
    let mut by_row: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for s in summaries {
        for (name, rho, tau) in split_rows(s) {
            let e = by_row.entry(name).or_default();
            e.0.push(rho);
            e.1.push(tau);
        }
    }
    let rows = by_row
        .into_iter()
        .map(|(name, (spearman, kendall))| {
            let (spearman_mean, spearman_sd) = mean_sd(&spearman);
            let (kendall_mean, kendall_sd) = mean_sd(&kendall);
            let stats = RowStats {
                spearman_mean,
                spearman_sd,
                kendall_mean,
                kendall_sd,
                spearman,
                kendall,
            };
            (name, stats)
        })
        .collect();
    let combined = ensemble_wins(summaries, |s| s.combined_ensemble.as_ref());
    let complement = ensemble_wins(summaries, |s| s.complement_ensemble.as_ref());
    Aggregate {
        rows,
        wins_over_best_baseline: summaries.iter().filter(|s| s.won()).count(),
        wins_over_pair_ensemble: summaries
            .iter()
            .filter(|s| s.pair_spearman().is_some_and(|p| s.heldout_spearman > p))
            .count(),
        combined_wins_over_best_baseline: combined.0,
        combined_wins_over_pair_ensemble: combined.1,
        complement_wins_over_best_baseline: complement.0,
        complement_wins_over_pair_ensemble: complement.1,
        splits: summaries.len(),
    }
}

/// Over `summaries`, how often the ensemble `of` picks beat the best baseline, and how often
/// it beat the pair ensemble (a split without the ensemble counts as a loss).
fn ensemble_wins(
    summaries: &[SearchSummary],
    of: impl Fn(&SearchSummary) -> Option<&CombinedEnsemble>,
) -> (usize, usize) {
    let over_best = summaries
        .iter()
        .filter(|s| of(s).is_some_and(CombinedEnsemble::won))
        .count();
    let over_pair = summaries
        .iter()
        .filter(|s| matches!((of(s), s.pair_spearman()), (Some(c), Some(p)) if c.spearman > p))
        .count();
    (over_best, over_pair)
}

/// `study.md`: the per-split table and the mean ± sd of every row.
pub fn markdown(study: &StudyReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let agg = &study.aggregate;
    let _ = writeln!(
        s,
        "# Study: {} splits of {} fitness architectures on {}\n",
        study.splits, study.fitness_n, study.bench
    );
    let _ = writeln!(
        s,
        "| split seed | searched proxy | fitness | held-out ρ | τ | combined ensemble ρ | τ | pair ensemble | ρ | best baseline | ρ | margin |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let nan = f64::NAN;
    for sm in &study.per_split {
        let pair = sm
            .heldout_baselines
            .as_ref()
            .and_then(|b| b.get("pair_ensemble"));
        let members = pair
            .and_then(|p| p.members.as_ref())
            .map(|m| m.join(" + "))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | `{}` | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.4} | {} | {:.4} | {:+.4} |",
            sm.seed,
            sm.best,
            sm.fitness,
            sm.heldout_spearman,
            sm.heldout_kendall,
            sm.combined_ensemble.as_ref().map_or(nan, |c| c.spearman),
            sm.combined_ensemble.as_ref().map_or(nan, |c| c.kendall),
            members,
            pair.map_or(nan, |p| p.spearman),
            sm.best_baseline.as_deref().unwrap_or("?"),
            sm.best_baseline_spearman.unwrap_or(nan),
            sm.margin.unwrap_or(nan),
        );
    }
    let _ = writeln!(
        s,
        "\nThe searched proxy beat the best baseline (single or pair, chosen on held-out ρ) in {} \
         of {} splits and the pair ensemble in {} of {}.\n",
        agg.wins_over_best_baseline, agg.splits, agg.wins_over_pair_ensemble, agg.splits
    );
    let _ = writeln!(
        s,
        "The combined ensemble (the hall-of-fame ensemble's searched proxies and the pair \
         ensemble's two baselines, ranks summed; every member chosen on the fitness set) beat the \
         best baseline in {} of {} splits and the pair ensemble in {} of {}.\n",
        agg.combined_wins_over_best_baseline,
        agg.splits,
        agg.combined_wins_over_pair_ensemble,
        agg.splits
    );
    let _ = writeln!(
        s,
        "The complement ensemble (the searched proxy and the pair ensemble's two baselines, ranks \
         summed) beat the best baseline in {} of {} splits and the pair ensemble in {} of {}.\n",
        agg.complement_wins_over_best_baseline,
        agg.splits,
        agg.complement_wins_over_pair_ensemble,
        agg.splits
    );
    let _ = writeln!(
        s,
        "| proxy | held-out ρ (mean ± sd) | held-out τ (mean ± sd) |\n|---|---|---|"
    );
    let mut rows: Vec<(&String, &RowStats)> = agg.rows.iter().collect();
    let headline = |name: &str| HEADLINE.iter().position(|h| *h == name);
    rows.sort_by(|a, b| match (headline(a.0), headline(b.0)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.1.spearman_mean.total_cmp(&a.1.spearman_mean),
    });
    for (name, r) in rows {
        let _ = writeln!(
            s,
            "| {name} | {:.4} ± {:.4} | {:.4} ± {:.4} |",
            r.spearman_mean, r.spearman_sd, r.kendall_mean, r.kendall_sd
        );
    }
    s
}

/// `study.csv`: `split_seed,proxy,spearman,kendall`, one row per split and proxy.
fn csv(summaries: &[SearchSummary]) -> String {
    let mut out = String::from("split_seed,proxy,spearman,kendall\n");
    for s in summaries {
        for (name, rho, tau) in split_rows(s) {
            out.push_str(&format!(
                "{},{},{},{}\n",
                s.seed,
                crate::report::csv_field(&name),
                crate::report::csv_number(rho),
                crate::report::csv_number(tau)
            ));
        }
    }
    out
}

/// `study.svg`: mean held-out ρ per row, the headline rows first.
fn chart(study: &StudyReport) -> String {
    let rows = &study.aggregate.rows;
    let mean = |name: &str| rows.get(name).map_or(f64::NAN, |r| r.spearman_mean);
    let mut bars: Vec<(String, f64)> = HEADLINE.iter().map(|h| (h.to_string(), mean(h))).collect();
    let mut rest: Vec<(String, f64)> = rows
        .iter()
        .filter(|(k, _)| !HEADLINE.contains(&k.as_str()))
        .map(|(k, r)| (k.clone(), r.spearman_mean))
        .collect();
    rest.sort_by(|a, b| b.1.total_cmp(&a.1));
    bars.extend(rest);
    let title = format!(
        "mean held-out Spearman over {} splits ({})",
        study.splits, study.bench
    );
    crate::svg::bar_chart(&title, &bars)
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    crate::report::write_atomic(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::family::Family;
    use crate::search::summary::{BaselineResult, CombinedEnsemble, EnsembleResult};
    use crate::search::{FitnessMeasure, Structure};

    /// A summary with the given held-out ρ for the searched proxy, the pair ensemble and the
    /// best single baseline (`eznas`; `params` is 0.1 below it); the combined ensemble is 0.2
    /// above the searched proxy.
    fn split(ours: f64, pair: f64, single: f64) -> SearchSummary {
        let head = crate::proxy::expr::Expr::input(crate::proxy::expr::Input::Head);
        let corr = |spearman, kendall| BaselineResult {
            spearman,
            kendall,
            members: None,
            fitness_spearman: None,
        };
        let baselines = BTreeMap::from([
            ("eznas".to_string(), corr(single, 0.2)),
            ("params".to_string(), corr(single - 0.1, 0.1)),
            (
                "pair_ensemble".to_string(),
                BaselineResult {
                    members: Some(["a".into(), "b".into()]),
                    fitness_spearman: Some(0.5),
                    ..corr(pair, 0.3)
                },
            ),
        ]);
        SearchSummary {
            bench: "flexibert".into(),
            best: head.clone(),
            fitness: 0.5,
            fitness_measure: FitnessMeasure::Kendall,
            fitness_spearman: 0.6,
            heldout_spearman: ours,
            heldout_kendall: ours / 2.0,
            heldout_n: 10,
            fitness_n: 5,
            fitness_archs: Vec::new(),
            seconds: 0.0,
            probe_seconds: 0.0,
            fitness_probe_bytes: 0,
            fitness_spilled_bytes: 0,
            memory_budget_gb: None,
            search_seconds: 0.0,
            heldout_seconds: 0.0,
            evaluated: 0,
            candidates: 0,
            valid: 0,
            rejected_by_rule: BTreeMap::new(),
            seconds_saved_by_rule: BTreeMap::new(),
            hall_of_fame: Vec::new(),
            heldout_baselines: Some(baselines),
            best_baseline: Some("pair_ensemble".into()),
            best_baseline_spearman: Some(pair.max(single)),
            best_baseline_kendall: Some(0.3),
            margin: Some(ours - pair.max(single)),
            hall_of_fame_ensemble: Some(EnsembleResult {
                spearman: ours,
                kendall: 0.1,
                members: vec![head.clone()],
                fitness_spearman: 0.5,
            }),
            combined_ensemble: Some(CombinedEnsemble {
                spearman: ours + 0.2,
                kendall: 0.4,
                fitness_spearman: 0.7,
                proxy_list: CombinedEnsemble::list_of(
                    std::slice::from_ref(&head),
                    &["a".into(), "b".into()],
                ),
                searched: vec![head.clone()],
                baselines: vec!["a".into(), "b".into()],
                margin: ours + 0.2 - pair.max(single),
            }),
            complement_ensemble: Some(CombinedEnsemble {
                spearman: ours + 0.05,
                kendall: 0.35,
                fitness_spearman: 0.65,
                proxy_list: CombinedEnsemble::list_of(
                    std::slice::from_ref(&head),
                    &["a".into(), "b".into()],
                ),
                searched: vec![head],
                baselines: vec!["a".into(), "b".into()],
                margin: ours + 0.05 - pair.max(single),
            }),
            restarts: Vec::new(),
            chosen_restart: 0,
            seed: 0,
            structure: Structure::Extended,
            iterations: 1,
            population: 2,
            rps: true,
            probe: crate::models::flexibert::FAMILY.probe_options(),
            peak_rss_mib: None,
        }
    }

    #[test]
    fn aggregate_counts_wins_and_averages() {
        let s = vec![split(0.9, 0.8, 0.7), split(0.7, 0.85, 0.6)];
        let a = aggregate(&s);
        assert_eq!(a.wins_over_best_baseline, 1);
        assert_eq!(a.wins_over_pair_ensemble, 1);
        // The combined ensemble (0.2 above) wins the second split too.
        assert_eq!(a.combined_wins_over_best_baseline, 2);
        assert_eq!(a.combined_wins_over_pair_ensemble, 2);
        assert!((a.rows["combined_ensemble"].spearman_mean - 1.0).abs() < 1e-12);
        // The complement ensemble (0.05 above) wins the first split only.
        assert_eq!(a.complement_wins_over_best_baseline, 1);
        assert_eq!(a.complement_wins_over_pair_ensemble, 1);
        assert!((a.rows["complement_ensemble"].spearman_mean - 0.85).abs() < 1e-12);
        let r = &a.rows["searched"];
        assert!((r.spearman_mean - 0.8).abs() < 1e-12);
        assert!((r.spearman_sd - 0.1).abs() < 1e-12);
        assert!((a.rows["best_single_baseline"].spearman_mean - 0.65).abs() < 1e-12);
        let study = StudyReport {
            bench: "flexibert".into(),
            splits: 2,
            fitness_n: 50,
            seeds: vec![0, 1],
            probe: crate::models::flexibert::FAMILY.probe_options(),
            search: SearchOptions::default(),
            aggregate: a,
            per_split: s,
            seconds: 0.0,
            heldout_seconds: 0.0,
            peak_rss_mib: None,
        };
        let md = markdown(&study);
        assert!(md.contains("1 of 2 splits"), "{md}");
        assert!(md.contains("| searched | 0.8000 ± 0.1000"), "{md}");
        assert!(md.contains("pair ensemble in 2 of 2"), "{md}");
        assert_eq!(csv(&study.per_split).lines().count(), 1 + 2 * 8);
        assert!(chart(&study).contains("searched"));
        // The JSON keeps the names scripts read.
        let v = serde_json::to_value(&study).unwrap();
        assert_eq!(v["aggregate"]["wins_over_pair_ensemble"], 1);
        assert_eq!(v["aggregate"]["combined_wins_over_pair_ensemble"], 2);
        assert_eq!(v["per_split"][0]["combined_ensemble"]["baselines"][0], "a");
        assert_eq!(
            v["per_split"][0]["heldout_baselines"]["pair_ensemble"]["members"][1],
            "b"
        );
    }
}
