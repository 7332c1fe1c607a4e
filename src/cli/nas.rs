//! Command-line wiring of `lpzero nas` (architecture search with a proxy) and of the merge of
//! its shards.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use lpzero::bench::space::SpaceOptions;
use lpzero::bench::Benchmark;
use lpzero::nas::{self, CostAxis, NasOptions, NasResult, Pool, ScoreColumn, Scorer, SpaceChoice};
use lpzero::probe::ProbeOptions;
use lpzero::proxy::builtin::Orientation;
use lpzero::report;
use lpzero::scoring::{Job, Proxy, ScoreTable, RANK_SUM};
use lpzero::shard::file::Source;
use lpzero::shard::merge::Merged;
use lpzero::shard::run::Scoring;

use super::{load, shard, DataArgs, ProbeArgs, ScoringBudgetArgs};
use crate::out;

/// `lpzero nas --pareto`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AxisArg {
    /// Total parameters.
    Params,
    /// Measured CPU inference latency (every candidate within budget is timed).
    Latency,
}

/// `lpzero nas`.
#[derive(Args)]
pub struct NasArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    budget: ScoringBudgetArgs,
    /// The proxy that ranks the architectures (a name, a genotype or an expression); with
    /// --scores also `rank_sum`, the ensemble column `score --rank-sum` writes; with
    /// --validate, a list as for `score --proxy`.
    #[arg(long)]
    proxy: String,
    /// Candidates: the benchmark's own architectures, or N new ones drawn (seeded by --seed)
    /// from the family's design space.
    #[arg(long, default_value = "benchmark", value_name = "benchmark|sample:N")]
    space: String,
    /// Generations of mutation of the best candidates after the first ranking.
    #[arg(long, default_value_t = 0, value_name = "G")]
    evolve: usize,
    /// Mutants per generation of --evolve.
    #[arg(long, default_value_t = nas::CHILDREN)]
    children: usize,
    /// Architectures to report (and write in the benchmark's format).
    #[arg(long, default_value_t = nas::TOP, value_name = "K")]
    top: usize,
    /// Most total parameters a candidate may have (larger ones are not probed).
    #[arg(long, value_name = "N")]
    max_params: Option<usize>,
    /// Most median CPU inference latency, in milliseconds, a candidate may have (every
    /// candidate within the parameter budget is then timed).
    #[arg(long, value_name = "X")]
    max_latency_ms: Option<f64>,
    /// Cost axis of the Pareto front.
    #[arg(long, value_enum, default_value_t = AxisArg::Params)]
    pareto: AxisArg,
    /// Timed forward passes per latency measurement (after one warm-up); the median counts.
    #[arg(long, default_value_t = nas::LATENCY_REPEATS, value_name = "R")]
    latency_repeats: usize,
    /// Depths (layers) to draw and mutate within instead of the family's published ones:
    /// `A..=B` or `N`.
    #[arg(long, value_name = "A..=B")]
    depth: Option<String>,
    /// Read the proxy's values from this score table (a CSV with an `id` column and one
    /// column per proxy, as `lpzero score --out` or `baselines.csv` write) instead of probing.
    #[arg(long, value_name = "CSV")]
    scores: Option<PathBuf>,
    /// Validate the proxy where the ground truth is known: for parameter budgets at the 25,
    /// 50 and 75 % quantiles of the benchmark, the truth of the proxy's top-1 and top-5
    /// against the best within the budget and against picking by parameters. Writes
    /// validation.{md,json} to --out.
    #[arg(long)]
    validate: bool,
    /// With --validate: validate the rank sum of the listed proxies too (the ensemble
    /// `score --rank-sum` computes, e.g. a search's `combined_ensemble.proxy_list`), as the
    /// row `rank_sum`.
    #[arg(long, requires = "validate")]
    rank_sum: bool,
    /// Output folder [default: nas-<bench>]; with --shard, the shard's JSON Lines file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object on stdout: {"top": [...], "pareto": [...], ...}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    shard: shard::ShardArgs,
}

