//! The shard file: JSON Lines, written by one shard and read by its re-runs and by the merge.
//!
//! Line 1 is the [`Header`]: the format, the shard (`I/N`), the [`RunOptions`] (everything
//! that decides the values: command, benchmark fingerprint, probe settings, proxies,
//! selection) and `run`, their hash, which every shard of one run shares. Each further line
//! is a [`Record`]: one architecture's id, position in the benchmark, ground truth, proxy
//! values and timings. Numbers that end up in an output file (truth and values) are kept as
//! text in the CSV form of [`crate::report::csv_number`] (`nan`, `inf` included), so that they
//! come back bit for bit.
//!
//! A record is written whole with one `write` and synced to disk before the next one, so a
//! kill can only leave a cut last line (no newline yet). [`ShardFile::open`] discards such a
//! line and scores that architecture again; a complete line that does not parse is an error
//! (the file is damaged or not a shard file, and lpzero does not append to it).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::Shard;
use crate::bench::space::Sampling;
use crate::bench::{BenchKind, Benchmark, DataSource};
use crate::report::{clip, fnv1a64};

/// The `format` field of a shard header.
pub const FORMAT: &str = "lpzero-shard";
/// The version of the shard file layout this build writes and reads.
pub const VERSION: u64 = 1;

/// Everything that decides the values a shard writes. Two shards belong to the same run when
/// their options are equal (compared through [`Header::run`], their hash).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// The lpzero version that wrote the file.
    pub lpzero: String,
    /// The command: `score`, `baselines` or `nas`.
    pub command: String,
    /// The benchmark family.
    pub bench: String,
    /// [`fingerprint`] of the selected architectures.
    pub data: String,
    /// The probe settings ([`crate::models::Family::settings`]) and `extra_passes`.
    pub probe: serde_json::Value,
    /// Proxy names in output order.
    pub proxies: Vec<String>,
    /// The selected architectures (positions in the benchmark), in output order.
    pub selection: Vec<usize>,
    /// Their ids, parallel to `selection`.
    pub keys: Vec<String>,
    /// Whether the benchmark has a ground truth (else the CSV's truth column is empty).
    pub has_truth: bool,
    /// The command's own settings that its merge needs (`nas`: its options), when it has
    /// any; absent from the header otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<serde_json::Value>,
}

impl RunOptions {
    /// The run hash: FNV-1a of the options' JSON text, as `fnv1a64:<16 hex digits>`.
    pub fn hash(&self) -> Result<String> {
        let text = serde_json::to_string(self)?;
        Ok(format!("fnv1a64:{:016x}", fnv1a64(text.as_bytes())))
    }

    /// Position in `selection` of each selected architecture (keyed by its position in the
    /// benchmark).
    pub fn positions(&self) -> HashMap<usize, usize> {
        self.selection
            .iter()
            .enumerate()
            .map(|(pos, &i)| (i, pos))
            .collect()
    }

    /// How `other` differs from `self`, one `field: was X, now Y` item per differing field
    /// (the probe settings one by one), for messages.
    pub fn differences(&self, other: &RunOptions) -> Vec<String> {
        let flat = |o: &RunOptions| -> BTreeMap<String, String> {
            let mut map = BTreeMap::new();
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(o) {
                for (key, value) in fields {
                    match value {
                        serde_json::Value::Object(inner) => {
                            for (k, v) in inner {
                                map.insert(format!("{key}.{k}"), v.to_string());
                            }
                        }
                        v => {
                            map.insert(key, v.to_string());
                        }
                    }
                }
            }
            map
        };
        let (old, new) = (flat(self), flat(other));
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| old.get(*k) != new.get(*k))
            .map(|k| {
                let show = |v: Option<&String>| v.map_or("(none)".to_string(), |v| clip(v).into());
                format!("{k}: was {}, now {}", show(old.get(k)), show(new.get(k)))
            })
            .collect()
    }
}

