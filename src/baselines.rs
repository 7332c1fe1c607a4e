//! The baseline suite: every published human-designed proxy that applies to a benchmark,
//! computed from one probe per architecture (plus the extra passes some definitions need),
//! in one table: what a discovered proxy is compared against.
//!
//! `lpzero baselines` runs a [`crate::scoring::Job`] on [`suite`] and writes the files of
//! [`write()`]. When the benchmark's family has a table of reference proxy values
//! ([`crate::models::Family::reference`]; FlexiBERT's `flexibert/reference_proxy_scores.csv`)
//! and the benchmark's data source holds it (the shipped data does), each proxy with a column
//! there also gets the Spearman ρ between its values and that column ([`reference_agreement`]).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::bench::{BenchKind, Benchmark};
use crate::models;
use crate::report::{self, json_number};
use crate::scoring::{Proxy, ScoreTable, TruthColumn};
use crate::stats;

/// The suite in report order (proxies that do not apply to a family are left out by
/// [`suite`]).
pub const SUITE: &[&str] = &[
    "params",
    "decoder_params",
    "grad_norm",
    "snip",
    "grasp",
    "fisher",
    "synflow",
    "logsynflow",
    "jacob_cov",
    "jacob_cov_relu",
    "eznas",
    "activation_distance",
    "synaptic_diversity",
    "synaptic_saliency",
    "head_importance",
    "head_confidence",
    "head_softmax_confidence",
    "attention_confidence",
    "jacobian_cosine",
    "jacobian_score",
    "w_pca",
];

/// The suite's proxies that apply to `kind`, minus those named in `skip`.
pub fn suite(kind: BenchKind, skip: &[String]) -> Result<Vec<Proxy>> {
    for name in skip {
        if !SUITE.contains(&name.as_str()) {
            bail!(
                "`{name}` is not in the baseline suite ({})",
                SUITE.join(", ")
            );
        }
    }
    let mut out = Vec::new();
    for name in SUITE {
        if skip.iter().any(|s| s == name) {
            continue;
        }
        if let Proxy::Builtin(b) = Proxy::parse(name)? {
            if b.applies_to(kind) {
                out.push(Proxy::Builtin(b));
            }
        }
    }
    Ok(out)
}

/// The column of the reference table of `kind`'s benchmark that `proxy` is checked against,
/// if the family has such a table and the proxy a column there.
pub fn reference_column(kind: BenchKind, proxy: &str) -> Option<&'static str> {
    models::family(kind).reference()?.column(proxy)
}

/// Spearman ρ between each proxy's values and its reference column, per proxy (None: no
/// column, or no reference table for the family, or none in the benchmark's data source).
pub fn reference_agreement(bench: &Benchmark, table: &ScoreTable) -> Result<Vec<Option<f64>>> {
    let none = vec![None; table.names.len()];
    let Some(reference) = models::family(bench.kind).reference() else {
        return Ok(none);
    };
    let Some(data) = &bench.data else {
        return Ok(none);
    };
    let Some(text) = data.read_optional(reference.file)? else {
        return Ok(none);
    };
    let path = data.name(reference.file);
    let columns = parse_reference(&text, &path)?;
    let mut out = Vec::with_capacity(table.names.len());
    for (name, values) in table.names.iter().zip(&table.values) {
        let Some(col) = reference.column(name) else {
            out.push(None);
            continue;
        };
        let Some(reference) = columns.get(col) else {
            bail!("{}: no column `{col}`", path.display());
        };
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for (key, &v) in table.keys.iter().zip(values) {
            let r = reference
                .get(key)
                .with_context(|| format!("{}: no row with ID {key}", path.display()))?;
            ours.push(v);
            theirs.push(*r);
        }
        let (ours, _) = stats::sanitize(&ours);
        let (theirs, _) = stats::sanitize(&theirs);
        out.push(Some(stats::spearman(&theirs, &ours)));
    }
    Ok(out)
}

