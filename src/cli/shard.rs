//! Command-line wiring of sharded runs: the `--shard` flags of the scoring commands and
//! `lpzero merge`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use lpzero::report;
use lpzero::shard::run::{self, Scoring};
use lpzero::shard::{merge, Shard};

use crate::out;

/// `--shard` and `--shard-count`, for every command that scores architectures.
#[derive(Args, Clone)]
pub struct ShardArgs {
    /// Score one shard of the architectures: `I/N` (shard I of N, numbered from 0: the
    /// selected architectures at positions p with p % N == I) or `auto` ($SLURM_ARRAY_TASK_ID
    /// and $SLURM_ARRAY_TASK_COUNT, or $JOB_COMPLETION_INDEX with --shard-count or
    /// $LPZERO_SHARD_COUNT). --out then names the shard's JSON Lines file, written as it goes
    /// and resumed by a re-run; `lpzero merge` joins the shards.
    #[arg(long, value_name = "I/N|auto")]
    shard: Option<String>,
    /// Number of shards for `--shard auto` in a Kubernetes Indexed Job (its `completions`).
    #[arg(long, value_name = "N")]
    shard_count: Option<usize>,
}

impl ShardArgs {
    /// The shard to score, or `None` for an unsharded run.
    pub fn resolve(&self) -> Result<Option<Shard>> {
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        match (&self.shard, self.shard_count) {
            (None, Some(_)) => bail!("--shard-count goes with --shard auto"),
            (None, None) => Ok(None),
            (Some(spec), count) => Shard::resolve(spec, count, &env)
                .map(Some)
                .with_context(|| match count {
                    Some(n) => format!("--shard {spec} --shard-count {n}"),
                    None if spec.trim() == "auto" => {
                        "--shard auto (a Kubernetes Indexed Job gives \
                                                      its count with --shard-count N)"
                            .to_string()
                    }
                    None => format!("--shard {spec}"),
                }),
        }
    }
}

/// Runs one shard of a scoring command into `out` and reports it on stdout.
pub fn score_shard(what: &Scoring, shard: Shard, out: Option<&Path>, json: bool) -> Result<()> {
    let Some(out) = out else {
        bail!(
            "--shard {shard} needs --out FILE: the JSON Lines file where this shard writes its \
             architectures as it goes (one file per shard, e.g. shards/{}_{}.jsonl)",
            what.command,
            shard.index
        );
    };
    let share = shard.share(what.job.selection).len();
    let bar = report::progress(share, &format!("shard {shard}"), json);
    let done = run::run(what, shard, out, || bar.inc(1))?;
    bar.finish_and_clear();
    if json {
        return out::line(serde_json::to_string(&done)?);
    }
    out::line(format_args!(
        "shard {shard} of `lpzero {}`: {} architecture(s), {} already in {}, {} scored now \
         ({:.1} s); when every shard is done, join them with `lpzero merge FILES... --out ...`",
        what.command,
        done.share,
        done.skipped,
        out.display(),
        done.scored,
        done.seconds
    ))
}

/// `lpzero merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// The shard files (written by `--shard ... --out FILE`), in any order.
    #[arg(required = true, value_name = "FILES")]
    files: Vec<PathBuf>,
    /// What the unsharded command writes: for `score` the CSV of --out, for `baselines` the
    /// folder of baselines.{md,json,csv,svg}, for `nas` its output folder.
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object on stdout: n, merged, missing, duplicates, correlations.
    #[arg(long)]
    json: bool,
}

/// Duplicates named one by one in warnings; more are counted.
const SHOWN_DUPLICATES: usize = 10;

/// Merges shard files into the unsharded command's output.
pub fn merge(a: MergeArgs) -> Result<()> {
    let merged = merge::read(&a.files)?;
    for (path, bytes) in &merged.cut {
        eprintln!(
            "warning: {}: ends in an incomplete line ({bytes} bytes; its shard was stopped \
             while writing): that architecture counts as missing",
            path.display()
        );
    }
    for d in merged.duplicates.iter().take(SHOWN_DUPLICATES) {
        eprintln!(
            "warning: architecture {} is in {} and again in {}, with the same values: kept once",
            report::clip(&d.id),
            d.kept,
            d.again
        );
    }
    if merged.duplicates.len() > SHOWN_DUPLICATES {
        eprintln!(
            "warning: {} more architectures are there twice with the same values",
            merged.duplicates.len() - SHOWN_DUPLICATES
        );
    }
    let options = &merged.header.options;
    let missing = merged.missing();
    let table = if missing.is_empty() {
        Some(merged.table()?)
    } else {
        None
    };
    if let Some(table) = &table {
        match options.command.as_str() {
            "score" => {
                let truth = lpzero::scoring::TruthColumn::for_truth(options.has_truth);
                table.write_csv(&a.out, truth)?;
            }
            "baselines" => merge::write_baselines(&merged, table, &a.out)?,
            "nas" => super::nas::merge(&merged, table, &a.out, a.json)?,
            other => bail!(
                "{}: shards of `{}`, which lpzero merge cannot join (expected score, \
                 baselines or nas)",
                a.files[0].display(),
                report::clip(other)
            ),
        }
    }
    let summaries = table.as_ref().map_or(&[][..], |t| &t.summaries[..]);
    if a.json {
        let value = serde_json::json!({
            "command": options.command,
            "bench": options.bench,
            "files": merged.files.len(),
            "n": options.selection.len(),
            "merged": merged.found(),
            "complete": missing.is_empty(),
            "missing": missing,
            "duplicates": merged.duplicates.iter().map(|d| &d.id).collect::<Vec<_>>(),
            "out": table.as_ref().map(|_| &a.out),
            "proxies": summaries.iter().map(|s| serde_json::json!({
                "proxy": s.proxy, "orientation": s.orientation, "n": s.n,
                "non_finite": s.non_finite, "spearman": report::json_number(s.spearman),
                "kendall": report::json_number(s.kendall),
                "top10_overlap": report::json_number(s.top10_overlap),
            })).collect::<Vec<_>>(),
        });
        out::line(serde_json::to_string(&value)?)?;
    } else {
        out::line(format_args!(
            "merged {} shard file(s) of `lpzero {}` ({}): {} of {} architectures, {} missing, \
             {} duplicate(s)",
            merged.files.len(),
            options.command,
            options.bench,
            merged.found(),
            options.selection.len(),
            missing.len(),
            merged.duplicates.len()
        ))?;
        if table.is_some() {
            out::line(format_args!("wrote {}", a.out.display()))?;
            if options.has_truth {
                super::correlation_table(summaries)?;
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} of {} architectures are missing ({}), so nothing was written: re-run shard(s) \
             {} (a re-run skips what its file already holds) and merge again",
            missing.len(),
            options.selection.len(),
            report::clip(&missing.join(", ")),
            merged.shards_with_missing().join(", ")
        );
    }
    Ok(())
}