/// Where the benchmark of a run came from, so that a merge can load it again (`baselines`
/// compares with the reference columns of its data folder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The copy built into lpzero.
    Embedded,
    /// A data folder (`--data-dir` or `$LPZERO_DATA`), as an absolute path.
    Dir {
        /// The folder.
        path: PathBuf,
    },
    /// A bench file (`--bench-file`), as an absolute path.
    BenchFile {
        /// The file.
        path: PathBuf,
    },
    /// Architectures drawn from the family's design space (`lpzero nas --space sample:N`),
    /// drawn again to load.
    Sampled {
        /// The draw.
        sampling: Sampling,
    },
}

impl Source {
    /// The source of a loaded benchmark (paths made absolute when possible).
    pub fn of(bench: &Benchmark) -> Self {
        let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        match &bench.data {
            Some(DataSource::Embedded) => Source::Embedded,
            Some(DataSource::Dir(dir)) => Source::Dir {
                path: absolute(dir),
            },
            None => Source::BenchFile {
                path: absolute(&bench.source),
            },
        }
    }

    /// Loads the benchmark again.
    pub fn load(&self, kind: BenchKind) -> Result<Benchmark> {
        match self {
            Source::Embedded => Benchmark::load(kind, &DataSource::Embedded),
            Source::Dir { path } => Benchmark::load(kind, &DataSource::dir(path)?),
            Source::BenchFile { path } => crate::models::load_bench_file(path),
            Source::Sampled { sampling } => {
                sampling.draw(crate::models::family(kind).design_space()?)
            }
        }
    }
}

/// The fingerprint of the selected architectures of `bench`: FNV-1a over the family, and
/// each architecture's position, id and ground truth (its bits), as `fnv1a64:<hex>`. Shards
/// of one run must agree on it; a merge checks a reloaded benchmark against it.
pub fn fingerprint(bench: &Benchmark, selection: &[usize]) -> String {
    let mut text = format!("{}\n", bench.kind.name());
    for &i in selection {
        let e = &bench.entries[i];
        text.push_str(&format!("{i}\t{}\t{:016x}\n", e.key, e.truth.to_bits()));
    }
    format!("fnv1a64:{:016x}", fnv1a64(text.as_bytes()))
}

/// The first line of a shard file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The layout version ([`VERSION`]).
    pub version: u64,
    /// The shard that wrote the file, `I/N`.
    pub shard: String,
    /// [`RunOptions::hash`] of `options`.
    pub run: String,
    /// What decides the values.
    pub options: RunOptions,
    /// Where the benchmark came from.
    pub source: Source,
}

impl Header {
    /// The header of a shard of the run described by `options`.
    pub fn new(shard: Shard, options: RunOptions, source: Source) -> Result<Self> {
        Ok(Self {
            format: FORMAT.to_string(),
            version: VERSION,
            shard: shard.to_string(),
            run: options.hash()?,
            options,
            source,
        })
    }
}

/// One architecture's line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The architecture's id (its key in the benchmark).
    pub id: String,
    /// Its position in the benchmark.
    pub index: usize,
    /// The oriented ground truth as CSV text, or `None` without a ground truth.
    pub truth: Option<String>,
    /// Proxy name → value as CSV text ([`crate::report::csv_number`]).
    pub values: BTreeMap<String, String>,
    /// Seconds of the probe (extra passes excluded).
    pub probe_seconds: f64,
    /// Proxy name → seconds spent computing it (its extra pass included).
    pub proxy_seconds: BTreeMap<String, f64>,
    /// Peak resident memory of the shard process so far, in MiB (Linux only).
    pub peak_rss_mib: Option<f64>,
}

impl Record {
    /// True when `other` holds the same truth and values (timings aside).
    pub fn same_values(&self, other: &Record) -> bool {
        self.id == other.id && self.truth == other.truth && self.values == other.values
    }

