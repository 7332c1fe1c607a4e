//! The run folder a search writes, and its search-curve plot.
//!
//! Files (all written by [`RunDir`]):
//! * `config.json`: the [`SearchOptions`];
//! * `log.jsonl`: one JSON object per iteration ([`IterationLog`]: iteration, best, median,
//!   child, child_key, child_fitness, rules_fired, ...);
//! * `hall_of_fame.json`: the best distinct proxies, best first;
//! * `curve.csv` (`iteration,best,median`, iteration 0 = the initial population) and `curve.svg`
//!   (a line plot of the same);
//! * `checkpoint.json`: every `checkpoint_every` iterations and at the end
//!   ([`super::checkpoint`]).
//!
//! On resume into a folder that already has a `log.jsonl`, lines past the checkpoint's iteration
//! (written after the last checkpoint by the interrupted run) are dropped, so the log reads like
//! the log of an uninterrupted run; a log that lacks some of the checkpoint's iterations is
//! refused (it does not belong to that checkpoint).
//!
//! Every file except the log is written whole or not at all ([`write_atomic`]); the log is
//! append-only and its write errors stop the run. A new run never reuses a folder that holds
//! files ([`claim`]) unless told to replace its run files.
//!
//! [`curve_svg`] draws the search curve with [`crate::svg`].

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::checkpoint::{self, CHECKPOINT_FILE};
use super::hall_of_fame::HallEntry;
use super::options::SearchOptions;
use super::{CurvePoint, SearchState};
use crate::report::{csv_number, json_number, write_atomic, write_csv_file};
use crate::svg::{close, padded_range, Frame};

/// The files a run writes into its folder (what [`claim`] replaces when told to overwrite).
pub const RUN_FILES: [&str; 9] = [
    "config.json",
    "log.jsonl",
    "hall_of_fame.json",
    "curve.csv",
    "curve.svg",
    "scatter.svg",
    "heldout.svg",
    "summary.json",
    CHECKPOINT_FILE,
];

/// Makes `dir` ready for a new run without losing an earlier one: a missing or empty folder is
/// fine; a folder holding anything is refused, unless `overwrite`, which deletes the
/// [`RUN_FILES`] it holds and those of its restart folders (`restart_<r>/`, removed when that
/// empties them; other files are left alone). Fails when `dir` is not a folder.
pub fn claim(dir: &Path, overwrite: bool) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("{}: exists and is not a folder", dir.display());
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the folder", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    if !overwrite {
        names.sort();
        let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        let more = if names.len() > 3 { ", …" } else { "" };
        bail!(
            "{}: the folder is not empty (it holds {}{more}); a new run there would replace \
             an earlier run's files",
            dir.display(),
            shown.join(", ")
        );
    }
    for name in RUN_FILES {
        let path = dir.join(name);
        if path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    let is_restart = |n: &str| {
        n.strip_prefix("restart_")
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    };
    for name in names.iter().filter(|n| is_restart(n)) {
        let sub = dir.join(name);
        if sub.is_dir() {
            claim(&sub, true)?;
            // Left in place when it still holds files that are not a run's.
            let _ = std::fs::remove_dir(&sub);
        }
    }
    Ok(())
}