/// Column name → (ID → value) of the reference CSV `text` (`path` names it in errors).
fn parse_reference(text: &str, path: &Path) -> Result<HashMap<String, HashMap<String, f64>>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .with_context(|| format!("{}: empty file, expected a header row", path.display()))?
        .split(',')
        .collect();
    if header.first() != Some(&"ID") {
        bail!("{}: the first column must be `ID`", path.display());
    }
    let mut columns: HashMap<String, HashMap<String, f64>> = header[1..]
        .iter()
        .map(|h| (h.to_string(), HashMap::new()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            bail!(
                "{}: line {} has {} fields, expected {}",
                path.display(),
                n + 2,
                fields.len(),
                header.len()
            );
        }
        if !seen.insert(fields[0].trim()) {
            bail!(
                "{}: line {}: ID `{}` appears on an earlier line too; expected one row per \
                 architecture",
                path.display(),
                n + 2,
                fields[0].trim()
            );
        }
        for (h, f) in header[1..].iter().zip(&fields[1..]) {
            let v: f64 = f.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "{}: line {}, column `{h}`: `{f}` is not a number",
                    path.display(),
                    n + 2
                )
            })?;
            if let Some(col) = columns.get_mut(*h) {
                col.insert(fields[0].trim().to_string(), v);
            }
        }
    }
    Ok(columns)
}

