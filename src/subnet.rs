//! Jobs on the sub-networks of a Llama model (the LoNAS space, [`crate::models::llama`]):
//! parameter counts, proxy scores of a list of sub-networks, and the multi-objective search
//! ([`search`]).

pub mod search;

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::models::llama::{self, LlamaModel, Mode, Subnet, SubnetCount, SubnetSpace};
use crate::proxy::builtin::BUILTINS;
use crate::report::{self, clip};
use crate::rng::Rng;
use crate::scoring::Proxy;

/// Parses `--proxy` for the llama family: `all` (every built-in that applies to the family
/// and needs no extra pass, as `score`'s `all`: the extra-pass ones cost passes of their own
/// and run when named), a `,`-separated list of names, or a `;`-separated list of
/// expressions.
pub fn parse_proxies(text: &str) -> Result<Vec<Proxy>> {
    if text.trim() == "all" {
        return Ok(BUILTINS
            .iter()
            .filter(|b| !b.extra_passes() && (b.applies)(&llama::SEMANTICS))
            .map(Proxy::Builtin)
            .collect());
    }
    let sep = if text.contains('(') { ';' } else { ',' };
    let items: Vec<&str> = text.split(sep).map(str::trim).collect();
    if items.iter().any(|s| s.is_empty()) {
        bail!(
            "the proxy list `{}` has an empty item; expected names separated by `,` or \
             expressions separated by `;`",
            clip(text)
        );
    }
    let proxies = items
        .into_iter()
        .map(Proxy::parse)
        .collect::<Result<Vec<_>>>()?;
    crate::scoring::refuse_rank_joins(&proxies, "sub-network scoring")?;
    Ok(proxies)
}

/// The sub-networks to score: `random:N` (N drawn from `space` with `seed`), a named one
/// (`maximal`, `heuristic`, `minimal`), or a file holding one sub-network (a JSON object), a
/// JSON array of them, or JSON Lines (one object per line). Each comes with a name.
pub fn resolve_subnets(
    model: &LlamaModel,
    space: &SubnetSpace,
    spec: &str,
    seed: u64,
) -> Result<Vec<(String, Subnet)>> {
    if let Some(n) = spec.strip_prefix("random:") {
        let n: usize = n
            .parse()
            .map_err(|_| anyhow!("`{spec}`: expected random:N with N a positive integer"))?;
        let mut rng = Rng::derive(seed, &[0x5b_5e7]);
        return Ok((0..n)
            .map(|i| (format!("random-{i}"), space.random(&mut rng)))
            .collect());
    }
    if llama::Named::parse(spec).is_some() {
        return Ok(vec![(spec.to_string(), model.subnet(space, spec)?)]);
    }
    let path = Path::new(spec);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the sub-networks", path.display()))?;
    let parse = |t: &str, what: &str| -> Result<Subnet> {
        let de = &mut serde_json::Deserializer::from_str(t);
        serde_path_to_error::deserialize(de).map_err(|e| {
            anyhow!(
                "{}: {what}: field `{}`: {} (expected {{\"ffn_widths\": [...], \"heads\": [...]}})",
                path.display(),
                e.path(),
                e.inner()
            )
        })
    };
    let trimmed = text.trim_start();
    let single =
        !trimmed.starts_with('[') && serde_json::from_str::<serde_json::Value>(&text).is_ok();
    let list: Vec<Subnet> = if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON array", path.display()))?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| parse(&v.to_string(), &format!("item {i}")))
            .collect::<Result<_>>()?
    } else if single {
        vec![parse(&text, "the sub-network")?]
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| parse(l, &format!("line {}", i + 1)))
            .collect::<Result<_>>()?
    };
    if list.is_empty() {
        bail!("{}: holds no sub-network", path.display());
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    list.into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.check(&model.config)
                .with_context(|| format!("{}: sub-network {i}", path.display()))?;
            let name = if single {
                stem.clone()
            } else {
                format!("{stem}-{i}")
            };
            Ok((name, s))
        })
        .collect()
}

/// `subnet params` output for one sub-network.
pub fn params(model: &LlamaModel, subnet: &Subnet) -> Result<SubnetCount> {
    subnet.count(&model.config)
}

/// One scored sub-network.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScoredSubnet {
    /// Its name (`random-3`, `heuristic`, the file stem).
    pub name: String,
    /// The sub-network.
    pub subnet: Subnet,
    /// Its counts.
    pub count: SubnetCount,
    /// The scores.
    pub score: llama::SubnetScore,
}

/// Options of [`score_subnets`].
pub struct ScoreOptions<'a> {
    /// Rows of the probe batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Token ids instead of the Zipf batch.
    pub corpus: Option<&'a Path>,
    /// Seed of the batch (and of drawn weights, through the model).
    pub seed: u64,
    /// Whole probe, streaming, or chosen by size.
    pub mode: Mode,
    /// Called after each layer of each pass (`2 × layers` calls per sub-network), for
    /// progress.
    pub on_layer: Option<&'a dyn Fn()>,
}

impl ScoreOptions<'_> {
    /// The probe batch these options describe, for `model`.
    fn probe_batch(&self, model: &LlamaModel) -> Result<crate::probe::Batch> {
        llama::batch(
            &model.config,
            self.batch,
            self.seq_len,
            self.corpus,
            self.seed,
        )
    }
}

