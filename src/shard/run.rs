//! The sharded form of [`scoring::Job::score`]: score this shard's share of the selection
//! (the architectures its file does not hold yet) and append each architecture's line to the
//! shard file as soon as it is done.
//!
//! A command that scores architectures (`score`, `baselines`, `nas`) describes its work as a
//! [`scoring::Job`]; [`scoring::Job::score`] runs it whole, and [`run`] one shard of it (the
//! job with the command's name, a [`Scoring`]). A shard scores through
//! [`scoring::Job::score_each`], the path of the unsharded command, so it computes every value
//! exactly as that does (the probe of an architecture depends only on the settings and on its
//! position in the benchmark).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::file::{fingerprint, Header, Record, RunOptions, ShardFile, Source};
use super::Shard;
use crate::report::{csv_number, peak_rss_mib};
use crate::scoring::{self, ArchScores, Job, Proxy};

/// What a scoring command scores (all of it; [`run`] takes one shard's share).
pub struct Scoring<'a> {
    /// The command whose output the shards add up to (`score`, `baselines`, `nas`).
    pub command: &'a str,
    /// The scoring itself: architectures, proxies, probe settings, threads, memory budget.
    pub job: Job<'a>,
    /// Where the benchmark comes from, when [`Source::of`] cannot tell (sampled
    /// architectures).
    pub source: Option<Source>,
    /// The command's own settings for its merge ([`super::file::RunOptions::task`]).
    pub task: Option<serde_json::Value>,
}

impl<'a> Scoring<'a> {
    /// The scoring `job` as run by `command`.
    pub fn new(command: &'a str, job: Job<'a>) -> Self {
        Self {
            command,
            job,
            source: None,
            task: None,
        }
    }

    /// The same scoring, recorded with its benchmark's `source` and the command's `task`
    /// settings (see the fields).
    pub fn with(mut self, source: Option<Source>, task: serde_json::Value) -> Self {
        self.source = source;
        self.task = Some(task);
        self
    }

    /// The header that `shard` writes (and that a resumed file must carry).
    pub fn header(&self, shard: Shard) -> Result<Header> {
        let job = &self.job;
        let mut probe = crate::models::family(job.bench.kind).settings(job.opts)?;
        probe["extra_passes"] = job.opts.extra_passes.into();
        let options = RunOptions {
            lpzero: env!("CARGO_PKG_VERSION").to_string(),
            command: self.command.to_string(),
            bench: job.bench.kind.name().to_string(),
            data: fingerprint(job.bench, job.selection),
            probe,
            proxies: job.proxies.iter().map(Proxy::name).collect(),
            selection: job.selection.to_vec(),
            keys: job
                .selection
                .iter()
                .map(|&i| job.bench.entries[i].key.clone())
                .collect(),
            has_truth: job.bench.has_truth(),
            task: self.task.clone(),
        };
        let source = self.source.clone().unwrap_or_else(|| Source::of(job.bench));
        Header::new(shard, options, source)
    }
}

/// What a shard run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShardReport {
    /// The command.
    pub command: String,
    /// The shard, `I/N`.
    pub shard: String,
    /// The shard file.
    pub out: std::path::PathBuf,
    /// Architectures in this shard's share.
    pub share: usize,
    /// Of those, already in the file from an earlier run (not probed again).
    pub skipped: usize,
    /// Of those, scored by this run.
    pub scored: usize,
    /// Bytes of a cut last line (from a killed run) that were discarded.
    pub discarded_bytes: u64,
    /// Wall-clock seconds of this run.
    pub seconds: f64,
}

/// Scores the architectures of `shard` that its file `out` does not hold yet, appending a line
/// per architecture as it finishes; `on_done` is called after each one (for progress). On an
/// error the lines written so far stay, so a re-run continues from there.
pub fn run(
    what: &Scoring,
    shard: Shard,
    out: &Path,
    on_done: impl Fn() + Sync,
) -> Result<ShardReport> {
    let start = Instant::now();
    scoring::refuse_rank_joins(
        what.job.proxies,
        "a sharded run (one architecture at a time)",
    )?;
    let header = what.header(shard)?;
    let opened = ShardFile::open(out, &header)?;
    if opened.discarded_bytes > 0 {
        eprintln!(
            "warning: {}: discarded an incomplete last line ({} bytes, from a run that was \
             stopped while writing); its architecture is scored again",
            out.display(),
            opened.discarded_bytes
        );
    }
    let share = shard.share(what.job.selection);
    let done: std::collections::HashSet<usize> = opened.done.iter().copied().collect();
    let pending: Vec<usize> = share
        .iter()
        .copied()
        .filter(|i| !done.contains(i))
        .collect();
    let file = &opened.file;
    let scored = what.job.on(&pending).score_each(
        |index, scores| file.append(&record(&what.job, index, scores)),
        on_done,
    );
    if let Err(e) = scored {
        return Err(e.context(format!(
            "shard {} stopped; the architectures written to {} are kept, and a re-run \
             continues from there",
            shard,
            out.display()
        )));
    }
    Ok(ShardReport {
        command: what.command.to_string(),
        shard: shard.to_string(),
        out: out.to_path_buf(),
        share: share.len(),
        skipped: share.len() - pending.len(),
        scored: pending.len(),
        discarded_bytes: opened.discarded_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The line of architecture `index` (its position in the benchmark), scored as `scores`.
fn record(job: &Job, index: usize, scores: &ArchScores) -> Record {
    let entry = &job.bench.entries[index];
    Record {
        id: entry.key.clone(),
        index,
        truth: job
            .bench
            .has_truth()
            .then(|| csv_number(job.bench.truths(&[index])[0])),
        values: job
            .proxies
            .iter()
            .zip(&scores.proxies)
            .map(|(p, (v, _))| (p.name(), csv_number(*v)))
            .collect(),
        probe_seconds: scores.probe_seconds,
        proxy_seconds: job
            .proxies
            .iter()
            .zip(&scores.proxies)
            .map(|(p, (_, secs))| (p.name(), *secs))
            .collect(),
        peak_rss_mib: peak_rss_mib(),
    }
}