/// Runs the engine on one thread inside each model unless `RAYON_NUM_THREADS` says
/// otherwise: probing parallelises across architectures, and latency is timed on one core
/// (steadier on a shared machine, and the same for every candidate).
fn one_engine_thread() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

/// Reads `--depth`: `A..=B` or `N`.
fn parse_depth(text: &str) -> Result<SpaceOptions> {
    let number = |t: &str| {
        t.trim().parse::<usize>().with_context(|| {
            format!(
                "`{}`: expected a number of layers, or A..=B",
                report::clip(text)
            )
        })
    };
    let (lo, hi) = match text.split_once("..=") {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let n = number(text)?;
            (n, n)
        }
    };
    let opts = SpaceOptions {
        depth: Some(lo..=hi),
    };
    opts.check()?;
    Ok(opts)
}

impl NasArgs {
    /// The library's options from the flags.
    fn options(&self) -> Result<NasOptions> {
        let opts = NasOptions {
            space: self.space.parse::<SpaceChoice>().context("--space")?,
            evolve: self.evolve,
            children: self.children,
            top: self.top,
            max_params: self.max_params,
            max_latency_ms: self.max_latency_ms,
            pareto: match self.pareto {
                AxisArg::Params => CostAxis::Params,
                AxisArg::Latency => CostAxis::Latency,
            },
            repeats: self.latency_repeats,
            space_opts: match &self.depth {
                Some(d) => parse_depth(d).context("--depth")?,
                None => SpaceOptions::default(),
            },
        };
        opts.check()
            .context("invalid options (--top, --latency-repeats, --children, --max-latency-ms)")?;
        Ok(opts)
    }
}

/// The settings a sharded `nas` records for its merge.
#[derive(serde::Serialize, serde::Deserialize)]
struct Task {
    nas: NasOptions,
    probe: ProbeOptions,
    proxy: String,
}