/// Scores every sub-network of `subnets` with `proxies`, calling `done` after each.
pub fn score_subnets(
    model: &LlamaModel,
    subnets: &[(String, Subnet)],
    proxies: &[Proxy],
    opts: &ScoreOptions<'_>,
    mut done: impl FnMut(&ScoredSubnet),
) -> Result<Vec<ScoredSubnet>> {
    let batch = opts.probe_batch(model)?;
    let mut out = Vec::with_capacity(subnets.len());
    for (name, subnet) in subnets {
        let score =
            llama::score_with_progress(model, subnet, &batch, proxies, opts.mode, opts.on_layer)
                .with_context(|| format!("sub-network {name}"))?;
        let scored = ScoredSubnet {
            name: name.clone(),
            subnet: subnet.clone(),
            count: subnet.count(&model.config)?,
            score,
        };
        done(&scored);
        out.push(scored);
    }
    Ok(out)
}

/// The score table: header `subnet, total, non_embedding, flops_per_token, loss, seconds`,
/// one column per proxy, the FFN widths and the heads (space-separated), and one row per
/// sub-network (for [`report::write_csv_file`]).
pub fn scores_table(proxies: &[Proxy], rows: &[ScoredSubnet]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header: Vec<String> = [
        "subnet",
        "total",
        "non_embedding",
        "flops_per_token",
        "loss",
        "seconds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(proxies.iter().map(|p| p.name()));
    header.push("ffn_widths".into());
    header.push("heads".into());
    let body = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.name.clone(),
                r.count.total.to_string(),
                r.count.non_embedding.to_string(),
                r.count.flops_per_token.to_string(),
                report::csv_number(r.score.loss),
                format!("{:.3}", r.score.seconds),
            ];
            row.extend(r.score.values.iter().map(|&v| report::csv_number(v)));
            row.push(join(&r.subnet.ffn_widths));
            row.push(r.subnet.heads.as_deref().map(join).unwrap_or_default());
            row
        })
        .collect();
    (header, body)
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the NSGA-II search ([`search::nsga2`]) with `proxy` (oriented: a lower-is-better
/// proxy is negated) as fitness and the parameter count as the second objective.
pub fn search_subnets(
    model: &LlamaModel,
    space: &SubnetSpace,
    proxy: &Proxy,
    opts: &ScoreOptions<'_>,
    search_opts: &search::SearchOptions,
    on_eval: impl FnMut(&search::Evaluated),
) -> Result<search::SearchResult> {
    let batch = opts.probe_batch(model)?;
    let sign = proxy.orientation().sign();
    let proxies = std::slice::from_ref(proxy);
    let fitness = |s: &Subnet| -> Result<f64> {
        let score =
            llama::score_with_progress(model, s, &batch, proxies, opts.mode, opts.on_layer)?;
        Ok(sign * score.values[0])
    };
    let params = |s: &Subnet| -> Result<u64> { Ok(s.count(&model.config)?.total) };
    search::nsga2(space, search_opts, fitness, params, on_eval)
}

/// The files [`write_search`] wrote.
pub struct SearchFiles {
    /// The front as JSON.
    pub front_json: std::path::PathBuf,
    /// The best sub-network within the budget (a file `subnet score --subnets` reads).
    pub best: std::path::PathBuf,
}

/// Writes a search's folder: `front.csv` and `front.json` (the Pareto front within the
/// budget), `evaluated.csv` (every sub-network), `front.svg` (fitness against parameters) and
/// `best.json` (the best sub-network within the budget, when one fits).
pub fn write_search(
    dir: &Path,
    proxy: &Proxy,
    opts: &search::SearchOptions,
    r: &search::SearchResult,
) -> Result<SearchFiles> {
    let header: Vec<String> = ["index", "params", "fitness", "ffn_widths", "heads"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let row = |e: &search::Evaluated| {
        vec![
            e.index.to_string(),
            e.params.to_string(),
            report::csv_number(e.fitness),
            join(&e.subnet.ffn_widths),
            e.subnet.heads.as_deref().map(join).unwrap_or_default(),
        ]
    };
    let front: Vec<&search::Evaluated> = r.front.iter().map(|&i| &r.evaluated[i]).collect();
    report::write_csv_file(
        &dir.join("front.csv"),
        &header,
        &front.iter().map(|e| row(e)).collect::<Vec<_>>(),
    )?;
    report::write_csv_file(
        &dir.join("evaluated.csv"),
        &header,
        &r.evaluated.iter().map(row).collect::<Vec<_>>(),
    )?;
    let front_json = dir.join("front.json");
    let json = serde_json::json!({
        "proxy": proxy.name(),
        "orientation": proxy.orientation(),
        "options": opts,
        "evaluated": r.evaluated.len(),
        "front": front,
        "best": r.best.map(|b| &r.evaluated[b]),
    });
    report::write_atomic(&front_json, serde_json::to_string_pretty(&json)? + "\n")?;
    let points: Vec<(f64, f64)> = r
        .evaluated
        .iter()
        .map(|e| (e.params as f64, e.fitness))
        .collect();
    let budget = (opts.max_params != u64::MAX).then_some(opts.max_params as f64);
    let svg = crate::svg::pareto(
        &points,
        &r.front,
        budget,
        &format!("NSGA-II: {} against parameters", proxy.name()),
        &format!("{} evaluated, {} on the front", points.len(), r.front.len()),
        ("parameters", "fitness (oriented proxy, higher = better)"),
    );
    report::write_atomic(&dir.join("front.svg"), svg)?;
    let best = dir.join("best.json");
    if let Some(b) = r.best {
        report::write_atomic(
            &best,
            serde_json::to_string_pretty(&r.evaluated[b].subnet)? + "\n",
        )?;
    }
    Ok(SearchFiles { front_json, best })
}
