//! Merging shard files into the unsharded run's table.
//!
//! [`read`] loads every file, checks that all belong to one run (same [`Header::run`]),
//! places each record at its position in the run's selection, and reports what is missing
//! and what is there twice. A duplicate with the same values (the same shard file given
//! twice, or overlapping shard counts) is kept once and reported; a duplicate with other
//! values is an error. [`Merged::table`] then rebuilds the [`ScoreTable`] of the unsharded
//! run: the same keys, truth and values in the same order, and the same correlations, so
//! every output written from it is the unsharded command's, byte for byte. Only timings
//! differ: they are sums over the shards' architectures (see [`Merged::table`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::file::{self, Header, Record};
use crate::report::{self, clip};
use crate::scoring::{summarize, Proxy, ScoreTable};

/// An architecture found twice with the same values.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Duplicate {
    /// The architecture's id.
    pub id: String,
    /// Where it was kept (`FILE:LINE`).
    pub kept: String,
    /// Where it was found again (`FILE:LINE`).
    pub again: String,
}

/// The records of a set of shard files, placed in the run's selection order.
pub struct Merged {
    /// The header of the first file (all files share its run).
    pub header: Header,
    /// The files, in the order given.
    pub files: Vec<PathBuf>,
    /// Per selection position, the record and where it came from (`FILE:LINE`).
    records: Vec<Option<(Record, String)>>,
    /// Architectures found more than once with the same values.
    pub duplicates: Vec<Duplicate>,
    /// Files that end in a cut line (a shard stopped while writing), with the cut's size.
    pub cut: Vec<(PathBuf, u64)>,
}

/// Reads shard files and merges their records (see the module docs). Fails on a file that
/// is not a shard file, on files of different runs (naming each setting that differs), on a
/// file given twice, and on an architecture with two different values.
pub fn read(files: &[PathBuf]) -> Result<Merged> {
    let Some(first_path) = files.first() else {
        bail!("no shard file given; expected the JSON Lines files of every shard");
    };
    let mut seen_paths: Vec<PathBuf> = Vec::new();
    let mut merged: Option<Merged> = None;
    for path in files {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        if seen_paths.contains(&canonical) {
            bail!("{}: given twice", path.display());
        }
        seen_paths.push(canonical);
        let contents = file::read(path)?;
        let Some(header) = contents.header else {
            bail!(
                "{}: has no complete header line: its shard stopped before it wrote anything \
                 (re-run it), or this is not a shard file",
                path.display()
            );
        };
        let m = merged.get_or_insert_with(|| Merged {
            records: vec![None; header.options.selection.len()],
            header: header.clone(),
            files: Vec::new(),
            duplicates: Vec::new(),
            cut: Vec::new(),
        });
        if header.run != m.header.run {
            bail!(
                "{} and {} belong to different runs: {}",
                first_path.display(),
                path.display(),
                m.header.options.differences(&header.options).join("; ")
            );
        }
        m.files.push(path.clone());
        if contents.cut_bytes > 0 {
            m.cut.push((path.clone(), contents.cut_bytes));
        }
        let positions = m.header.options.positions();
        for (line, record) in contents.records {
            let at = format!("{}:{line}", path.display());
            let pos = positions[&record.index];
            match &m.records[pos] {
                None => m.records[pos] = Some((record, at)),
                Some((kept, kept_at)) if kept.same_values(&record) => {
                    m.duplicates.push(Duplicate {
                        id: record.id.clone(),
                        kept: kept_at.clone(),
                        again: at,
                    });
                }
                Some((kept, kept_at)) => bail!(
                    "architecture {} has different values in {kept_at} and {at} ({}); these \
                     files do not come from one run",
                    clip(&record.id),
                    first_difference(kept, &record)
                ),
            }
        }
    }
    merged.context("no shard file given")
}

/// The first field in which two records of one architecture differ, for messages.
fn first_difference(a: &Record, b: &Record) -> String {
    if a.truth != b.truth {
        return format!("truth {:?} vs {:?}", a.truth, b.truth);
    }
    for (name, x) in &a.values {
        let y = b.values.get(name);
        if y != Some(x) {
            return format!(
                "{}: {} vs {}",
                clip(name),
                x,
                y.map_or("none", String::as_str)
            );
        }
    }
    "the same values".to_string()
}

impl Merged {
    /// Ids of the selected architectures that no file holds, in selection order.
    pub fn missing(&self) -> Vec<&str> {
        self.missing_positions()
            .map(|pos| self.header.options.keys[pos].as_str())
            .collect()
    }

