//! Command-line interface: clap definitions and wiring only.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use lpzero::bench::{self, BenchKind, Benchmark};
use lpzero::models::flexibert::SizeMode;
use lpzero::probe::{GradSignal, ProbeOptions, DEFAULT_BATCH, DEFAULT_SEQ_LEN};
use lpzero::report;
use lpzero::scoring::{self, Proxy};

/// lpzero: discover zero-cost proxies for language-model NAS (LPZero) and use them.
#[derive(Parser)]
#[command(name = "lpzero", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parameter count of every architecture, counted from the built models.
    Params(ParamsArgs),
    /// Score architectures with one or more proxies and correlate with the ground truth.
    Score(ScoreArgs),
    /// Measure probe speed and memory (a benchmark, not a test).
    Bench(BenchArgs),
}

/// Options shared by every command that reads a benchmark.
#[derive(Args, Clone)]
struct DataArgs {
    /// Benchmark family.
    #[arg(long, value_enum, default_value_t = BenchKind::Flexibert)]
    bench: BenchKind,
    /// Folder holding the benchmarks (else $LPZERO_DATA, else ../shared/benchmarks).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// How each architecture is probed.
#[derive(Args, Clone)]
struct ProbeArgs {
    /// Rows of the probe batch.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = DEFAULT_SEQ_LEN)]
    seq_len: usize,
    /// Seed of weights, batch, dropout and projection vector.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backward signal for gradient-based proxies.
    #[arg(long, value_enum, default_value_t = GradSignal::Projection)]
    grad_signal: GradSignal,
    /// FlexiBERT sizes: reference-faithful (H=256, FFN 1024) or the JSON's intended sizes.
    #[arg(long, value_enum, default_value_t = SizeMode::Faithful)]
    sizes: SizeMode,
    /// Dropout p = 0.1 during the probe (the reference's training mode).
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    dropout: OnOff,
    /// Token ids (whitespace separated) to use instead of the synthetic batch.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Worker threads (architectures probed in parallel); default: all cores.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl ProbeArgs {
    fn options(&self) -> Result<ProbeOptions> {
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        Ok(ProbeOptions {
            batch: self.batch,
            seq_len: self.seq_len,
            seed: self.seed,
            grad_signal: self.grad_signal,
            sizes: self.sizes,
            dropout: self.dropout == OnOff::On,
            corpus: self.corpus.clone(),
        })
    }

    fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Csv,
    Json,
}

#[derive(Args)]
struct ParamsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// FlexiBERT sizes.
    #[arg(long, value_enum, default_value_t = SizeMode::Faithful)]
    sizes: SizeMode,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// Architectures (e.g. `0..50`, `7`, `all`).
    #[arg(long, default_value = "all")]
    archs: String,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Proxy name, a comma-separated list, or `all`.
    #[arg(long)]
    proxy: String,
    /// Architectures (e.g. `0..50`, `0..10,42`, `all`).
    #[arg(long, default_value = "all")]
    archs: String,
    /// Write per-architecture values as CSV (`id,truth,<proxy>...`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print exactly one JSON object (the summary) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Architectures to probe (timed as a whole).
    #[arg(long, default_value = "all")]
    archs: String,
    /// Also time the calibration encoder (4 SA-SDP layers, B=32, T=128, H=256, FFN 1024).
    #[arg(long)]
    calibration: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Params(a) => params(a),
        Command::Score(a) => score(a),
        Command::Bench(a) => bench_cmd(a),
    }
}

fn load(data: &DataArgs) -> Result<Benchmark> {
    let dir = bench::resolve_data_dir(data.data_dir.as_deref())?;
    Benchmark::load(data.bench, &dir)
}

fn params(a: ParamsArgs) -> Result<()> {
    let bench = load(&a.data)?;
    let selection = bench::parse_selection(&a.archs, bench.len())?;
    let counts = lpzero::params::count(&bench, &selection, a.sizes)?;
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Csv => {
            writeln!(out, "id,total")?;
            for (key, total) in &counts {
                writeln!(out, "{},{total}", report::csv_field(key))?;
            }
        }
        Format::Json => {
            let rows: Vec<_> = counts
                .iter()
                .map(|(k, t)| serde_json::json!({"id": k, "total": t}))
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
    }
    Ok(())
}