    /// Checks the record against the run's options: a selected architecture with its own id,
    /// a truth exactly when the run has one, and every proxy's value as a number. `at` names
    /// the file and line for messages.
    fn check(
        &self,
        options: &RunOptions,
        positions: &HashMap<usize, usize>,
        at: &str,
    ) -> Result<()> {
        let Some(&pos) = positions.get(&self.index) else {
            bail!(
                "{at}: architecture {} (position {}) is not in the run's selection",
                clip(&self.id),
                self.index
            );
        };
        if options.keys[pos] != self.id {
            bail!(
                "{at}: position {} holds architecture `{}` in the run, not `{}`",
                self.index,
                clip(&options.keys[pos]),
                clip(&self.id)
            );
        }
        if self.truth.is_some() != options.has_truth {
            bail!(
                "{at}: `truth` is {}, but the run {} a ground truth",
                if self.truth.is_some() {
                    "given"
                } else {
                    "null"
                },
                if options.has_truth { "has" } else { "has no" }
            );
        }
        let numbers = self.truth.iter().map(|t| ("truth", t));
        for name in &options.proxies {
            if !self.values.contains_key(name) {
                bail!("{at}: no value for proxy `{}`", clip(name));
            }
        }
        if let Some(extra) = self.values.keys().find(|k| !options.proxies.contains(k)) {
            bail!(
                "{at}: a value for `{}`, which the run does not compute",
                clip(extra)
            );
        }
        for (name, text) in numbers.chain(self.values.iter().map(|(k, v)| (k.as_str(), v))) {
            if text.parse::<f64>().is_err() {
                bail!(
                    "{at}: `{name}` is `{}`, expected a number (or nan, inf, -inf)",
                    clip(text)
                );
            }
        }
        Ok(())
    }
}

/// A shard file as read back: its header (None when not even the header line is complete),
/// its records with their line numbers, and the length of the complete part.
#[derive(Debug)]
pub struct Contents {
    /// The header line, when complete.
    pub header: Option<Header>,
    /// The records, with their 1-based line numbers.
    pub records: Vec<(usize, Record)>,
    /// Bytes up to the end of the last complete line.
    pub complete_len: u64,
    /// Bytes of a cut last line (0 when the file ends with a newline).
    pub cut_bytes: u64,
}

/// Reads a shard file: every complete line must parse (the header first, then records that
/// belong to its run); a cut last line is reported in [`Contents::cut_bytes`], not parsed.
pub fn read(path: &Path) -> Result<Contents> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut contents = Contents {
        header: None,
        records: Vec::new(),
        complete_len: complete_len as u64,
        cut_bytes: (bytes.len() - complete_len) as u64,
    };
    let mut positions = HashMap::new();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let lines = bytes[..complete_len]
        .strip_suffix(b"\n")
        .map(|body| body.split(|&b| b == b'\n'));
    for (n, line) in lines.into_iter().flatten().enumerate() {
        let number = n + 1;
        let at = format!("{}: line {number}", path.display());
        let text = std::str::from_utf8(line).with_context(|| format!("{at}: not UTF-8 text"))?;
        let Some(header) = &contents.header else {
            let header = parse_header(text)
                .with_context(|| format!("{at}: not the header of an lpzero shard file"))?;
            positions = header.options.positions();
            contents.header = Some(header);
            continue;
        };
        let record: Record = serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{at}: not an architecture record ({}); the file is damaged: move it away to \
                 score this shard again",
                clip(&e.to_string())
            )
        })?;
        record.check(&header.options, &positions, &at)?;
        if let Some(first) = seen.insert(record.index, number) {
            bail!(
                "{at}: architecture {} is already on line {first}; a shard writes each \
                 architecture once",
                clip(&record.id)
            );
        }
        contents.records.push((number, record));
    }
    Ok(contents)
}

/// Parses and checks a header line.
fn parse_header(text: &str) -> Result<Header> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{}", clip(&e.to_string())))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        bail!("expected a JSON object with \"format\": \"{FORMAT}\"");
    }
    if value.get("version").and_then(|v| v.as_u64()) != Some(VERSION) {
        bail!(
            "version {}, expected {VERSION} (written by another lpzero version)",
            value.get("version").unwrap_or(&serde_json::Value::Null)
        );
    }
    let header: Header =
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("{}", clip(&e.to_string())))?;
    if header.options.selection.len() != header.options.keys.len() {
        bail!("`options.selection` and `options.keys` differ in length");
    }
    if header.run != header.options.hash()? {
        bail!("`run` is not the hash of `options` (the header was edited)");
    }
    Ok(header)
}

