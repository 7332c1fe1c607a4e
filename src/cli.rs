//! Command-line interface: clap definitions and wiring only.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use lpzero::bench::{self, BenchKind, Benchmark, DataSource};
use lpzero::models;
use lpzero::models::flexibert::SizeMode;
use lpzero::probe::{GradSignal, ProbeOptions, Storage, MAX_THREADS};
use lpzero::report;
use lpzero::scoring::{self, Job, Proxy};
use lpzero::search::pipeline::Phase;
use lpzero::search::summary::SearchSummary;
use lpzero::search::SearchOptions;
use lpzero::shard::run::Scoring;

use crate::out;

mod export;
mod nas;
mod shard;
mod subnet;
mod subnet_search;

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
    /// Search for a proxy with genetic programming (LPZero) and evaluate it on held-out
    /// architectures.
    Search(SearchArgs),
    /// Every published human-designed proxy on a benchmark in one table (Markdown, JSON, CSV,
    /// SVG), from one probe per architecture plus the extra passes some proxies need.
    Baselines(BaselinesArgs),
    /// Measure probe speed and memory (a benchmark, not a test).
    Bench(BenchArgs),
    /// Ranking-quality study: the search on several random fitness splits, each compared on
    /// its held-out architectures with every baseline and the pair ensemble.
    Study(StudyArgs),
    /// Join the JSON Lines files of a sharded `score` or `baselines` run (`--shard`) into
    /// exactly what the unsharded command writes; report missing and duplicate architectures.
    Merge(shard::MergeArgs),
    /// Write an expression as a self-contained PyTorch function or a LaTeX formula.
    Export(export::ExportArgs),
    /// Architecture search with a proxy: rank the benchmark's architectures or new ones drawn
    /// from the family's design space (optionally evolved) under parameter and latency
    /// budgets; write the top K in the benchmark's format and the Pareto front.
    Nas(nas::NasArgs),
    /// Sub-networks of a pretrained Llama (LoNAS space): parameter counts, proxy scores, and
    /// the NSGA-II search of proxy against parameters.
    Subnet(subnet::SubnetArgs),
}

/// Options shared by every command that reads a benchmark.
#[derive(Args, Clone)]
struct DataArgs {
    /// Benchmark family [default: flexibert, or the family of --bench-file].
    #[arg(long, value_parser = bench_kind_parser())]
    bench: Option<BenchKind>,
    /// Folder holding the benchmarks, laid out as the repository's data/ (else
    /// $LPZERO_DATA, else the copy built into lpzero).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Your own architectures instead of a shipped benchmark: a JSON Lines file, one record
    /// per line ({"id", "family", "config", "truth", "higher_is_better"}; see the README).
    #[arg(long, conflicts_with = "data_dir")]
    bench_file: Option<PathBuf>,
}

/// How each architecture is probed.
#[derive(Args, Clone)]
struct ProbeArgs {
    /// Rows of the probe batch [default: flexibert 2, gpt2 16].
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per row [default: flexibert 128, gpt2 192].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Seed of weights, batch, dropout and projection vector.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backward signal for gradient-based proxies (FlexiBERT) [default: projection].
    #[arg(long, value_enum)]
    grad_signal: Option<GradSignalArg>,
    /// FlexiBERT sizes: the JSON's intended sizes (the networks that were trained) or the
    /// reference-faithful H=256, FFN 1024 [default: intended].
    #[arg(long, value_enum)]
    sizes: Option<SizesArg>,
    /// Dropout p = 0.1 during the probe (the reference's training mode).
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    dropout: OnOff,
    /// Token ids (whitespace separated) to use instead of the synthetic batch.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// How each probe's arrays are kept once computed: f32, or bf16 (half the memory of a
    /// search's fitness set; every proxy and expression then reads the rounded values)
    /// [default: f32; a search or study whose fitness set in f32 would need more than twice
    /// --memory-budget: bf16].
    #[arg(long, value_enum)]
    probe_storage: Option<StorageArg>,
    /// Worker threads (architectures probed in parallel; `search` also evaluates each candidate
    /// on the fitness architectures with this many threads); default: all cores.
    #[arg(long)]
    threads: Option<usize>,
}

/// `search --fitness-sign`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FitnessSign {
    /// Fitness ρ: only proxies that rank like the ground truth score well.
    Oriented,
    /// Fitness |ρ|: proxies that rank backwards score well too (reported negated).
    Either,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl OnOff {
    /// `on` for true.
    fn from_bool(on: bool) -> Self {
        if on {
            OnOff::On
        } else {
            OnOff::Off
        }
    }
}