/// True when `resume` (a run folder or a checkpoint file inside one) and `dir` name the same
/// folder.
pub fn same_folder(resume: &Path, dir: &Path) -> bool {
    let folder = if resume.is_dir() {
        resume
    } else {
        resume.parent().unwrap_or(Path::new("."))
    };
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    match (std::fs::canonicalize(folder), std::fs::canonicalize(dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// One line of `log.jsonl`: what happened in one iteration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IterationLog {
    /// The iteration (1-based).
    pub iteration: usize,
    /// Best population fitness after the iteration.
    pub best: f64,
    /// Median population fitness after the iteration.
    pub median: f64,
    /// The child's expression text.
    pub child: String,
    /// The child's canonical key.
    pub child_key: String,
    /// The child's fitness, `null` when a rule rejected it.
    pub child_fitness: Option<f64>,
    /// Names of the rules that rejected the child (empty when valid; at most one: the first).
    pub rules_fired: Vec<String>,
    /// Architectures the child was evaluated on.
    pub archs_evaluated: usize,
    /// Whether crossover fired.
    pub crossover: bool,
    /// Whether mutation fired.
    pub mutation: bool,
    /// Whether the child replaced the worst member.
    pub replaced_worst: bool,
}

/// An open run folder (see the module docs).
pub struct RunDir {
    dir: PathBuf,
    log: BufWriter<File>,
    /// How the fitness inputs were made (recorded in every checkpoint).
    inputs: serde_json::Value,
}

impl RunDir {
    /// Creates (or reuses) `dir`, writes `config.json` and opens `log.jsonl`: truncated for a new
    /// run, or cut back to the lines up to `resumed_at` when resuming from that iteration (an
    /// existing log must then hold every iteration up to it). `inputs` describes how the fitness
    /// inputs were made; checkpoints record it ([`checkpoint::save`]).
    pub fn create(
        dir: &Path,
        options: &SearchOptions,
        inputs: &serde_json::Value,
        resumed_at: Option<usize>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        write_atomic(
            &dir.join("config.json"),
            serde_json::to_string_pretty(options)?,
        )?;
        let log_path = dir.join("log.jsonl");
        let kept = match resumed_at {
            Some(last) => kept_log_lines(&log_path, last)?,
            None => String::new(),
        };
        write_atomic(&log_path, kept)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .with_context(|| format!("{}: cannot open", log_path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            log: BufWriter::new(file),
            inputs: inputs.clone(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one iteration to `log.jsonl` (buffered; flushed by [`RunDir::save`]).
    pub fn log(&mut self, record: &IterationLog) -> Result<()> {
        let line = serde_json::to_string(record)?;
        writeln!(self.log, "{line}").with_context(|| self.log_error())
    }

    /// The message of a failed write to `log.jsonl`.
    fn log_error(&self) -> String {
        format!("{}: cannot write", self.dir.join("log.jsonl").display())
    }

    /// Flushes the log and writes `hall_of_fame.json`, `curve.csv`, `curve.svg` and, when
    /// `with_checkpoint`, `checkpoint.json`.
    pub fn save(
        &mut self,
        options: &SearchOptions,
        truth: &[f64],
        state: &SearchState,
        with_checkpoint: bool,
    ) -> Result<()> {
        self.log.flush().with_context(|| self.log_error())?;
        write_hall_of_fame(
            &self.dir.join("hall_of_fame.json"),
            state.hall_of_fame.entries(),
        )?;
        write_curve_csv(&self.dir.join("curve.csv"), &state.curve)?;
        write_atomic(&self.dir.join("curve.svg"), curve_svg(&state.curve))?;
        if with_checkpoint {
            let path = self.dir.join(CHECKPOINT_FILE);
            checkpoint::save(&path, options, &self.inputs, truth, state)?;
        }
        Ok(())
    }
}

/// The lines of an existing log whose `iteration` is at most `last` (nothing when there is no
/// log). Fails when the log cannot be read or its kept lines are not iterations `1..=last` in
/// order.
fn kept_log_lines(path: &Path, last: usize) -> Result<String> {
    if !path.exists() {
        return Ok(String::new());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = String::new();
    let mut expected = 1;
    for line in text.lines() {
        let it = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("iteration").and_then(|i| i.as_u64()));
        match it {
            Some(i) if i as usize <= last => {
                if i as usize != expected {
                    bail!(
                        "{}: holds iteration {i} where iteration {expected} was expected; the \
                         log does not belong to the checkpoint (at iteration {last})",
                        path.display()
                    );
                }
                expected += 1;
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    if expected != last + 1 {
        bail!(
            "{}: holds iterations up to {} but the checkpoint is at iteration {last}; the log \
             does not belong to that checkpoint",
            path.display(),
            expected - 1
        );
    }
    Ok(out)
}

/// Writes the hall of fame as a JSON array (best first) with plain numbers.
pub fn write_hall_of_fame(path: &Path, entries: &[HallEntry]) -> Result<()> {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .enumerate()
        .map(|(rank, e)| {
            serde_json::json!({
                "rank": rank + 1,
                "expr": e.expr,
                "key": e.key,
                "fitness": json_number(e.fitness),
                "iteration": e.iteration,
                "restart": e.restart,
            })
        })
        .collect();
    write_atomic(path, serde_json::to_string_pretty(&list)?)
}

/// Writes `iteration,best,median` rows.
pub fn write_curve_csv(path: &Path, curve: &[CurvePoint]) -> Result<()> {
    let header = ["iteration", "best", "median"].map(String::from);
    let rows: Vec<Vec<String>> = curve
        .iter()
        .map(|c| {
            vec![
                c.iteration.to_string(),
                csv_number(c.best),
                csv_number(c.median),
            ]
        })
        .collect();
    write_csv_file(path, &header, &rows)
}

/// A curve series: name, colour, extra SVG attributes, value accessor.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CurvePoint) -> f64,
);

/// A line plot of the best and median population fitness per iteration.
pub fn curve_svg(curve: &[CurvePoint]) -> String {
    let x = if curve.is_empty() {
        (0.0, 1.0)
    } else {
        let lo = curve.first().map_or(0.0, |c| c.iteration as f64);
        let hi = curve.last().map_or(1.0, |c| c.iteration as f64);
        if hi > lo {
            (lo, hi)
        } else {
            (lo, lo + 1.0)
        }
    };
    let y = padded_range(curve.iter().flat_map(|c| [c.best, c.median]));
    let frame = Frame {
        width: 720.0,
        height: 440.0,
        left: 70.0,
        right: 130.0,
        top: 40.0,
        bottom: 55.0,
        x,
        y,
    };
    let mut s = frame.open(
        "Search progress",
        None,
        "iteration",
        "fitness (Spearman ρ on the fitness set)",
    );
    let series: [Series; 2] = [
        ("best", "#1f77b4", "", |c| c.best),
        ("median", "#ff7f0e", r#" stroke-dasharray="6 4""#, |c| {
            c.median
        }),
    ];
    for (i, (name, colour, dash, get)) in series.iter().enumerate() {
        let points: Vec<String> = curve
            .iter()
            .filter(|c| get(c).is_finite())
            .map(|c| {
                format!(
                    "{:.1},{:.1}",
                    frame.px(c.iteration as f64),
                    frame.py(get(c))
                )
            })
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                points.join(" ")
            );
        }
        let ly = frame.top + 10.0 + 20.0 * i as f64;
        let lx = frame.width - frame.right + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{name}</text>"#,
            lx + 30.0,
            lx + 36.0,
            ly + 4.0
        );
    }
    close(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_is_well_formed() {
        let curve: Vec<CurvePoint> = (0..20)
            .map(|i| CurvePoint {
                iteration: i,
                best: 0.5 + 0.02 * i as f64,
                median: 0.2 + 0.01 * i as f64,
            })
            .collect();
        let svg = curve_svg(&curve);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">iteration<") && svg.contains(">median<"));
        // Degenerate inputs do not panic.
        curve_svg(&[]);
        curve_svg(&curve[..1]);
    }
}
