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
use serde_json::json;

use crate::bench::{self, Benchmark};
use crate::probe::ProbeOptions;
use crate::report::json_number;
use crate::search::pipeline::{self, FitnessPhase, SearchJob};
use crate::search::SearchOptions;

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
}

/// Progress callbacks: `(phase, done, total)` with phases `probe`, `search` (per split) and
/// `heldout`.
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// The rows of the per-split comparison that every study reports.
const HEADLINE: [&str; 4] = [
    "searched",
    "hall_of_fame_ensemble",
    "pair_ensemble",
    "best_single_baseline",
];

/// Runs the study and returns `study.json`'s content (also written when `job.out` is set).
pub fn run(
    job: &StudyJob<'_>,
    opts: &SearchOptions,
    on_split: &dyn Fn(usize),
    progress: Progress<'_>,
) -> Result<serde_json::Value> {
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
    let rows = pipeline::heldout_values(
        bench,
        &archs,
        &job.probe,
        job.threads,
        &all_exprs,
        &baselines,
        || {
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress("heldout", d, n);
        },
    )?;
    let heldout_seconds = heldout_start.elapsed().as_secs_f64();
    // 3. Per split: its hall of fame's columns and the baselines, on its held-out rows.
    let mut summaries = Vec::with_capacity(job.splits);
    let mut offset = 0;
    for ((split_job, split_opts), (phase, hall)) in jobs.iter().zip(phases.iter().zip(&halls)) {
        let columns: Vec<usize> = (offset..offset + hall.len())
            .chain(all_exprs.len()..all_exprs.len() + baselines.len())
            .collect();
        offset += hall.len();
        let split_rows: Vec<Vec<f64>> = split_job
            .heldout
            .iter()
            .map(|&i| columns.iter().map(|&c| rows[i][c]).collect())
            .collect();
        let summary = pipeline::summarize(split_job, split_opts, phase, &baselines, &split_rows)?;
        if let Some(dir) = &split_job.out {
            write(
                &dir.join("summary.json"),
                &serde_json::to_string_pretty(&summary)?,
            )?;
        }
        summaries.push(summary);
    }
    let aggregate = aggregate(&summaries);
    let study = json!({
        "bench": bench.kind.name(),
        "splits": job.splits,
        "fitness_n": job.fitness_n,
        "seeds": (0..job.splits).map(|k| job.first_seed + k as u64).collect::<Vec<_>>(),
        "probe": job.probe,
        "search": opts,
        "aggregate": aggregate,
        "per_split": summaries,
        "seconds": start.elapsed().as_secs_f64(),
        "heldout_seconds": heldout_seconds,
        "peak_rss_mib": crate::report::peak_rss_mib(),
    });
    if let Some(dir) = &job.out {
        write(
            &dir.join("study.json"),
            &serde_json::to_string_pretty(&study)?,
        )?;
        write(&dir.join("study.md"), &markdown(&study))?;
        write(&dir.join("study.csv"), &csv(&summaries))?;
        write(&dir.join("study.svg"), &chart(&study))?;
    }
    Ok(study)
}