/// A command-line value enum for a library enum with the same variants (clap's derive stays
/// out of the library): the enum, with the variants' docs as their help, and its conversions
/// both ways (the library's default becomes the flag's).
macro_rules! value_enum_for {
    ($(#[$doc:meta])* $name:ident => $lib:ident { $($(#[$vdoc:meta])* $variant:ident,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
        enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl From<$name> for $lib {
            fn from(arg: $name) -> Self {
                match arg {
                    $($name::$variant => $lib::$variant,)+
                }
            }
        }

        impl From<$lib> for $name {
            fn from(value: $lib) -> Self {
                match value {
                    $($lib::$variant => $name::$variant,)+
                }
            }
        }
    };
}

value_enum_for! {
    /// `--grad-signal`: the values of [`GradSignal`].
    GradSignalArg => GradSignal {
        /// The reference's loss: the sum of the last hidden state. Degenerate on the post-LN
        /// encoder (the last LayerNorm makes it constant), so gradients are rounding noise.
        Faithful,
        /// Σ ⟨last hidden, r⟩ with a fixed seeded Gaussian `r`: real gradients.
        Projection,
    }
}

value_enum_for! {
    /// `--sizes`: the values of [`SizeMode`].
    SizesArg => SizeMode {
        /// The reference's sizes (FlexiBERT: H = 256 and FFN width 1024 for every record,
        /// which reproduces the reference parameter counts).
        Faithful,
        /// The sizes the record states (FlexiBERT: its `hidden_size` and per-layer
        /// `feed_forward_dimension`): the networks that were trained.
        Intended,
    }
}

value_enum_for! {
    /// `--probe-storage`: the values of [`Storage`].
    StorageArg => Storage {
        /// Full f32 values, as computed.
        F32,
        /// bfloat16 values: half the memory, the f32 range, ≤ 2^-9 relative error each.
        Bf16,
    }
}

/// `--bench`: the name of a registered family (the help lists them).
fn bench_kind_parser() -> impl clap::builder::TypedValueParser<Value = BenchKind> {
    let names: Vec<&'static str> = models::kinds().into_iter().map(BenchKind::name).collect();
    clap::builder::PossibleValuesParser::new(names)
        .map(|name: String| models::kind_named(&name).expect("every possible value is a family"))
}

impl ProbeArgs {
    fn options(&self, kind: BenchKind) -> Result<ProbeOptions> {
        let family = models::family(kind);
        let (batch, seq_len) = family.default_batch_shape();
        for (flag, name, given) in [
            ("--grad-signal", "grad_signal", self.grad_signal.is_some()),
            ("--sizes", "sizes", self.sizes.is_some()),
        ] {
            if given && !family.option_names().contains(&name) {
                eprintln!("warning: {flag} does not apply to {kind}; it is ignored");
            }
        }
        let opts = ProbeOptions {
            batch: self.batch.unwrap_or(batch),
            seq_len: self.seq_len.unwrap_or(seq_len),
            seed: self.seed,
            grad_signal: self
                .grad_signal
                .map_or_else(GradSignal::default, Into::into),
            sizes: self.sizes.map_or_else(SizeMode::default, Into::into),
            dropout: self.dropout == OnOff::On,
            corpus: self.corpus.clone(),
            extra_passes: false,
            storage: self.probe_storage.map_or_else(Storage::default, Into::into),
            pass: Default::default(),
            diversity_ahead: false,
        };
        family
            .validate(&opts)
            .context("invalid probe options (--batch, --seq-len)")?;
        Ok(opts)
    }

    /// `--threads`, else every core; at least 1 and at most [`MAX_THREADS`].
    fn threads(&self) -> Result<usize> {
        match self.threads {
            Some(n) if !(1..=MAX_THREADS).contains(&n) => bail!(
                "--threads {n}: expected 1..={MAX_THREADS} worker threads (default: one per core)"
            ),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
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
    /// FlexiBERT sizes: intended (the JSON's sizes) or faithful (the reference's H=256,
    /// FFN 1024, which reproduce the reference's parameter column).
    #[arg(long, value_enum, default_value_t = SizesArg::from(SizeMode::default()))]
    sizes: SizesArg,
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
    #[command(flatten)]
    budget: ScoringBudgetArgs,
    /// Proxy name, expression, or a list of them separated by `,` or `;` (outside
    /// parentheses); `all` (also as a list item) = every single-pass built-in and the family's
    /// published genotypes.
    #[arg(long)]
    proxy: String,
    /// Add a column `rank_sum`: the sum of every listed proxy's rank (each by its orientation,
    /// non-finite values last) over the scored architectures, higher = better. This is how a
    /// search's combined ensemble (`proxy_list` in its summary) scores new architectures; the
    /// CSV's column can then drive `nas --scores FILE --proxy rank_sum`.
    #[arg(long)]
    rank_sum: bool,
    /// Architectures (e.g. `0..50`, `0..10,42`, `all`).
    #[arg(long, default_value = "all")]
    archs: String,
    /// Write per-architecture values as CSV (`id,truth,<proxy>...`); with --shard, the
    /// shard's JSON Lines file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print exactly one JSON object (the summary) on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    shard: shard::ShardArgs,
}

#[derive(Args)]
struct BaselinesArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    budget: ScoringBudgetArgs,
    /// Architectures (e.g. `0..50`, `0..10,42`, `all`).
    #[arg(long, default_value = "all")]
    archs: String,
    /// Output folder for baselines.{md,json,csv,svg} [default: baselines-<bench>]; with
    /// --shard, the shard's JSON Lines file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Comma-separated proxies of the suite to leave out (e.g. `synaptic_diversity`).
    #[arg(long, default_value = "")]
    skip: String,
    /// More proxies to rank alongside the suite, as for `score --proxy`: genotype names or
    /// expressions (e.g. `lpzero_gpt2`, or a discovered proxy's text).
    #[arg(long = "with")]
    with: Option<String>,
    /// Print the summary (baselines.json) on stdout instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    shard: shard::ShardArgs,
}

/// The genetic-programming options shared by `search` and `study`.
#[derive(Args, Clone)]
struct GpArgs {
    /// Population size.
    #[arg(long, default_value_t = SearchOptions::default().population)]
    population: usize,
    /// Iterations (one child per iteration).
    #[arg(long, default_value_t = SearchOptions::default().iterations)]
    iterations: usize,
    /// Proxy structure: extended (the default), tree (the reference template), linear,
    /// graph or free.
    #[arg(long, default_value_t = SearchOptions::default().structure.to_string())]
    structure: String,
    /// Unary operations per branch (tree and extended structures).
    #[arg(long, default_value_t = SearchOptions::default().n_unary)]
    n_unary: usize,
    /// Extended structure: probability that a branch starts from an element-wise pair of
    /// inputs such as `mul(weight, grad)` (0: none).
    #[arg(long, default_value_t = SearchOptions::default().pairs)]
    pairs: f64,
    /// Extended structure: probability that the two branches are joined by their ranks across
    /// the scored architectures (`rank_add`, a rank-sum ensemble inside the proxy) instead of
    /// by value (0: never).
    #[arg(long, default_value_t = SearchOptions::default().rank_join)]
    rank_join: f64,
    /// Complement search: a candidate's fitness is that of the rank sum of its values and the
    /// two baselines of the pair ensemble (chosen on the same fitness set), so the search looks
    /// for what the pair misses; `complement_ensemble` in the summary is the result.
    #[arg(long)]
    complement: bool,
    /// Which proxies count as good: `oriented` (fitness ρ against the ground truth, higher is
    /// better) or `either` (fitness |ρ|; a backward proxy enters the hall of fame as `neg(…)`).
    #[arg(long, value_enum, default_value_t = if SearchOptions::default().either_sign { FitnessSign::Either } else { FitnessSign::Oriented })]
    fitness_sign: FitnessSign,
    /// How the values on the fitness set become a fitness: `kendall` (τ-b, the default),
    /// `spearman` (the reference) or `robust` (mean ρ over 20 fixed random halves minus their
    /// spread).
    #[arg(long, default_value_t = SearchOptions::default().fitness.to_string())]
    fitness: String,
    /// Parsimony pressure: fitness lowered by this much per node of the expression.
    #[arg(long, default_value_t = SearchOptions::default().parsimony)]
    parsimony: f64,
    /// Rule-based pruning on or off.
    #[arg(long, value_enum, default_value_t = OnOff::from_bool(SearchOptions::default().rps.enabled))]
    rps: OnOff,
    /// Pruning rules to switch off, comma separated (e.g. `predictive,duplicate`).
    #[arg(long, default_value = "")]
    rps_disable: String,
    /// Checkpoint every N iterations (with --out).
    #[arg(long, default_value_t = SearchOptions::default().checkpoint_every)]
    checkpoint_every: usize,
    /// Independent GP runs on the fitness set (seeds derived from --seed); the one with the
    /// best fitness is reported and the hall of fame merges all of them. With --out each run
    /// has its folder `restart_<r>/`.
    #[arg(long, default_value_t = SearchOptions::default().restarts)]
    restarts: usize,
}

impl GpArgs {
    /// The search options these flags describe, with the GP seeded by `seed`.
    fn options(&self, seed: u64, threads: usize) -> Result<lpzero::search::SearchOptions> {
        use lpzero::search::{FitnessMeasure, Rule, Structure};
        let structure: Structure = self
            .structure
            .parse()
            .map_err(|e| anyhow::anyhow!("--structure: {e}"))?;
        let fitness: FitnessMeasure = self
            .fitness
            .parse()
            .map_err(|e| anyhow::anyhow!("--fitness: {e}"))?;
        let mut opts = SearchOptions {
            population: self.population,
            iterations: self.iterations,
            structure,
            n_unary: self.n_unary,
            pairs: self.pairs,
            rank_join: self.rank_join,
            complement: self.complement,
            seed,
            checkpoint_every: self.checkpoint_every,
            threads,
            either_sign: self.fitness_sign == FitnessSign::Either,
            fitness,
            parsimony: self.parsimony,
            restarts: self.restarts,
            ..SearchOptions::default()
        };
        opts.rps.enabled = self.rps == OnOff::On;
        for name in self
            .rps_disable
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let rule: Rule = name
                .parse()
                .map_err(|e| anyhow::anyhow!("--rps-disable: {e}"))?;
            opts.rps.disabled_rules.push(rule);
        }
        opts.validate().context("invalid search options")?;
        Ok(opts)
    }
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    gp: GpArgs,
    /// Seed of the probes (weights, batch, dropout); default: --seed. Fixing it while
    /// varying --seed varies only the search and its fitness sample.
    #[arg(long)]
    probe_seed: Option<u64>,
    #[command(flatten)]
    spill: SpillArgs,
    /// Fitness architectures: a range (`0..50`) or `random:N` (drawn with --seed); every
    /// other architecture is held out.
    #[arg(long, default_value = "0..50")]
    fitness_archs: String,
    /// Held-out evaluation of the hall of fame after the search.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    heldout: OnOff,
    /// Run directory: config, log, hall of fame, curves, plots, checkpoints, summary.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an interrupted run from its directory (results equal an uninterrupted run).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Replace the run files of an existing --out directory (without it such a directory is
    /// refused, so an earlier run is never lost by accident).
    #[arg(long)]
    overwrite: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Where a search keeps its fitness probes (`search`, `study`).
#[derive(Args)]
struct SpillArgs {
    /// Keep the fitness probes' arrays in a file in this directory instead of memory (the
    /// same values, read back at every evaluation; the system caches the file in memory it
    /// has to spare). For fitness sets larger than the memory the search may use (GPT-2 at
    /// 16 × 192: about 210 MB per architecture as bf16). Use a directory on disk (not a
    /// RAM-backed tmpfs). The file is removed when the search ends.
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Memory the search aims to stay within, in GB (10⁹ bytes), or `none`. Fitness probes
    /// stay in memory while they fit in it less the memo budget and 2 GiB; the others go to a
    /// spill file (in --spill-dir, else the system's temporary folder; the same values). When
    /// the fitness set in f32 would need more than twice the budget (GPT-2 at 16 × 192), it is
    /// kept as bf16 unless --probe-storage says otherwise. Probes take turns within it.
    #[arg(long, value_name = "GB", default_value = "6", value_parser = parse_budget)]
    memory_budget: BudgetArg,
}

/// The memory budget of a command that only scores (`score`, `baselines`, `nas`): nothing is
/// held between probes, so the budget is all the probes' turns.
#[derive(Args)]
struct ScoringBudgetArgs {
    /// Memory probing aims to stay within, in GB (10⁹ bytes), or `none`: architectures are
    /// probed at the same time only while their estimated needs fit in it together (the
    /// largest first, smaller ones beside it); one that needs more runs alone. Values do not
    /// depend on it, only how many probes run at once (a GPT-2 probe at 16 × 192 with the
    /// extra passes needs 1.2–3.5 GB; a FlexiBERT probe well under 1 GB).
    #[arg(long, value_name = "GB", default_value = "4", value_parser = parse_budget)]
    memory_budget: BudgetArg,
}

impl ScoringBudgetArgs {
    /// The limit the probes take turns within, if any.
    fn turns(&self) -> Option<lpzero::probe::memory::MemoryLimit> {
        self.memory_budget.0.map(|b| b.limit())
    }
}

/// `--memory-budget`: a budget, or none.
#[derive(Clone, Copy)]
struct BudgetArg(Option<lpzero::search::budget::MemoryBudget>);

fn parse_budget(text: &str) -> Result<BudgetArg, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(BudgetArg(None));
    }
    let gb: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of GB (such as 6) or `none`, got `{text}`"))?;
    lpzero::search::budget::MemoryBudget::gb(gb)
        .map(|b| BudgetArg(Some(b)))
        .map_err(|e| e.to_string())
}

