//! The sharded form of [`scoring::score_within`]: score this shard's share of the selection
//! (the architectures its file does not hold yet) and append each architecture's line to the
//! shard file as soon as it is done.
//!
//! A shard scores through [`scoring::score_each`], the path of the unsharded command, so it
//! computes every value exactly as that does (the probe of an architecture depends only on
//! the settings and on its position in the benchmark). A command that scores architectures
//! (`score`, `baselines`, `nas`) describes the job as a [`Scoring`]; [`Scoring::score`] runs
//! it whole and [`run`] one shard of it.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::file::{fingerprint, Header, Record, RunOptions, ShardFile, Source};
use super::Shard;
use crate::bench::Benchmark;
use crate::probe::memory::MemoryLimit;
use crate::probe::ProbeOptions;
use crate::report::{csv_number, peak_rss_mib};
use crate::scoring::{self, ArchScores, Proxy, ScoreTable};

/// What a scoring command scores (all of it; [`run`] takes one shard's share).
pub struct Scoring<'a> {
    /// The command whose output the shards add up to (`score`, `baselines`, `nas`).
    pub command: &'a str,
    /// The benchmark.
    pub bench: &'a Benchmark,
    /// The whole run's selection (positions in the benchmark), in output order.
    pub selection: &'a [usize],
    /// The proxies, in output order.
    pub proxies: &'a [Proxy],
    /// The probe settings.
    pub opts: &'a ProbeOptions,
    /// Worker threads (architectures probed at once).
    pub threads: usize,
    /// A memory budget the probes take turns within ([`crate::models::probe_gate`]); `None`:
    /// only probing's own limit.
    pub turns: Option<MemoryLimit>,
    /// Where the benchmark comes from, when [`Source::of`] cannot tell (sampled
    /// architectures).
    pub source: Option<Source>,
    /// The command's own settings for its merge ([`super::file::RunOptions::task`]).
    pub task: Option<serde_json::Value>,
}

impl<'a> Scoring<'a> {
    /// The scoring of `proxies` on the `selection` of `bench` by `command`.
    pub fn new(
        command: &'a str,
        bench: &'a Benchmark,
        selection: &'a [usize],
        proxies: &'a [Proxy],
        opts: &'a ProbeOptions,
        threads: usize,
    ) -> Self {
        Self {
            command,
            bench,
            selection,
            proxies,
            opts,
            threads,
            turns: None,
            source: None,
            task: None,
        }
    }

    /// The same scoring, its probes taking turns within `turns` (see the field).
    pub fn within(mut self, turns: Option<MemoryLimit>) -> Self {
        self.turns = turns;
        self
    }

    /// Runs the whole scoring, unsharded ([`scoring::score_within`]); `on_done` after each
    /// architecture.
    pub fn score(&self, on_done: impl Fn() + Sync) -> Result<ScoreTable> {
        scoring::score_within(
            self.bench,
            self.selection,
            self.proxies,
            self.opts,
            self.threads,
            self.turns,
            on_done,
        )
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
        let mut probe = crate::models::family(self.bench.kind).settings(self.opts)?;
        probe["extra_passes"] = self.opts.extra_passes.into();
        let options = RunOptions {
            lpzero: env!("CARGO_PKG_VERSION").to_string(),
            command: self.command.to_string(),
            bench: self.bench.kind.name().to_string(),
            data: fingerprint(self.bench, self.selection),
            probe,
            proxies: self.proxies.iter().map(Proxy::name).collect(),
            selection: self.selection.to_vec(),
            keys: self
                .selection
                .iter()
                .map(|&i| self.bench.entries[i].key.clone())
                .collect(),
            has_truth: self.bench.has_truth(),
            task: self.task.clone(),
        };
        let source = self
            .source
            .clone()
            .unwrap_or_else(|| Source::of(self.bench));
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
    job: &Scoring,
    shard: Shard,
    out: &Path,
    on_done: impl Fn() + Sync,
) -> Result<ShardReport> {
    let start = Instant::now();
    scoring::refuse_rank_joins(job.proxies, "a sharded run (one architecture at a time)")?;
    let header = job.header(shard)?;
    let opened = ShardFile::open(out, &header)?;
    if opened.discarded_bytes > 0 {
        eprintln!(
            "warning: {}: discarded an incomplete last line ({} bytes, from a run that was \
             stopped while writing); its architecture is scored again",
            out.display(),
            opened.discarded_bytes
        );
    }
    let share = shard.share(job.selection);
    let done: std::collections::HashSet<usize> = opened.done.iter().copied().collect();
    let pending: Vec<usize> = share
        .iter()
        .copied()
        .filter(|i| !done.contains(i))
        .collect();
    let file = &opened.file;
    let scored = scoring::score_each(
        job.bench,
        &pending,
        job.proxies,
        job.opts,
        job.threads,
        job.turns,
        |index, scores| file.append(&record(job, index, scores)),
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
        command: job.command.to_string(),
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
fn record(job: &Scoring, index: usize, scores: &ArchScores) -> Record {
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