/// Per split, the held-out (ρ, τ) of every row: the searched proxy, the hall-of-fame ensemble,
/// the pair ensemble, the best single baseline (by held-out ρ) and every baseline by name.
fn split_rows(summary: &serde_json::Value) -> Vec<(String, f64, f64)> {
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let mut out = vec![
        (
            "searched".to_string(),
            num(&summary["heldout_spearman"]),
            num(&summary["heldout_kendall"]),
        ),
        (
            "hall_of_fame_ensemble".to_string(),
            num(&summary["hall_of_fame_ensemble"]["spearman"]),
            num(&summary["hall_of_fame_ensemble"]["kendall"]),
        ),
    ];
    let Some(baselines) = summary["heldout_baselines"].as_object() else {
        return out;
    };
    let mut best_single = ("", f64::NAN, f64::NAN);
    for (name, c) in baselines {
        let (rho, tau) = (num(&c["spearman"]), num(&c["kendall"]));
        if name != "pair_ensemble" && (best_single.1.is_nan() || rho > best_single.1) {
            best_single = (name, rho, tau);
        }
        out.push((name.clone(), rho, tau));
    }
    out.push((
        "best_single_baseline".to_string(),
        best_single.1,
        best_single.2,
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
fn aggregate(summaries: &[serde_json::Value]) -> serde_json::Value {
    let mut by_row: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for s in summaries {
        for (name, rho, tau) in split_rows(s) {
            let e = by_row.entry(name).or_default();
            e.0.push(rho);
            e.1.push(tau);
        }
    }
    let rows: serde_json::Map<String, serde_json::Value> = by_row
        .iter()
        .map(|(name, (rho, tau))| {
            let (rm, rs) = mean_sd(rho);
            let (tm, ts) = mean_sd(tau);
            (
                name.clone(),
                json!({
                    "spearman_mean": json_number(rm), "spearman_sd": json_number(rs),
                    "kendall_mean": json_number(tm), "kendall_sd": json_number(ts),
                    "spearman": rho.iter().map(|&x| json_number(x)).collect::<Vec<_>>(),
                    "kendall": tau.iter().map(|&x| json_number(x)).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let wins_best = summaries.iter().filter(|s| num(&s["margin"]) > 0.0).count();
    let wins_pair = summaries
        .iter()
        .filter(|s| {
            num(&s["heldout_spearman"]) > num(&s["heldout_baselines"]["pair_ensemble"]["spearman"])
        })
        .count();
    json!({
        "rows": rows,
        "wins_over_best_baseline": wins_best,
        "wins_over_pair_ensemble": wins_pair,
        "splits": summaries.len(),
    })
}

/// `study.md`: the per-split table and the mean ± sd of every row.
pub fn markdown(study: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let mut s = String::new();
    let agg = &study["aggregate"];
    let _ = writeln!(
        s,
        "# Study: {} splits of {} fitness architectures on {}\n",
        study["splits"],
        study["fitness_n"],
        study["bench"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "| split seed | searched proxy | fitness | held-out ρ | τ | pair ensemble | ρ | best baseline | ρ | margin |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for sm in study["per_split"].as_array().into_iter().flatten() {
        let pair = &sm["heldout_baselines"]["pair_ensemble"];
        let members = pair["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|x| x.as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | `{}` | {:.4} | {:.4} | {:.4} | {} | {:.4} | {} | {:.4} | {:+.4} |",
            sm["seed"],
            sm["best"].as_str().unwrap_or("?"),
            num(&sm["fitness"]),
            num(&sm["heldout_spearman"]),
            num(&sm["heldout_kendall"]),
            members,
            num(&pair["spearman"]),
            sm["best_baseline"].as_str().unwrap_or("?"),
            num(&sm["best_baseline_spearman"]),
            num(&sm["margin"]),
        );
    }
    let _ = writeln!(
        s,
        "\nThe searched proxy beat the best baseline (single or pair, chosen on held-out ρ) in {} \
         of {} splits and the pair ensemble in {} of {}.\n",
        agg["wins_over_best_baseline"],
        agg["splits"],
        agg["wins_over_pair_ensemble"],
        agg["splits"]
    );
    let _ = writeln!(
        s,
        "| proxy | held-out ρ (mean ± sd) | held-out τ (mean ± sd) |\n|---|---|---|"
    );
    let mut rows: Vec<(&String, &serde_json::Value)> = agg["rows"]
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    let headline = |name: &str| HEADLINE.iter().position(|h| *h == name);
    rows.sort_by(|a, b| match (headline(a.0), headline(b.0)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => num(&b.1["spearman_mean"]).total_cmp(&num(&a.1["spearman_mean"])),
    });
    for (name, r) in rows {
        let _ = writeln!(
            s,
            "| {name} | {:.4} ± {:.4} | {:.4} ± {:.4} |",
            num(&r["spearman_mean"]),
            num(&r["spearman_sd"]),
            num(&r["kendall_mean"]),
            num(&r["kendall_sd"])
        );
    }
    s
}

/// `study.csv`: `split_seed,proxy,spearman,kendall`, one row per split and proxy.
fn csv(summaries: &[serde_json::Value]) -> String {
    let mut out = String::from("split_seed,proxy,spearman,kendall\n");
    for s in summaries {
        for (name, rho, tau) in split_rows(s) {
            out.push_str(&format!(
                "{},{},{},{}\n",
                s["seed"],
                crate::report::csv_field(&name),
                crate::report::csv_number(rho),
                crate::report::csv_number(tau)
            ));
        }
    }
    out
}

/// `study.svg`: mean held-out ρ per row, the headline rows first.
fn chart(study: &serde_json::Value) -> String {
    let agg = &study["aggregate"]["rows"];
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let mut bars: Vec<(String, f64)> = HEADLINE
        .iter()
        .map(|h| (h.to_string(), num(&agg[*h]["spearman_mean"])))
        .collect();
    let mut rest: Vec<(String, f64)> = agg
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !HEADLINE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), num(&v["spearman_mean"])))
        .collect();
    rest.sort_by(|a, b| b.1.total_cmp(&a.1));
    bars.extend(rest);
    let title = format!(
        "mean held-out Spearman over {} splits ({})",
        study["splits"],
        study["bench"].as_str().unwrap_or("?")
    );
    crate::svg::bar_chart(&title, &bars)
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    crate::report::write_atomic(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_counts_wins_and_averages() {
        let split = |ours: f64, pair: f64, single: f64| {
            json!({
                "seed": 0, "heldout_spearman": ours, "heldout_kendall": ours / 2.0,
                "hall_of_fame_ensemble": {"spearman": ours, "kendall": 0.1},
                "heldout_baselines": {
                    "eznas": {"spearman": single, "kendall": 0.2},
                    "params": {"spearman": single - 0.1, "kendall": 0.1},
                    "pair_ensemble": {"spearman": pair, "kendall": 0.3, "members": ["a", "b"]},
                },
                "margin": ours - pair.max(single),
            })
        };
        let s = [split(0.9, 0.8, 0.7), split(0.7, 0.85, 0.6)];
        let a = aggregate(&s);
        assert_eq!(a["wins_over_best_baseline"], 1);
        assert_eq!(a["wins_over_pair_ensemble"], 1);
        let r = &a["rows"]["searched"];
        assert!((r["spearman_mean"].as_f64().unwrap() - 0.8).abs() < 1e-12);
        assert!((r["spearman_sd"].as_f64().unwrap() - 0.1).abs() < 1e-12);
        let best = &a["rows"]["best_single_baseline"];
        assert!((best["spearman_mean"].as_f64().unwrap() - 0.65).abs() < 1e-12);
        let study = json!({"splits": 2, "fitness_n": 50, "bench": "flexibert", "aggregate": a,
                           "per_split": s});
        let md = markdown(&study);
        assert!(md.contains("1 of 2 splits"), "{md}");
        assert!(md.contains("| searched | 0.8000 ± 0.1000"), "{md}");
        assert!(csv(&s).lines().count() == 1 + 2 * 6);
        assert!(chart(&study).contains("searched"));
    }
}