impl SpillArgs {
    /// The probe options of a search or study of `n` fitness architectures: `probe` with the
    /// storage the budget implies when --probe-storage was not given.
    fn fitness_probe(
        &self,
        bench: &Benchmark,
        n: usize,
        given: Option<StorageArg>,
        probe: ProbeOptions,
    ) -> Result<ProbeOptions> {
        let storage = match given {
            Some(s) => s.into(),
            None => {
                lpzero::search::budget::fitness_storage(bench, n, &probe, self.memory_budget.0)?
            }
        };
        if given.is_none() && storage != probe.storage {
            eprintln!(
                "note: the fitness set would need more than twice the memory budget as f32; its \
                 probes are kept as {} (--probe-storage f32 keeps them as computed)",
                storage.name()
            );
        }
        Ok(ProbeOptions { storage, ..probe })
    }
}

#[derive(Args)]
struct StudyArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    gp: GpArgs,
    #[command(flatten)]
    spill: SpillArgs,
    /// Number of random fitness splits; split k uses seed --seed + k for its fitness sample
    /// and its search. The probes use --probe-seed for every split.
    #[arg(long, default_value_t = 5)]
    splits: usize,
    /// Fitness architectures per split.
    #[arg(long, default_value_t = 50)]
    fitness_n: usize,
    /// Seed of the probes shared by every split.
    #[arg(long, default_value_t = 0)]
    probe_seed: u64,
    /// Study folder: study.{json,md,csv,svg} and one run folder per split.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print study.json on stdout instead of the table.
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
    /// Time the calibration encoder only (implies --calibration; no architecture is probed).
    #[arg(long)]
    calibration_only: bool,
    /// Timed probes of the calibration encoder (the median is reported).
    #[arg(long, default_value_t = 3)]
    calibration_reps: usize,
    /// Proxies computed from the probes (as `score --proxy`); those with extra passes add
    /// them to the probes.
    #[arg(long, default_value = "all")]
    proxy: String,
    /// How each probe's forward and backward pass runs (the same values either way): by
    /// blocks where the family can (GPT-2 and FlexiBERT without dropout; the default of every command), or
    /// the whole graph at once (to measure the difference).
    #[arg(long, value_enum, default_value_t = PassArg::ByBlocks)]
    pass: PassArg,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `lpzero bench --pass`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum PassArg {
    /// Block by block, each block recomputed for its backward (less memory).
    ByBlocks,
    /// The whole graph at once.
    Whole,
}