/// `lpzero nas`.
pub fn nas(a: NasArgs) -> Result<()> {
    let sharded = a.shard.resolve()?;
    let base = load(&a.data)?;
    let opts = a.options()?;
    let probe = a.probe.options(base.kind)?;
    let threads = a.probe.threads()?;
    one_engine_thread();
    if a.validate {
        return validate(&a, &base, &probe, threads);
    }
    // `rank_sum` is the column `score --rank-sum` writes: an ensemble, read from --scores only.
    let proxy = match (&a.scores, a.proxy.trim()) {
        (Some(_), RANK_SUM) => None,
        (None, RANK_SUM) => bail!(
            "--proxy {RANK_SUM} is the ensemble column `score --rank-sum` writes: give that \
             table with --scores"
        ),
        (_, text) => Some(Proxy::parse(text).context("--proxy")?),
    };
    // Probing, the pool and its evolved children are scored in changing groups: ranks across
    // a group would not compare between groups (a table given with --scores is one set).
    if a.scores.is_none() {
        lpzero::scoring::refuse_rank_joins(proxy.as_slice(), "`lpzero nas` without --scores")
            .context("--proxy")?;
    }
    let name = proxy.as_ref().map_or(RANK_SUM.to_string(), Proxy::name);
    let orientation = proxy
        .as_ref()
        .map_or(Orientation::HigherIsBetter, Proxy::orientation);
    let (mut pool, selection) = nas::prepare(&base, orientation, &probe, &opts)?;
    if let Some(s) = sharded {
        for (given, flag) in [
            (opts.evolve > 0, "--evolve"),
            (a.scores.is_some(), "--scores"),
        ] {
            if given {
                bail!(
                    "{flag} does not go with --shard: shards score the first pool only; run the \
                     search unsharded, or merge the shards and evolve from their result"
                );
            }
        }
        let proxies = [Proxy::parse(a.proxy.trim())?];
        let task = Task {
            nas: opts.clone(),
            probe: probe.clone(),
            proxy: name.clone(),
        };
        let source = pool
            .sampling
            .clone()
            .map(|sampling| Source::Sampled { sampling });
        let job =
            Job::new(&pool.bench, &selection, &proxies, &probe, threads).within(a.budget.turns());
        let what = Scoring::new("nas", job).with(source, serde_json::to_value(&task)?);
        return shard::score_shard(&what, s, a.out.as_deref(), a.json);
    }
    if a.scores.is_some() && opts.evolve > 0 {
        bail!(
            "--evolve makes new architectures, which the score table of --scores has no values \
             for; leave out --scores (the proxy is then computed by probing)"
        );
    }
    let column = match &a.scores {
        Some(path) => Some(ScoreColumn::read(path, &name).context("--scores")?),
        None => None,
    };
    let scorer = match (&column, &proxy) {
        (Some(c), _) => Scorer::Table(c),
        (None, Some(proxy)) => Scorer::Probe {
            proxy,
            probe: &probe,
            threads,
            turns: a.budget.turns(),
        },
        (None, None) => bail!("--proxy {RANK_SUM} is read from a score table: give --scores"),
    };
    let bar = report::progress(selection.len(), "scoring", a.json);
    let scored = pool.score(&selection, &scorer, || bar.inc(1));
    if a.scores.is_some() {
        scored.context("--scores")?;
    } else {
        scored?;
    }
    bar.finish_and_clear();
    let quiet = a.json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    pool.evolve(&opts, probe.seed, &scorer, &probe, &|g, best| {
        if !quiet {
            eprintln!("generation {g}: best score {best}");
        }
    })?;
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("nas-{}", base.kind)));
    let (result, summary) = finish_and_write(pool, &name, &probe, &opts, &dir, a.json)?;
    if result.top.is_empty() {
        eprintln!(
            "warning: no candidate is within the budgets with a finite proxy value (see \
             --max-params, --max-latency-ms and {}/candidates.csv)",
            dir.display()
        );
    }
    if a.json {
        return out::line(serde_json::to_string(&summary)?);
    }
    print_report(&result, &summary, &dir)
}