/// Writes `baselines.md`, `baselines.json`, `baselines.csv` (per-architecture values, header
/// `id,<proxy>,...`) and `baselines.svg` (ρ per proxy) into `dir`, each whole or not at all
/// ([`report::write_atomic`]).
pub fn write(
    dir: &Path,
    bench: &Benchmark,
    table: &ScoreTable,
    agreement: &[Option<f64>],
    threads: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    table.write_csv(&dir.join("baselines.csv"), TruthColumn::Omit)?;

    let proxy_total: f64 = table.proxy_seconds.iter().sum();
    let entries: Vec<_> = table
        .summaries
        .iter()
        .zip(&table.proxy_seconds)
        .zip(agreement)
        .map(|((s, secs), agree)| {
            json!({
                "proxy": s.proxy, "orientation": s.orientation, "n": s.n,
                "spearman": json_number(s.spearman), "kendall": json_number(s.kendall),
                "top10_overlap": json_number(s.top10_overlap), "non_finite": s.non_finite,
                "seconds": secs,
                "reference_column": reference_column(bench.kind, &s.proxy).filter(|_| agree.is_some()),
                "reference_spearman": agree.map(json_number),
            })
        })
        .collect();
    let times = &table.arch_probe_seconds;
    let order = stats::argsort_desc(times);
    let (fastest, slowest) = (order.last().copied(), order.first().copied());
    let arch_time = |i: Option<usize>| i.map(|i| json!({"id": table.keys[i], "seconds": times[i]}));
    let summary = json!({
        "bench": bench.kind.name(),
        "truth": bench.truth_name,
        "n": table.keys.len(),
        "threads": threads,
        "wall_seconds": table.seconds,
        "probe_seconds": table.probe_seconds,
        "proxy_seconds": proxy_total,
        "probe_seconds_per_arch": {
            "median": json_number(stats::median(times)),
            "fastest": arch_time(fastest),
            "slowest": arch_time(slowest),
            "by_id": table.keys.iter().zip(times).map(|(k, t)| (k.clone(), json!(t))).collect::<serde_json::Map<_, _>>(),
        },
        "peak_rss_mib": report::peak_rss_mib(),
        "proxies": entries,
    });
    report::write_atomic(
        &dir.join("baselines.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;

    let mut md = format!(
        "# Baselines on {} ({} architectures, ground truth {})\n\n\
         ρ and τ: Spearman and Kendall τ-b between the ground truth (higher = better) and the raw\n\
         proxy value; a lower-is-better proxy is good when negative. Top-10 %: overlap of the\n\
         top-10 % sets (proxy oriented). Non-finite values rank last. Seconds: computing the\n\
         proxy, summed over architectures, including its extra pass.\n\n",
        bench.kind,
        table.keys.len(),
        bench.truth_name
    );
    let with_ref = agreement.iter().any(Option::is_some);
    md.push_str("| proxy | orientation | ρ | τ | top-10 % | non-finite | seconds |");
    if with_ref {
        md.push_str(" ρ vs reference column |");
    }
    md.push_str("\n|---|---|---|---|---|---|---|");
    if with_ref {
        md.push_str("---|");
    }
    md.push('\n');
    for ((s, secs), agree) in table
        .summaries
        .iter()
        .zip(&table.proxy_seconds)
        .zip(agreement)
    {
        let orient = match s.orientation {
            crate::proxy::builtin::Orientation::HigherIsBetter => "higher",
            crate::proxy::builtin::Orientation::LowerIsBetter => "lower",
        };
        md.push_str(&format!(
            "| {} | {orient} | {:.4} | {:.4} | {:.3} | {} | {:.1} |",
            s.proxy, s.spearman, s.kendall, s.top10_overlap, s.non_finite, secs
        ));
        if with_ref {
            match agree {
                Some(a) => md.push_str(&format!(
                    " {a:.3} ({}) |",
                    reference_column(bench.kind, &s.proxy).unwrap_or("")
                )),
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\nWall time {:.1} s on {threads} worker thread(s). Summed over threads: probing {:.1} s, \
         proxy computation {:.1} s ({:.0} % of the two).\n",
        table.seconds,
        table.probe_seconds,
        proxy_total,
        100.0 * proxy_total / (proxy_total + table.probe_seconds).max(1e-9)
    ));
    if let (Some(f), Some(s)) = (fastest, slowest) {
        md.push_str(&format!(
            "Probe per architecture (extra passes excluded): median {:.2} s, fastest {} ({:.2} s), \
             slowest {} ({:.2} s).\n",
            stats::median(times),
            table.keys[f],
            times[f],
            table.keys[s],
            times[s]
        ));
    }
    report::write_atomic(&dir.join("baselines.md"), md)?;

    let title = format!(
        "Spearman ρ of each baseline on {} ({} architectures)",
        bench.kind,
        table.keys.len()
    );
    let bars: Vec<(String, f64)> = table
        .summaries
        .iter()
        .map(|s| (s.proxy.clone(), s.spearman))
        .collect();
    report::write_atomic(
        &dir.join("baselines.svg"),
        crate::svg::bar_chart(&title, &bars),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_filters_by_family_and_skip() {
        let flex: Vec<String> = suite(crate::bench::flexibert::KIND, &[])
            .unwrap()
            .iter()
            .map(Proxy::name)
            .collect();
        assert!(!flex.contains(&"decoder_params".to_string()));
        assert_eq!(flex.len(), SUITE.len() - 1);
        let gpt2 = crate::bench::gpt2::KIND;
        let gpt2 = suite(gpt2, &["synaptic_diversity".into()]).unwrap();
        assert_eq!(gpt2.len(), SUITE.len() - 1);
        assert!(suite(crate::bench::gpt2::KIND, &["nope".into()]).is_err());
    }

    #[test]
    fn every_suite_name_is_a_builtin() {
        for name in SUITE {
            assert!(
                crate::proxy::builtin::find(name).is_some(),
                "{name} is not a built-in proxy"
            );
        }
    }

    #[test]
    fn reference_rows_are_read_once_per_id() {
        let path = Path::new("ref.csv");
        let table = parse_reference("ID,Head Confidence\n0,1.5\n1,2.5\n", path).unwrap();
        assert_eq!(table["Head Confidence"]["1"], 2.5);
        let e = parse_reference("ID,Head Confidence\n0,1.5\n1,2.5\n0,9\n", path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ref.csv: line 4: ID `0`"), "{e}");
    }
}