impl From<PassArg> for lpzero::probe::PassMode {
    fn from(p: PassArg) -> Self {
        match p {
            PassArg::ByBlocks => Self::ByBlocks,
            PassArg::Whole => Self::Whole,
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Params(a) => params(a),
        Command::Score(a) => score(a),
        Command::Search(a) => search(a),
        Command::Baselines(a) => baselines(a),
        Command::Bench(a) => bench_cmd(a),
        Command::Study(a) => study(a),
        Command::Merge(a) => shard::merge(a),
        Command::Export(a) => export::export(a),
        Command::Nas(a) => nas::nas(a),
        Command::Subnet(a) => subnet::subnet(a),
    }
}

fn load(data: &DataArgs) -> Result<Benchmark> {
    if let Some(file) = &data.bench_file {
        let bench = models::load_bench_file(file).context("--bench-file")?;
        if let Some(kind) = data.bench.filter(|&k| k != bench.kind) {
            bail!(
                "--bench {kind} conflicts with --bench-file {}, whose records are {}; leave \
                 --bench out (the file names its family)",
                file.display(),
                bench.kind
            );
        }
        return Ok(bench);
    }
    let source = match &data.data_dir {
        Some(dir) => DataSource::dir(dir).context("--data-dir")?,
        None => DataSource::resolve(None)?,
    };
    Benchmark::load(data.bench.unwrap_or(bench::flexibert::KIND), &source)
}

/// Stops a command that ranks proxies against the ground truth when the architectures have
/// none (a bench file without `truth`).
fn require_truth(bench: &Benchmark, command: &str) -> Result<()> {
    if !bench.has_truth() {
        bail!(
            "{}: the records have no `truth`, and `lpzero {command}` ranks proxies against it; \
             add `truth` and `higher_is_better` to every record, or use `lpzero score` for the \
             proxy values alone",
            bench.source.display()
        );
    }
    Ok(())
}

fn params(a: ParamsArgs) -> Result<()> {
    let bench = load(&a.data)?;
    let selection = bench::parse_selection(&a.archs, bench.len()).context("--archs")?;
    let counts = lpzero::params::count_columns(&bench, &selection, a.sizes.into())?;
    let text = match a.format {
        Format::Csv => {
            let mut header = vec!["id".to_string(), "total".to_string()];
            if let Some(first) = counts.first() {
                header.extend(first.columns.iter().map(|(name, _)| name.to_string()));
            }
            let rows: Vec<Vec<String>> = counts
                .iter()
                .map(|c| {
                    let mut row = vec![c.key.clone(), c.total.to_string()];
                    row.extend(c.columns.iter().map(|(_, v)| v.to_string()));
                    row
                })
                .collect();
            let mut csv = Vec::new();
            report::write_csv(&mut csv, &header, &rows)?;
            String::from_utf8(csv)?
        }
        Format::Json => {
            let rows: Vec<_> = counts
                .iter()
                .map(|c| {
                    let mut o = serde_json::json!({"id": c.key, "total": c.total});
                    for (name, v) in &c.columns {
                        o[*name] = serde_json::json!(v);
                    }
                    o
                })
                .collect();
            serde_json::to_string_pretty(&rows)? + "\n"
        }
    };
    out::line(text.trim_end())
}

fn set_engine_threads(workers: usize) {
    // Parallelise across architectures, not inside one: each worker runs the engine
    // single-threaded unless the user chose otherwise.
    if workers > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

fn score(a: ScoreArgs) -> Result<()> {
    let sharded = a.shard.resolve()?;
    let bench = load(&a.data)?;
    let selection = bench::parse_selection(&a.archs, bench.len()).context("--archs")?;
    let proxies = Proxy::parse_list(&a.proxy, bench.kind).context("--proxy")?;
    let opts = a.probe.options(bench.kind)?;
    let threads = a.probe.threads()?;
    set_engine_threads(threads);
    let job = Job::new(&bench, &selection, &proxies, &opts, threads).within(a.budget.turns());
    if let Some(s) = sharded {
        if a.rank_sum {
            bail!(
                "--rank-sum ranks every scored architecture together, so it cannot run per \
                 shard: merge the shards (`lpzero merge`), then sum the ranks of the merged \
                 table's columns, or score without --shard"
            );
        }
        return shard::score_shard(&Scoring::new("score", job), s, a.out.as_deref(), a.json);
    }
    let bar = report::progress(selection.len(), "probing", a.json);
    let mut table = job.score(|| bar.inc(1))?;
    bar.finish_and_clear();
    if a.rank_sum {
        table.add_rank_sum(&proxies).context("--rank-sum")?;
    }
    let has_truth = bench.has_truth();
    // Without a ground truth the truth column stays empty.
    let truth = scoring::TruthColumn::for_truth(has_truth);
    if let Some(path) = &a.out {
        table.write_csv(path, truth)?;
    }
    if a.json {
        // Besides the oriented correlations, the raw ones against the benchmark's own column
        // (GPT-2: `valid_ppl`, so the sign flips). Without a ground truth all are null.
        let (raw_name, sign) = bench.raw_truth;
        let proxy_json = |s: &scoring::ProxySummary| {
            serde_json::json!({
                "proxy": s.proxy, "kendall": report::json_number(s.kendall),
                "spearman": report::json_number(s.spearman), "non_finite": s.non_finite,
                "top10_overlap": report::json_number(s.top10_overlap), "orientation": s.orientation,
                "raw_truth": raw_name,
                "spearman_raw": report::json_number(sign * s.spearman),
                "kendall_raw": report::json_number(sign * s.kendall),
            })
        };
        let value = if table.summaries.len() == 1 {
            let mut v = proxy_json(&table.summaries[0]);
            v["bench"] = serde_json::json!(bench.kind.name());
            v["n"] = serde_json::json!(table.summaries[0].n);
            v["seconds"] = serde_json::json!(table.seconds);
            v
        } else {
            serde_json::json!({
                "bench": bench.kind.name(), "n": table.keys.len(), "seconds": table.seconds,
                "proxies": table.summaries.iter().map(proxy_json).collect::<Vec<_>>(),
            })
        };
        out::line(serde_json::to_string(&value)?)?;
    } else if !has_truth {
        // Nothing to correlate: the values themselves, as the CSV has them.
        out::line(format_args!(
            "{} architectures of {} ({}; no ground truth, so no correlations), {:.1} s",
            table.keys.len(),
            bench.source.display(),
            bench.kind,
            table.seconds
        ))?;
        out::line(table.csv(truth).trim_end())?;
    } else {
        out::line(format_args!(
            "{} architectures of {} ({}), {:.1} s",
            table.keys.len(),
            bench.kind,
            bench.truth_name,
            table.seconds
        ))?;
        correlation_table(&table.summaries)?;
    }
    Ok(())
}

/// Prints the correlation of each proxy with the ground truth, one row per proxy.
fn correlation_table(summaries: &[scoring::ProxySummary]) -> Result<()> {
    out::line(format_args!(
        "{:<36} {:>9} {:>9} {:>8} {:>6}",
        "proxy", "spearman", "kendall", "top10%", "nan"
    ))?;
    for s in summaries {
        out::line(format_args!(
            "{:<36} {:>9.4} {:>9.4} {:>8.3} {:>6}",
            s.proxy, s.spearman, s.kendall, s.top10_overlap, s.non_finite
        ))?;
    }
    Ok(())
}

fn baselines(a: BaselinesArgs) -> Result<()> {
    let sharded = a.shard.resolve()?;
    let bench = load(&a.data)?;
    require_truth(&bench, "baselines")?;
    let selection = bench::parse_selection(&a.archs, bench.len()).context("--archs")?;
    let skip: Vec<String> = a
        .skip
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut proxies = lpzero::baselines::suite(bench.kind, &skip).context("--skip")?;
    if let Some(extra) = &a.with {
        proxies.extend(Proxy::parse_list(extra, bench.kind).context("--with")?);
    }
    let opts = ProbeOptions {
        extra_passes: true,
        ..a.probe.options(bench.kind)?
    };
    let threads = a.probe.threads()?;
    set_engine_threads(threads);
    let job = Job::new(&bench, &selection, &proxies, &opts, threads).within(a.budget.turns());
    if let Some(s) = sharded {
        let what = Scoring::new("baselines", job);
        return shard::score_shard(&what, s, a.out.as_deref(), a.json);
    }
    let bar = report::progress(selection.len(), "probing", a.json);
    let table = job.score(|| bar.inc(1))?;
    bar.finish_and_clear();
    let agreement = lpzero::baselines::reference_agreement(&bench, &table)?;
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("baselines-{}", bench.kind.name())));
    lpzero::baselines::write(&dir, &bench, &table, &agreement, threads)?;
    if a.json {
        let text = std::fs::read_to_string(dir.join("baselines.json"))
            .with_context(|| format!("{}: cannot read back baselines.json", dir.display()))?;
        out::line(text.trim_end())?;
    } else {
        let md = std::fs::read_to_string(dir.join("baselines.md"))
            .with_context(|| format!("{}: cannot read back baselines.md", dir.display()))?;
        out::line(md.trim_end())?;
        eprintln!("wrote {}/baselines.{{md,json,csv,svg}}", dir.display());
    }
    Ok(())
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let bench = load(&a.data)?;
    let selection = bench::parse_selection(&a.archs, bench.len()).context("--archs")?;
    let opts = ProbeOptions {
        pass: a.pass.into(),
        ..a.probe.options(bench.kind)?
    };
    let threads = a.probe.threads()?;
    let mut result = serde_json::json!({
        "bench": bench.kind.name(), "threads": threads,
        "pass": a.pass.to_possible_value().map(|v| v.get_name().to_string()),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    if a.calibration || a.calibration_only {
        let secs = models::flexibert::calibration_seconds(a.calibration_reps)?;
        result["calibration_forward_backward_seconds"] = serde_json::json!(secs);
        result["calibration_peak_rss_mib"] = serde_json::json!(report::peak_rss_mib());
        if !a.json {
            eprintln!("calibration encoder (4×SA-SDP, B=32, T=128, H=256, FFN 1024): median {secs:.3} s per forward+backward");
        }
        if a.calibration_only {
            return bench_print(&result, a.json);
        }
        // The sweep's peak is its own.
        report::reset_peak_rss();
    }
    result["n"] = serde_json::json!(selection.len());
    result["batch"] = serde_json::json!(opts.batch);
    result["seq_len"] = serde_json::json!(opts.seq_len);
    // The calibration above uses every core inside one model; the sweep below parallelises
    // across architectures.
    set_engine_threads(threads);
    let proxies = Proxy::parse_list(&a.proxy, bench.kind).context("--proxy")?;
    let bar = report::progress(selection.len(), "probing", a.json);
    let start = Instant::now();
    let table = Job::new(&bench, &selection, &proxies, &opts, threads).score(|| bar.inc(1))?;
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    result["wall_seconds"] = serde_json::json!(wall);
    result["probe_seconds_sum"] = serde_json::json!(table.probe_seconds);
    result["per_arch_seconds_mean"] =
        serde_json::json!(table.probe_seconds / selection.len() as f64);
    let times = &table.arch_probe_seconds;
    result["per_arch_seconds_median"] = serde_json::json!(lpzero::stats::median(times));
    let order = lpzero::stats::argsort_desc(times);
    for (name, i) in [("fastest", order.last()), ("slowest", order.first())] {
        if let Some(&i) = i {
            result[name] = serde_json::json!({"id": table.keys[i], "seconds": times[i]});
        }
    }
    result["proxy_seconds_sum"] = serde_json::json!(table.proxy_seconds.iter().sum::<f64>());
    let per_proxy: serde_json::Map<String, serde_json::Value> = table
        .names
        .iter()
        .zip(&table.proxy_seconds)
        .map(|(n, s)| (n.clone(), serde_json::json!(s)))
        .collect();
    result["proxy_seconds"] = serde_json::Value::Object(per_proxy);
    result["peak_rss_mib"] = serde_json::json!(report::peak_rss_mib());
    bench_print(&result, a.json)
}

/// Prints `lpzero bench`'s result: one JSON line with `--json`, pretty-printed otherwise.
fn bench_print(result: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        out::line(serde_json::to_string(result)?)
    } else {
        out::line(serde_json::to_string_pretty(result)?)
    }
}

fn search(a: SearchArgs) -> Result<()> {
    use lpzero::search::pipeline;
    let bench = load(&a.data)?;
    require_truth(&bench, "search")?;
    let seed = a.probe.seed;
    let probe = ProbeOptions {
        seed: a.probe_seed.unwrap_or(seed),
        ..a.probe.options(bench.kind)?
    };
    let fitness = bench::parse_sample(&a.fitness_archs, bench.len(), seed)
        .with_context(|| "--fitness-archs".to_string())?;
    let probe = a
        .spill
        .fitness_probe(&bench, fitness.len(), a.probe.probe_storage, probe)?;
    let heldout: Vec<usize> = match a.heldout {
        OnOff::On => (0..bench.len()).filter(|i| !fitness.contains(i)).collect(),
        OnOff::Off => Vec::new(),
    };
    let opts = a.gp.options(seed, a.probe.threads()?)?;
    let threads = opts.threads;
    set_engine_threads(threads);
    let out = a.out.clone().or_else(|| a.resume.clone());
    if let Some(dir) = &a.out {
        let resumed_here = a
            .resume
            .as_deref()
            .is_some_and(|r| lpzero::search::rundir::same_folder(r, dir));
        if !resumed_here {
            lpzero::search::rundir::claim(dir, a.overwrite).with_context(|| {
                format!(
                    "--out {}: pass --resume {} to continue that run, --overwrite to replace \
                     it, or choose another folder",
                    dir.display(),
                    dir.display()
                )
            })?;
        }
    }
    let bars = [
        report::progress(fitness.len(), "probing fitness set", a.json),
        report::progress(a.gp.iterations * a.gp.restarts, "searching", a.json),
        report::progress(heldout.len(), "held-out evaluation", a.json),
    ];
    let job = pipeline::SearchJob {
        bench: &bench,
        fitness,
        heldout,
        probe,
        threads,
        out: out.clone(),
        resume: a.resume.clone(),
        spill_dir: a.spill.spill_dir.clone(),
        budget: a.spill.memory_budget.0,
    };
    let summary = pipeline::search_benchmark(&job, &opts, &|phase, done, _total| {
        let bar = match phase {
            Phase::Probe => &bars[0],
            Phase::Search => &bars[1],
            Phase::Heldout => &bars[2],
        };
        bar.set_position(done as u64);
    })?;
    bars.iter().for_each(|b| b.finish_and_clear());
    if a.json {
        out::line(serde_json::to_string(&summary)?)?;
    } else {
        out::line(search_report(&summary, out.as_deref()).trim_end())?;
    }
    Ok(())
}

fn study(a: StudyArgs) -> Result<()> {
    let bench = load(&a.data)?;
    require_truth(&bench, "study")?;
    let probe = ProbeOptions {
        seed: a.probe_seed,
        ..a.probe.options(bench.kind)?
    };
    let probe = a
        .spill
        .fitness_probe(&bench, a.fitness_n, a.probe.probe_storage, probe)?;
    let threads = a.probe.threads()?;
    let opts = a.gp.options(a.probe.seed, threads)?;
    set_engine_threads(threads);
    let job = lpzero::study::StudyJob {
        bench: &bench,
        splits: a.splits,
        fitness_n: a.fitness_n,
        first_seed: a.probe.seed,
        probe,
        threads,
        out: a.out.clone(),
        spill_dir: a.spill.spill_dir.clone(),
        budget: a.spill.memory_budget.0,
    };
    let split = std::sync::Mutex::new(0usize);
    let bars = [
        report::progress(a.fitness_n, "probing fitness set", a.json),
        report::progress(a.gp.iterations * a.gp.restarts, "searching", a.json),
        report::progress(bench.len(), "held-out evaluation", a.json),
    ];
    let study = lpzero::study::run(
        &job,
        &opts,
        &|k| {
            *split.lock().expect("progress lock") = k;
            bars[0].reset();
            bars[1].reset();
            let msg = format!("split {} of {}", k + 1, a.splits);
            bars[0].set_message(format!("{msg}: probing fitness set"));
            bars[1].set_message(format!("{msg}: searching"));
        },
        &|phase, done, _total| {
            let bar = match phase {
                Phase::Probe => &bars[0],
                Phase::Search => &bars[1],
                Phase::Heldout => &bars[2],
            };
            bar.set_position(done as u64);
        },
    )?;
    bars.iter().for_each(|b| b.finish_and_clear());
    if a.json {
        out::line(serde_json::to_string(&study)?)?;
    } else {
        out::line(lpzero::study::markdown(&study).trim_end())?;
        if let Some(dir) = &a.out {
            out::line(format_args!("\nstudy folder: {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The terminal report of a search: the found proxy, then the held-out table (searched proxy,
/// hall-of-fame ensemble, pair ensemble and every baseline, best first) and whether the
/// searched proxy won.
fn search_report(summary: &SearchSummary, dir: Option<&std::path::Path>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "best proxy: {}", summary.best);
    let _ = writeln!(
        s,
        "fitness {:.4} ({}) on {} architectures; {:.0} s in total",
        summary.fitness, summary.fitness_measure, summary.fitness_n, summary.seconds
    );
    let bytes = |b: u64| report::format_bytes(b as f64);
    let _ = writeln!(
        s,
        "fitness probes as {}: {} in memory, {} in a spill file; peak RSS {}{}",
        summary.probe.storage.name(),
        bytes(summary.fitness_probe_bytes),
        bytes(summary.fitness_spilled_bytes),
        summary
            .peak_rss_mib
            .map_or("unknown".into(), |m| report::format_bytes(
                m * (1u64 << 20) as f64
            )),
        summary
            .memory_budget_gb
            .map_or(String::new(), |gb| format!(" (memory budget {gb} GB)")),
    );
    if summary.restarts.len() > 1 {
        let fits: Vec<String> = summary
            .restarts
            .iter()
            .map(|r| format!("{:.4}", r.fitness))
            .collect();
        let _ = writeln!(
            s,
            "{} GP restarts, best fitness {}; reported: restart {} (hall of fame merged)",
            summary.restarts.len(),
            fits.join(", "),
            summary.chosen_restart
        );
    }
    let Some(baselines) = &summary.heldout_baselines else {
        let _ = writeln!(s, "no held-out evaluation (--heldout off)");
        return s;
    };
    let mut rows: Vec<(String, f64, f64)> = baselines
        .iter()
        .map(|(name, c)| {
            let label = match &c.members {
                Some([a, b]) => format!("{name} ({a} + {b})"),
                None => name.clone(),
            };
            (label, c.spearman, c.kendall)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let ours = summary.heldout_spearman;
    rows.insert(
        0,
        ("searched proxy".to_string(), ours, summary.heldout_kendall),
    );
    if let Some(h) = &summary.hall_of_fame_ensemble {
        rows.insert(
            1,
            (
                format!("hall-of-fame ensemble ({} entries)", h.members.len()),
                h.spearman,
                h.kendall,
            ),
        );
    }
    if let Some(c) = &summary.combined_ensemble {
        rows.insert(
            2.min(rows.len()),
            (
                format!(
                    "combined ensemble ({} searched + {} pair baselines)",
                    c.searched.len(),
                    c.baselines.len()
                ),
                c.spearman,
                c.kendall,
            ),
        );
    }
    let _ = writeln!(
        s,
        "\nheld out: {} architectures\n{:<52} {:>9} {:>9}",
        summary.heldout_n, "proxy", "spearman", "kendall"
    );
    for (name, rho, tau) in rows {
        let _ = writeln!(s, "{name:<52} {rho:>9.4} {tau:>9.4}");
    }
    let best = summary.best_baseline.as_deref().unwrap_or("?");
    let margin = summary.margin.unwrap_or(f64::NAN);
    let verdict = if summary.won() { "WON" } else { "LOST" };
    let _ = writeln!(
        s,
        "\n{verdict}: the searched proxy's held-out ρ is {ours:.4}, {margin:+.4} against the best \
         baseline ({best}, ρ {:.4})",
        summary.best_baseline_spearman.unwrap_or(f64::NAN)
    );
    let ensembles = [
        ("the combined ensemble", &summary.combined_ensemble),
        (
            "the complement ensemble (searched proxy + pair)",
            &summary.complement_ensemble,
        ),
    ];
    for (what, c) in ensembles {
        let Some(c) = c else { continue };
        let verdict = if c.won() { "WON" } else { "LOST" };
        let _ = writeln!(
            s,
            "{verdict}: {what} has held-out ρ {:.4}, {:+.4} against the same; score it with \
             `lpzero score --bench {} --rank-sum --proxy '{}'` and this search's probe options",
            c.spearman, c.margin, summary.bench, c.proxy_list
        );
    }
    if let Some(d) = dir {
        let _ = writeln!(
            s,
            "run directory: {} (summary.json, heldout.svg, scatter.svg, curve.svg)",
            d.display()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The probe flags' help states each family's defaults in text (clap cannot read the
    /// library's constants); this keeps that text equal to the constants.
    #[test]
    fn probe_help_states_the_library_defaults() {
        use lpzero::models::{flexibert, gpt2_flex};
        let mut cmd = super::Cli::command();
        let score = cmd
            .find_subcommand_mut("score")
            .expect("a score subcommand");
        let help = score.render_long_help().to_string();
        let batch = format!(
            "[default: flexibert {}, gpt2 {}]",
            flexibert::DEFAULT_BATCH,
            gpt2_flex::DEFAULT_BATCH
        );
        let seq = format!(
            "[default: flexibert {}, gpt2 {}]",
            flexibert::DEFAULT_SEQ_LEN,
            gpt2_flex::DEFAULT_SEQ_LEN
        );
        assert!(help.contains(&batch), "--batch help lacks {batch}:\n{help}");
        assert!(help.contains(&seq), "--seq-len help lacks {seq}:\n{help}");
    }
}
