//! Command-line wiring of `lpzero subnet search`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use lpzero::proxy::builtin::Orientation;
use lpzero::report;
use lpzero::subnet::{self, search};

use super::subnet::{BatchArgs, ModelArgs};
use crate::out;

/// `lpzero subnet search`.
#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The proxy to maximise (one built-in name or expression; a lower-is-better proxy is
    /// negated).
    #[arg(long)]
    proxy: String,
    /// Largest parameter count of the sub-network (e.g. 5656285184).
    #[arg(long)]
    max_params: u64,
    /// Individuals per generation.
    #[arg(long, default_value_t = 16)]
    population: usize,
    /// Generations after the first population.
    #[arg(long, default_value_t = 8)]
    generations: usize,
    #[command(flatten)]
    batch: BatchArgs,
    /// Output folder: front.csv, front.json, evaluated.csv, front.svg, best.json.
    #[arg(long, default_value = "subnet-search")]
    out: PathBuf,
    /// Print front.json on stdout (and no progress).
    #[arg(long)]
    json: bool,
}

/// Runs the search and writes its folder.
pub fn search(a: SearchArgs) -> Result<()> {
    let model = a.model.open()?;
    let space = a.model.space(&model)?;
    let proxies = subnet::parse_proxies(&a.proxy).context("--proxy")?;
    if proxies.len() != 1 {
        bail!("--proxy: expected one proxy, got {}", proxies.len());
    }
    let opts = search::SearchOptions {
        population: a.population,
        generations: a.generations,
        max_params: a.max_params,
        seed: a.model.seed,
        ..search::SearchOptions::default()
    };
    let evaluations = a.population * (a.generations + 1);
    let bar = report::progress(evaluations, "evaluating (at most)", a.json);
    let result = subnet::search_subnets(
        &model,
        &space,
        &proxies[0],
        &a.batch.options(a.model.seed),
        &opts,
        |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    let files = subnet::write_search(&a.out, &proxies[0], &opts, &result).context("--out")?;
    let sign = match proxies[0].orientation() {
        Orientation::HigherIsBetter => "",
        Orientation::LowerIsBetter => " (negated)",
    };
    if a.json {
        return out::line(std::fs::read_to_string(&files.front_json)?.trim_end());
    }
    out::line(format!(
        "{} sub-networks evaluated, {} on the front within {} parameters; proxy {}{sign}",
        result.evaluated.len(),
        result.front.len(),
        a.max_params,
        proxies[0].name()
    ))?;
    match result.best {
        Some(b) => out::line(format!(
            "best: {} parameters, fitness {}; written to {}",
            result.evaluated[b].params,
            result.evaluated[b].fitness,
            files.best.display()
        )),
        None => out::line("no sub-network fits the budget (no best.json written)"),
    }
}