/// A shard file open for appending records.
pub struct ShardFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// What [`ShardFile::open`] found.
pub struct Opened {
    /// The file, ready for [`ShardFile::append`].
    pub file: ShardFile,
    /// The positions in the benchmark of the architectures already in the file.
    pub done: Vec<usize>,
    /// Bytes of a cut last line that were discarded (0 when none).
    pub discarded_bytes: u64,
}

impl ShardFile {
    /// Opens `path` for the shard described by `header`. A missing or empty file (or one
    /// holding only a cut header) is started with the header. An existing file is resumed:
    /// its header must be this run's and this shard's (else an error names every setting that
    /// differs), its records are kept, and a cut last line is cut off.
    pub fn open(path: &Path, header: &Header) -> Result<Opened> {
        if path.is_dir() {
            bail!(
                "{}: is a folder; a shard is written to a JSON Lines file",
                path.display()
            );
        }
        let existing = if path.exists() {
            Some(read(path)?)
        } else {
            None
        };
        let mut done = Vec::new();
        let mut discarded_bytes = 0;
        match existing
            .as_ref()
            .and_then(|c| c.header.as_ref().map(|h| (c, h)))
        {
            Some((contents, old)) => {
                if old.run != header.run {
                    bail!(
                        "{}: holds a shard of another run, so it cannot be resumed: {}; use the \
                         settings of that run, or another output file",
                        path.display(),
                        old.options.differences(&header.options).join("; ")
                    );
                }
                if old.shard != header.shard {
                    bail!(
                        "{}: was written by shard {}, and this is shard {}; give each shard its \
                         own output file",
                        path.display(),
                        old.shard,
                        header.shard
                    );
                }
                done = contents.records.iter().map(|(_, r)| r.index).collect();
                discarded_bytes = contents.cut_bytes;
                if discarded_bytes > 0 {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_len(contents.complete_len).map(|()| f))
                        .and_then(|f| f.sync_all());
                    file.with_context(|| {
                        format!(
                            "{}: cannot cut off the incomplete last line",
                            path.display()
                        )
                    })?;
                }
            }
            None => {
                // No complete header: a new file, or one whose first write was cut. Anything
                // else is not overwritten.
                let head = existing
                    .as_ref()
                    .map_or(Ok(Vec::new()), |_| std::fs::read(path));
                let head = head.with_context(|| format!("{}: cannot read", path.display()))?;
                let start = format!("{{\"format\":\"{FORMAT}\"");
                let n = head.len().min(start.len());
                if head[..n] != start.as_bytes()[..n] {
                    bail!(
                        "{}: exists and is not an lpzero shard file; a shard is written to its \
                         own JSON Lines file (choose a new path, or remove this file)",
                        path.display()
                    );
                }
                let mut text = serde_json::to_string(header)?;
                text.push('\n');
                if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(folder)
                        .with_context(|| format!("{}: cannot create folder", folder.display()))?;
                }
                let written = File::create(path)
                    .and_then(|mut f| f.write_all(text.as_bytes()).map(|()| f))
                    .and_then(|f| f.sync_all());
                written.with_context(|| format!("{}: cannot write the header", path.display()))?;
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        Ok(Opened {
            file: ShardFile {
                path: path.to_path_buf(),
                file: Mutex::new(file),
            },
            done,
            discarded_bytes,
        })
    }

    /// Appends one record as one line and syncs it to disk; an error names the file and the
    /// architecture.
    pub fn append(&self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("{}: a writer panicked", self.path.display()))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| {
                format!(
                    "{}: cannot append architecture {}",
                    self.path.display(),
                    clip(&record.id)
                )
            })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