/// Latency, ranking and front ([`nas::finish`]), then the files in `dir`; the result and its
/// summary.
fn finish_and_write(
    pool: Pool,
    proxy: &str,
    probe: &ProbeOptions,
    opts: &NasOptions,
    dir: &Path,
    quiet: bool,
) -> Result<(NasResult, serde_json::Value)> {
    let bar = report::progress(0, "timing", quiet);
    let result = nas::finish(pool, probe, opts, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let summary = result.summary(proxy, opts, probe.seed)?;
    result.write(dir, &summary, opts)?;
    Ok((result, summary))
}

/// The human-readable report: the top and the front, as tables.
fn print_report(result: &NasResult, summary: &serde_json::Value, dir: &Path) -> Result<()> {
    out::line(format_args!(
        "lpzero nas: {} of {} candidates eligible ({} scored), proxy {}; wrote {}",
        summary["eligible"],
        summary["candidates"],
        summary["scored"],
        report::clip(summary["proxy"].as_str().unwrap_or_default()),
        dir.display()
    ))?;
    let table = |title: &str, ix: &[usize]| -> Result<()> {
        out::line(title)?;
        out::line(format_args!(
            "{:>4} {:<16} {:>12} {:>11} {:>14} {:>10}",
            "rank", "id", "params", "latency_ms", "score", "truth"
        ))?;
        for (r, &i) in ix.iter().enumerate() {
            let c = &result.pool.candidates[i];
            let opt = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
            out::line(format_args!(
                "{:>4} {:<16} {:>12} {:>11} {:>14.6e} {:>10}",
                r + 1,
                report::clip_to(&c.key, 16),
                c.params,
                opt(c.latency_ms, 2),
                c.score,
                opt(c.truth, 2)
            ))?;
        }
        Ok(())
    };
    table("top:", &result.top)?;
    table("pareto front (by increasing cost):", &result.pareto)
}

/// `lpzero nas --validate`.
fn validate(a: &NasArgs, bench: &Benchmark, probe: &ProbeOptions, threads: usize) -> Result<()> {
    if !bench.has_truth() {
        bail!(
            "--validate: {} has no ground truth to validate against",
            bench.source.display()
        );
    }
    if a.space != "benchmark" || a.evolve > 0 || a.shard.resolve()?.is_some() {
        bail!(
            "--validate ranks the benchmark's own architectures: leave out --space sample:N, \
             --evolve and --shard"
        );
    }
    let proxies = Proxy::parse_list(&a.proxy, bench.kind).context("--proxy")?;
    let all: Vec<usize> = (0..bench.len()).collect();
    let params: Vec<usize> = lpzero::params::count(bench, &all, probe.sizes)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let names: Vec<String> = proxies.iter().map(Proxy::name).collect();
    let values: Vec<Vec<f64>> = match &a.scores {
        Some(path) => names
            .iter()
            .map(|name| {
                let column = ScoreColumn::read(path, name).context("--scores")?;
                column.lookup(bench.entries.iter().map(|e| e.key.as_str()))
            })
            .collect::<Result<_>>()?,
        None => {
            let bar = report::progress(all.len(), "probing", a.json);
            let table: ScoreTable = Job::new(bench, &all, &proxies, probe, threads)
                .within(a.budget.turns())
                .score(|| bar.inc(1))?;
            bar.finish_and_clear();
            table.values
        }
    };
    let mut scores: Vec<Vec<f64>> = proxies
        .iter()
        .zip(&values)
        .map(|(p, v)| {
            let sign = p.orientation().sign();
            v.iter().map(|x| sign * x).collect()
        })
        .collect();
    let mut names = names;
    if a.rank_sum {
        scores.push(lpzero::scoring::rank_sum_of(&proxies, &values).context("--rank-sum")?);
        names.push(RANK_SUM.to_string());
    }
    let truth = bench.truths(&all);
    let rows = nas::validate(&names, &scores, &truth, &params)?;
    let (raw_name, sign) = bench.raw_truth;
    let markdown = nas::validation_markdown(&rows, raw_name, sign);
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("nas-{}", bench.kind)));
    let value = serde_json::json!({
        "bench": bench.kind.name(),
        "n": bench.len(),
        "truth": raw_name,
        "scores": a.scores,
        "rows": rows,
    });
    report::write_atomic(&dir.join("validation.md"), &markdown)?;
    report::write_atomic(
        &dir.join("validation.json"),
        serde_json::to_string_pretty(&value)? + "\n",
    )?;
    if a.json {
        return out::line(serde_json::to_string(&value)?);
    }
    out::line(markdown.trim_end())
}

/// `lpzero merge` of `nas` shards: the pool loaded again (drawn again for `sample:N`), the
/// merged values applied, then the rest of the search as the unsharded run does it, into
/// `dir` (`lpzero merge` reports on stdout; `json`: no progress bar).
pub fn merge(merged: &Merged, table: &ScoreTable, dir: &Path, json: bool) -> Result<()> {
    let task: Task = merged
        .header
        .options
        .task
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .context("the shards' nas settings cannot be read")?
        .context("the shards' header has no nas settings")?;
    let bench = merged.load_bench()?;
    let proxy = Proxy::parse(&task.proxy)?;
    let sampling = match &merged.header.source {
        Source::Sampled { sampling } => Some(sampling.clone()),
        _ => None,
    };
    one_engine_thread();
    let (mut pool, selection) =
        nas::pool_of(bench, sampling, proxy.orientation(), &task.probe, &task.nas)?;
    if selection != merged.header.options.selection {
        bail!("the shards scored other architectures than this lpzero selects for their settings");
    }
    pool.apply_values(&selection, table.values.first().map_or(&[][..], |v| v));
    finish_and_write(pool, &proxy.name(), &task.probe, &task.nas, dir, json)?;
    Ok(())
}