fn set_engine_threads(workers: usize) {
    // Parallelise across architectures, not inside one: each worker runs the engine
    // single-threaded unless the user chose otherwise.
    if workers > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

fn score(a: ScoreArgs) -> Result<()> {
    let bench = load(&a.data)?;
    let selection = bench::parse_selection(&a.archs, bench.len())?;
    let proxies = Proxy::parse_list(&a.proxy)?;
    let opts = a.probe.options()?;
    let threads = a.probe.threads();
    set_engine_threads(threads);
    let bar = report::progress(selection.len(), "probing", a.json);
    let table = scoring::score(&bench, &selection, &proxies, &opts, threads, || bar.inc(1))?;
    bar.finish_and_clear();
    if let Some(path) = &a.out {
        let mut header = vec!["id".to_string(), "truth".to_string()];
        header.extend(table.names.iter().cloned());
        let rows: Vec<Vec<String>> = (0..table.keys.len())
            .map(|i| {
                let mut row = vec![table.keys[i].clone(), report::csv_number(table.truth[i])];
                row.extend(table.values.iter().map(|v| report::csv_number(v[i])));
                row
            })
            .collect();
        report::write_csv_file(path, &header, &rows)?;
    }
    if a.json {
        let value = if table.summaries.len() == 1 {
            let s = &table.summaries[0];
            serde_json::json!({
                "bench": bench.kind.name(), "proxy": s.proxy, "n": s.n,
                "kendall": report::json_number(s.kendall), "spearman": report::json_number(s.spearman),
                "seconds": table.seconds, "non_finite": s.non_finite, "top10_overlap": report::json_number(s.top10_overlap),
                "orientation": s.orientation,
            })
        } else {
            serde_json::json!({
                "bench": bench.kind.name(), "n": table.keys.len(), "seconds": table.seconds,
                "proxies": table.summaries.iter().map(|s| serde_json::json!({
                    "proxy": s.proxy, "kendall": report::json_number(s.kendall),
                    "spearman": report::json_number(s.spearman), "non_finite": s.non_finite,
                    "top10_overlap": report::json_number(s.top10_overlap), "orientation": s.orientation,
                })).collect::<Vec<_>>(),
            })
        };
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!(
            "{} architectures of {} ({}), {:.1} s",
            table.keys.len(),
            bench.kind,
            bench.truth_name,
            table.seconds
        );
        println!(
            "{:<36} {:>9} {:>9} {:>8} {:>6}",
            "proxy", "spearman", "kendall", "top10%", "nan"
        );
        for s in &table.summaries {
            println!(
                "{:<36} {:>9.4} {:>9.4} {:>8.3} {:>6}",
                s.proxy, s.spearman, s.kendall, s.top10_overlap, s.non_finite
            );
        }
    }
    Ok(())
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let bench = load(&a.data)?;
    let selection = bench::parse_selection(&a.archs, bench.len())?;
    let opts = a.probe.options()?;
    let threads = a.probe.threads();
    let mut result = serde_json::json!({
        "bench": bench.kind.name(), "n": selection.len(), "threads": threads,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "batch": opts.batch, "seq_len": opts.seq_len,
    });
    if a.calibration {
        let secs = lpzero::probe::calibration_seconds(3)?;
        result["calibration_forward_backward_seconds"] = serde_json::json!(secs);
        if !a.json {
            eprintln!("calibration encoder (4×SA-SDP, B=32, T=128, H=256, FFN 1024): median {secs:.3} s per forward+backward");
        }
    }
    // The calibration above uses every core inside one model; the sweep below parallelises
    // across architectures.
    set_engine_threads(threads);
    let proxies = Proxy::parse_list("all")?;
    let bar = report::progress(selection.len(), "probing", a.json);
    let start = Instant::now();
    let table = scoring::score(&bench, &selection, &proxies, &opts, threads, || bar.inc(1))?;
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    result["wall_seconds"] = serde_json::json!(wall);
    result["probe_seconds_sum"] = serde_json::json!(table.probe_seconds);
    result["per_arch_seconds_mean"] =
        serde_json::json!(table.probe_seconds / selection.len() as f64);
    result["peak_rss_mib"] = serde_json::json!(lpzero::report::peak_rss_mib());
    if a.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&result).context("json")?);
    }
    Ok(())
}