    /// Selection positions that no file holds.
    fn missing_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none())
            .map(|(pos, _)| pos)
    }

    /// Number of architectures the merged files hold (each counted once).
    pub fn found(&self) -> usize {
        self.records.iter().filter(|r| r.is_some()).count()
    }

    /// Which shards of the first file's shard count hold the missing architectures (`I/N`),
    /// for messages; empty when nothing is missing.
    pub fn shards_with_missing(&self) -> Vec<String> {
        let Some(count) = self
            .header
            .shard
            .split_once('/')
            .and_then(|(_, n)| n.parse::<usize>().ok())
            .filter(|&n| n > 0)
        else {
            return Vec::new();
        };
        let mut shards: Vec<usize> = self.missing_positions().map(|pos| pos % count).collect();
        shards.sort_unstable();
        shards.dedup();
        shards.iter().map(|i| format!("{i}/{count}")).collect()
    }

    /// The unsharded run's table. Keys, truth, values, names and correlations are those of
    /// the unsharded run. Timings: `arch_probe_seconds` and `proxy_seconds` come from the
    /// shards' records (so they are the sums an unsharded run reports, measured on other
    /// processes); `seconds`, which for an unsharded run is its wall time, is the compute
    /// time `probe_seconds + Σ proxy_seconds` (shards run in parallel, so the merged run has
    /// no single wall time). Fails when an architecture is missing.
    pub fn table(&self) -> Result<ScoreTable> {
        let missing = self.missing();
        if !missing.is_empty() {
            bail!(
                "{} of {} architectures are missing: {}",
                missing.len(),
                self.records.len(),
                clip(&missing.join(", "))
            );
        }
        let options = &self.header.options;
        let records: Vec<&Record> = self.records.iter().flatten().map(|(r, _)| r).collect();
        let number = |text: &str| text.parse::<f64>().unwrap_or(f64::NAN);
        let truth: Vec<f64> = records
            .iter()
            .map(|r| r.truth.as_deref().map_or(f64::NAN, number))
            .collect();
        let mut values = Vec::with_capacity(options.proxies.len());
        let mut summaries = Vec::with_capacity(options.proxies.len());
        let mut proxy_seconds = Vec::with_capacity(options.proxies.len());
        for name in &options.proxies {
            let proxy = Proxy::parse(name).with_context(|| {
                format!(
                    "the shards' proxy `{}` is unknown to this lpzero",
                    clip(name)
                )
            })?;
            let vals: Vec<f64> = records.iter().map(|r| number(&r.values[name])).collect();
            summaries.push(summarize(name, proxy.orientation(), &truth, &vals));
            values.push(vals);
            proxy_seconds.push(
                records
                    .iter()
                    .map(|r| r.proxy_seconds.get(name).unwrap_or(&0.0))
                    .sum(),
            );
        }
        let arch_probe_seconds: Vec<f64> = records.iter().map(|r| r.probe_seconds).collect();
        let probe_seconds: f64 = arch_probe_seconds.iter().sum();
        let seconds = probe_seconds + proxy_seconds.iter().sum::<f64>();
        Ok(ScoreTable {
            keys: options.keys.clone(),
            truth,
            values,
            names: options.proxies.clone(),
            summaries,
            probe_seconds,
            arch_probe_seconds,
            proxy_seconds,
            seconds,
        })
    }

    /// The largest peak resident memory any shard recorded, in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.records
            .iter()
            .flatten()
            .filter_map(|(r, _)| r.peak_rss_mib)
            .reduce(f64::max)
    }
}

/// Writes the merged `baselines` output into `dir`, as `lpzero baselines` does
/// ([`crate::baselines::write`]), from the table of merged shards; the benchmark is loaded
/// again from where the shards read it (for the reference columns) and must have their
/// fingerprint. In `baselines.json`, `peak_rss_mib` is the largest any shard recorded and
/// `threads` is 1 (the timings are compute time, see [`Merged::table`]).
pub fn write_baselines(merged: &Merged, table: &ScoreTable, dir: &Path) -> Result<()> {
    let bench = merged.load_bench()?;
    let agreement = crate::baselines::reference_agreement(&bench, table)?;
    crate::baselines::write(dir, &bench, table, &agreement, 1)?;
    let path = dir.join("baselines.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read back", path.display()))?;
    let mut summary: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: cannot read back", path.display()))?;
    summary["peak_rss_mib"] = merged
        .peak_rss_mib()
        .map_or(serde_json::Value::Null, report::json_number);
    report::write_atomic(&path, serde_json::to_string_pretty(&summary)?)
}

impl Merged {
    /// The benchmark the shards scored, loaded again from where their header says they read
    /// it; fails unless it has their fingerprint (the same architectures and truth).
    pub fn load_bench(&self) -> Result<crate::bench::Benchmark> {
        let header = &self.header;
        let kind = crate::models::kind_named(&header.options.bench)
            .with_context(|| format!("unknown benchmark `{}`", clip(&header.options.bench)))?;
        let bench = header.source.load(kind).with_context(|| {
            format!(
                "cannot load the benchmark the shards scored (recorded in their header as {}); \
             run the merge where it can be read",
                serde_json::to_string(&header.source).unwrap_or_default()
            )
        })?;
        if bench.len() <= header.options.selection.iter().copied().max().unwrap_or(0)
            || file::fingerprint(&bench, &header.options.selection) != header.options.data
        {
            bail!(
                "the benchmark at {} is not the one the shards scored (its architectures or \
             ground truth differ)",
                bench.source.display()
            );
        }
        Ok(bench)
    }
}
