//! Command-line wiring of `lpzero subnet` (sub-networks of a Llama model).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use lpzero::models::llama::{LlamaModel, Mode, SubnetSpace};
use lpzero::report;
use lpzero::subnet::{self, ScoreOptions};

use crate::out;

/// `lpzero subnet`.
#[derive(Args)]
pub struct SubnetArgs {
    #[command(subcommand)]
    command: SubnetCommand,
}

#[derive(Subcommand)]
enum SubnetCommand {
    /// Parameter counts and FLOPs per token of one sub-network.
    Params(ParamsArgs),
    /// Score sub-networks with proxies (streaming layer by layer for large models).
    Score(ScoreArgs),
    /// NSGA-II search of the sub-network space: proxy against parameters.
    Search(super::subnet_search::SearchArgs),
}

/// The model folder and the sub-network space.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model folder (config.json, and *.safetensors or none for seeded random weights), or a
    /// config.json file.
    #[arg(long)]
    pub model: PathBuf,
    /// Seed of random weights (when the folder has none) and of the probe batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// FFN width choices, comma-separated [default: LoNAS's 100, 87.5, 75, 62.5, 50 % of
    /// intermediate_size].
    #[arg(long, value_delimiter = ',')]
    pub ffn_choices: Option<Vec<usize>>,
    /// Query-head choices per layer, comma-separated (multiples of the query heads per
    /// key/value head) [default: heads are not searched].
    #[arg(long, value_delimiter = ',')]
    pub head_choices: Option<Vec<usize>>,
}

impl ModelArgs {
    /// Opens the model.
    pub fn open(&self) -> Result<LlamaModel> {
        LlamaModel::open(&self.model, self.seed).context("--model")
    }

    /// The sub-network space: LoNAS's, or the given choices.
    pub fn space(&self, model: &LlamaModel) -> Result<SubnetSpace> {
        if self.ffn_choices.is_none() && self.head_choices.is_none() {
            return Ok(model.space());
        }
        let ffn = match &self.ffn_choices {
            Some(f) => f.clone(),
            None => model.space().ffn_choices,
        };
        SubnetSpace::new(&model.config, ffn, self.head_choices.clone())
            .context("--ffn-choices/--head-choices")
    }
}

#[derive(Args)]
struct ParamsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// `maximal`, `heuristic` (middle choice everywhere), `minimal`, or a sub-network JSON
    /// file ({"ffn_widths": [...], "heads": [...]}).
    #[arg(long, default_value = "maximal")]
    subnet: String,
    /// Print JSON (the default output is JSON too, pretty-printed; --json prints one line).
    #[arg(long)]
    json: bool,
}

/// How the model is probed.
#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Whole probe for small models, streaming above 2 GiB of probe.
    Auto,
    /// Always the whole probe (every proxy; the extra-pass ones run their passes on the whole
    /// sub-network).
    Whole,
    /// Always streaming: one layer's weights at a time, every layer's activations kept; it
    /// refuses, by name, what it cannot compute exactly (`total` over weight or grad, the
    /// built-ins that divide by their number of linears, the extra-pass proxies).
    Stream,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Whole => Mode::Whole,
            ModeArg::Stream => Mode::Stream,
        }
    }
}

/// Probe batch options shared by `score` and `search`.
#[derive(Args, Clone)]
pub struct BatchArgs {
    /// Rows of the probe batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Whitespace-separated token ids instead of the seeded Zipf batch.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Whole probe, streaming, or by size.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
}

impl BatchArgs {
    /// The library's options.
    pub fn options(&self, seed: u64) -> ScoreOptions<'_> {
        ScoreOptions {
            batch: self.batch,
            seq_len: self.seq_len,
            corpus: self.corpus.as_deref(),
            seed,
            mode: self.mode.into(),
            on_layer: None,
        }
    }
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// `random:N`, `maximal`, `heuristic`, `minimal`, or a file: one sub-network (JSON), a
    /// JSON array of them, or JSON Lines.
    #[arg(long)]
    subnets: String,
    /// Proxies: built-in names separated by `,`, expressions separated by `;`, or `all` (the
    /// built-ins of one pass; the extra-pass ones, fisher, grasp, synflow, logsynflow,
    /// jacob_cov and attention_confidence, run on the whole probe when named).
    #[arg(long)]
    proxy: String,
    #[command(flatten)]
    batch: BatchArgs,
    /// Write the table as CSV here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON on stdout (and no progress).
    #[arg(long)]
    json: bool,
}

/// Runs `lpzero subnet`.
pub fn subnet(a: SubnetArgs) -> Result<()> {
    match a.command {
        SubnetCommand::Params(a) => params(a),
        SubnetCommand::Score(a) => score(a),
        SubnetCommand::Search(a) => super::subnet_search::search(a),
    }
}

fn params(a: ParamsArgs) -> Result<()> {
    let model = a.model.open()?;
    let space = a.model.space(&model)?;
    let subnet = model.subnet(&space, &a.subnet).context("--subnet")?;
    let count = subnet::params(&model, &subnet)?;
    let text = if a.json {
        serde_json::to_string(&count)?
    } else {
        serde_json::to_string_pretty(&count)?
    };
    out::line(text)
}

fn score(a: ScoreArgs) -> Result<()> {
    let model = a.model.open()?;
    let space = a.model.space(&model)?;
    let subnets =
        subnet::resolve_subnets(&model, &space, &a.subnets, a.model.seed).context("--subnets")?;
    let proxies = subnet::parse_proxies(&a.proxy).context("--proxy")?;
    // Progress by layer pass: a LLaMA-7B sub-network takes minutes.
    let steps = 2 * model.config.num_hidden_layers;
    let bar = report::progress(subnets.len() * steps, "layer passes", a.json);
    let tick = || bar.inc(1);
    let mut opts = a.batch.options(a.model.seed);
    opts.on_layer = Some(&tick);
    let json = a.json;
    let rows = subnet::score_subnets(&model, &subnets, &proxies, &opts, |r| {
        if !json {
            let values: Vec<String> = proxies
                .iter()
                .zip(&r.score.values)
                .map(|(p, v)| format!("{}={v}", p.name()))
                .collect();
            bar.suspend(|| {
                let _ = out::line(format!(
                    "{}: total {} params, loss {:.4}, {:.1} s, {}",
                    r.name,
                    r.count.total,
                    r.score.loss,
                    r.score.seconds,
                    values.join(", ")
                ));
            });
        }
    })?;
    bar.finish_and_clear();
    if let Some(path) = &a.out {
        let (header, body) = subnet::scores_table(&proxies, &rows);
        report::write_csv_file(path, &header, &body).context("--out")?;
    }
    if a.json {
        out::line(serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
