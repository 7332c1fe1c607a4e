//! The Llama ranking experiment: how well do zero-cost proxies rank the LoNAS sub-networks of
//! a pretrained Llama by held-out perplexity?
//!
//! 1. Trains a small Llama (by default H 256, FFN 704, 4 layers, 4 heads over 2 key/value
//!    heads, tied embedding; 3.46 M parameters) on the CPython-docs corpus of `data/corpus/` (PSF License
//!    2.0, see its README), LoNAS-style: every step activates a sub-network (sandwich rule:
//!    the maximal, the minimal, then a random one), so sliced sub-networks are trained too.
//!    The token ids are BERT WordPiece ids, renumbered by frequency into a compact vocabulary.
//!    Lines 0–111 train, lines 112–127 are held out. Saves `model/` (config.json and
//!    model.safetensors; a second run reuses it). The training log in `summary.json` has the
//!    held-out loss of the maximal network every 50 steps.
//! 2. Draws 100 distinct random sub-networks and measures each one's held-out perplexity with
//!    the sliced weights (the ground truth).
//! 3. Probes each sub-network once (2 × 64 training tokens) and computes every single-pass
//!    built-in proxy, the published LPZero genotypes and the parameter count; Spearman ρ and
//!    Kendall τ against −perplexity.
//! 4. Runs the LPZero search on 30 sub-networks (fitness) and evaluates its best expression on
//!    the other 70, beside every proxy on the same 70.
//!
//! ```text
//! cargo run --release --example llama_ranking -- results/llama [--steps 1000] [--iterations 150]
//!     [--subnets 100] [--seed 0] [--hidden 256] [--ffn 704] [--layers 4]
//! ```
//!
//! Writes `ground_truth.csv`, `proxies.csv`, `summary.json` and `summary.md` to the folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use lpzero::models::llama::net::{self, LayerWeights, Rope};
use lpzero::models::llama::weights::{self, layer_name, WeightSource};
use lpzero::models::llama::{whole_probe, LlamaConfig, LlamaModel, Named, Subnet, SubnetSpace};
use lpzero::probe::{Batch, Probe};
use lpzero::proxy::eval::{eval, InputSource};
use lpzero::report;
use lpzero::rng::Rng;
use lpzero::scoring::Proxy;
use lpzero::search::SearchOptions;
use lpzero::stats::{kendall_tau_b, spearman};
use lpzero::subnet::parse_proxies;

const CORPUS: &str = "data/corpus/python_docs_bert_uncased.txt";
const TRAIN_LINES: usize = 112;
const SEQ: usize = 128;
const ROWS: usize = 8;

struct Args {
    out: PathBuf,
    steps: usize,
    iterations: usize,
    subnets: usize,
    seed: u64,
    hidden: usize,
    ffn: usize,
    layers: usize,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        out: PathBuf::from("results/llama"),
        steps: 1000,
        iterations: 150,
        subnets: 100,
        seed: 0,
        hidden: 256,
        ffn: 704,
        layers: 4,
    };
    let mut out = None;
    while let Some(x) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name}: expected a value"))?
                .parse()
                .with_context(|| format!("{name}: expected a non-negative integer"))
        };
        match x.as_str() {
            "--steps" => a.steps = num("--steps")?,
            "--iterations" => a.iterations = num("--iterations")?,
            "--subnets" => a.subnets = num("--subnets")?,
            "--seed" => a.seed = num("--seed")? as u64,
            "--hidden" => a.hidden = num("--hidden")?,
            "--ffn" => a.ffn = num("--ffn")?,
            "--layers" => a.layers = num("--layers")?,
            _ if !x.starts_with("--") && out.is_none() => out = Some(PathBuf::from(x)),
            _ => bail!("unknown argument `{x}`"),
        }
    }
    if let Some(o) = out {
        a.out = o;
    }
    Ok(a)
}

/// The corpus lines renumbered into a compact vocabulary (ids by decreasing frequency, ties
/// by the original id).
fn corpus() -> Result<(Vec<Vec<u32>>, usize)> {
    let text = std::fs::read_to_string(CORPUS).with_context(|| format!("{CORPUS}: cannot read"))?;
    let lines: Vec<Vec<u32>> = text
        .lines()
        .map(|l| l.split_whitespace().map(|w| w.parse::<u32>()).collect())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{CORPUS}: expected integer ids"))?;
    let mut freq: HashMap<u32, usize> = HashMap::new();
    for id in lines.iter().flatten() {
        *freq.entry(*id).or_default() += 1;
    }
    let mut ids: Vec<(u32, usize)> = freq.into_iter().collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let map: HashMap<u32, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i as u32))
        .collect();
    let lines = lines
        .into_iter()
        .map(|l| l.into_iter().map(|id| map[&id]).collect())
        .collect();
    Ok((lines, ids.len()))
}

fn config(a: &Args, vocab: usize) -> Result<LlamaConfig> {
    if a.hidden == 0 || !a.hidden.is_multiple_of(8) {
        bail!(
            "--hidden: expected a positive multiple of 8 (4 heads of an even size), got {}",
            a.hidden
        );
    }
    if a.ffn < 5 || a.layers == 0 {
        bail!("--ffn: expected at least 5 and --layers at least 1");
    }
    Ok(LlamaConfig {
        hidden_size: a.hidden,
        intermediate_size: a.ffn,
        num_hidden_layers: a.layers,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        vocab_size: vocab,
        tie_word_embeddings: true,
        initializer_range: 0.02,
        max_position_embeddings: 512,
    })
}

/// The mean NLL of `batch` through the trainable `vars` with `subnet` active (FFN slices).
fn train_loss(
    c: &LlamaConfig,
    vars: &HashMap<String, Var>,
    subnet: &Subnet,
    batch: &Batch,
    rope: &Rope,
) -> Result<Tensor> {
    let v = |name: &str| vars[name].as_tensor().clone();
    let (inputs, targets) = batch.shifted();
    let t = batch.cols - 1;
    let idx = Tensor::from_vec(inputs, batch.rows * t, &Device::Cpu)?;
    let embed = v(weights::EMBED);
    let mut x = embed
        .index_select(&idx, 0)?
        .reshape((batch.rows, t, c.hidden_size))?;
    for l in 0..c.num_hidden_layers {
        let w = subnet.ffn_widths[l];
        let get = |m: &str| v(&layer_name(l, m));
        let lw = LayerWeights {
            attn_norm: get("input_layernorm"),
            q: get("self_attn.q_proj"),
            k: get("self_attn.k_proj"),
            v: get("self_attn.v_proj"),
            o: get("self_attn.o_proj"),
            ffn_norm: get("post_attention_layernorm"),
            gate: get("mlp.gate_proj").narrow(0, 0, w)?,
            up: get("mlp.up_proj").narrow(0, 0, w)?,
            down: get("mlp.down_proj").narrow(1, 0, w)?.contiguous()?,
        };
        let shape = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        x = net::layer(&x, &lw, shape, c.rms_norm_eps, rope)?.y;
    }
    let h = net::rms_norm(&x, &v(weights::FINAL_NORM), c.rms_norm_eps)?;
    let logits = h
        .reshape((batch.rows * t, c.hidden_size))?
        .matmul(&embed.t()?)?;
    Ok(net::nll(&logits, &targets)?)
}

/// Trains the model (module docs) and writes it to `dir`; returns the training log.
fn train(
    dir: &Path,
    c: &LlamaConfig,
    train_ids: &[u32],
    held: &Batch,
    steps: usize,
    seed: u64,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    let init = WeightSource::Random {
        seed,
        std: c.initializer_range,
    };
    let mut vars = HashMap::new();
    let mut list = Vec::new();
    for (name, t) in weights::materialize(c, &init)? {
        let var = Var::from_tensor(&t)?;
        list.push(var.clone());
        vars.insert(name, var);
    }
    let lr = 3e-3;
    let mut opt = AdamW::new(
        list,
        ParamsAdamW {
            lr,
            weight_decay: 0.01,
            ..ParamsAdamW::default()
        },
    )?;
    let space = SubnetSpace::lonas(c);
    let rope = Rope::new(SEQ, c.head_dim(), c.rope_theta, &Device::Cpu)?;
    let mut rng = Rng::derive(seed, &[0x7a41]);
    let mut log = Vec::new();
    let mut recent = Vec::new();
    for step in 0..steps {
        let warm = 30.0;
        let s = step as f64;
        let rate = if s < warm {
            lr * (s + 1.0) / warm
        } else {
            let p = (s - warm) / (steps as f64 - warm).max(1.0);
            lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        };
        opt.set_learning_rate(rate);
        let subnet = match step % 3 {
            0 => space.named(Named::Maximal),
            1 => space.named(Named::Minimal),
            _ => space.random(&mut rng),
        };
        let mut ids = Vec::with_capacity(ROWS * (SEQ + 1));
        for _ in 0..ROWS {
            let at = rng.range(0, train_ids.len() - SEQ - 1);
            ids.extend_from_slice(&train_ids[at..at + SEQ + 1]);
        }
        let batch = Batch {
            ids,
            rows: ROWS,
            cols: SEQ + 1,
        };
        let loss = train_loss(c, &vars, &subnet, &batch, &rope)?;
        opt.backward_step(&loss)?;
        recent.push(loss.to_scalar::<f32>()? as f64);
        if (step + 1) % 50 == 0 || step + 1 == steps {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            recent.clear();
            let maximal = space.named(Named::Maximal);
            let held_loss = train_loss(c, &vars, &maximal, held, &rope)?.to_scalar::<f32>()? as f64;
            eprintln!(
                "step {}/{steps}: train loss {mean:.3}, held-out loss {held_loss:.3} ({:.0} s)",
                step + 1,
                start.elapsed().as_secs_f64()
            );
            log.push(serde_json::json!({"step": step + 1, "train_loss": mean, "heldout_loss": held_loss}));
        }
    }
    let tensors = weights::tensor_specs(c)
        .into_iter()
        .map(|(name, _, _)| {
            let t = vars[&name].as_tensor().clone();
            (name, t)
        })
        .collect();
    weights::save_model(dir, c, tensors)?;
    Ok(serde_json::json!({
        "steps": steps,
        "rows": ROWS,
        "seq_len": SEQ,
        "seconds": start.elapsed().as_secs_f64(),
        "log": log,
    }))
}

fn main() -> Result<()> {
    let a = args()?;
    let (lines, vocab) = corpus()?;
    let c = config(&a, vocab)?;
    let model_dir = a.out.join("model");
    let train_ids: Vec<u32> = lines[..TRAIN_LINES].iter().flatten().copied().collect();
    // Held-out batch: three 129-token windows of each held-out line.
    let mut held = Vec::new();
    for line in &lines[TRAIN_LINES..] {
        for k in 0..line.len() / (SEQ + 1) {
            held.extend_from_slice(&line[k * (SEQ + 1)..(k + 1) * (SEQ + 1)]);
        }
    }
    let held = Batch {
        rows: held.len() / (SEQ + 1),
        ids: held,
        cols: SEQ + 1,
    };
    let training = if model_dir.join("model.safetensors").is_file() {
        eprintln!("reusing {}", model_dir.display());
        serde_json::Value::Null
    } else {
        train(&model_dir, &c, &train_ids, &held, a.steps, a.seed)?
    };
    let model = LlamaModel::open(&model_dir, 0)?;
    let saved = &model.config;
    if (
        saved.hidden_size,
        saved.intermediate_size,
        saved.num_hidden_layers,
    ) != (c.hidden_size, c.intermediate_size, c.num_hidden_layers)
    {
        bail!(
            "{}: the saved model has hidden {}, FFN {}, {} layers but this run asks for {}, {}, {}; \
             remove the folder to retrain or pass the saved sizes",
            model_dir.display(),
            saved.hidden_size,
            saved.intermediate_size,
            saved.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers
        );
    }
    let space = model.space();
    let probe_batch = Batch {
        ids: train_ids[..2 * 65].to_vec(),
        rows: 2,
        cols: 65,
    };
    // Distinct random sub-networks.
    let mut rng = Rng::derive(a.seed, &[0x5ab]);
    let mut subnets: Vec<Subnet> = Vec::new();
    while subnets.len() < a.subnets {
        let s = space.random(&mut rng);
        if !subnets.contains(&s) {
            subnets.push(s);
        }
    }
    let mut proxies = parse_proxies("all")?;
    for g in ["lpzero_bert", "lpzero_csv_bert", "lpzero_gpt2"] {
        proxies.push(Proxy::parse(g)?);
    }
    let names: Vec<String> = proxies.iter().map(|p| p.name()).collect();
    let mut ppl = Vec::new();
    let mut params = Vec::new();
    let mut values: Vec<Vec<f64>> = Vec::new();
    let mut probes: Vec<Probe> = Vec::new();
    let started = Instant::now();
    for (i, s) in subnets.iter().enumerate() {
        let m = model.with(s);
        let nll = m.loss(&held)?;
        ppl.push(nll.exp());
        params.push(s.count(&model.config)?.total as f64);
        let probe = whole_probe(&m, &probe_batch, &format!("{i}"), false)?;
        values.push(proxies.iter().map(|p| p.compute(&probe)).collect());
        probes.push(probe);
        if (i + 1) % 10 == 0 {
            eprintln!(
                "{}/{} sub-networks ({:.0} s)",
                i + 1,
                subnets.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let truth: Vec<f64> = ppl.iter().map(|p| -p).collect();
    let join = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let header: Vec<String> = ["subnet", "ffn_widths", "params", "heldout_ppl"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows: Vec<Vec<String>> = subnets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![
                i.to_string(),
                join(&s.ffn_widths),
                (params[i] as u64).to_string(),
                report::csv_number(ppl[i]),
            ]
        })
        .collect();
    report::write_csv_file(&a.out.join("ground_truth.csv"), &header, &rows)?;
    let mut pheader = vec!["subnet".to_string()];
    pheader.extend(names.iter().cloned());
    let prows: Vec<Vec<String>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut r = vec![i.to_string()];
            r.extend(v.iter().map(|&x| report::csv_number(x)));
            r
        })
        .collect();
    report::write_csv_file(&a.out.join("proxies.csv"), &pheader, &prows)?;
    // Fitness 30 / held out 70, a seeded shuffle.
    let mut order: Vec<usize> = (0..subnets.len()).collect();
    let mut srng = Rng::derive(a.seed, &[0x5917]);
    for i in (1..order.len()).rev() {
        order.swap(i, srng.range(0, i + 1));
    }
    let n_fit = (subnets.len() * 3 / 10).max(2);
    let (fit, rest) = order.split_at(n_fit);
    let pick = |idx: &[usize], v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let column = |k: usize| values.iter().map(|v| v[k]).collect::<Vec<f64>>();
    let mut table = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let col = column(k);
        table.push(serde_json::json!({
            "proxy": name,
            "spearman_all": spearman(&col, &truth),
            "kendall_all": kendall_tau_b(&col, &truth),
            "spearman_heldout": spearman(&pick(rest, &col), &pick(rest, &truth)),
            "kendall_heldout": kendall_tau_b(&pick(rest, &col), &pick(rest, &truth)),
        }));
    }
    let search_started = Instant::now();
    let fit_sources: Vec<&dyn InputSource> = fit
        .iter()
        .map(|&i| &probes[i] as &dyn InputSource)
        .collect();
    let opts = SearchOptions {
        iterations: a.iterations,
        threads: 2,
        seed: a.seed,
        ..SearchOptions::default()
    };
    let fit_truth = pick(fit, &truth);
    let outcome = lpzero::search::run(&opts, &fit_sources, &fit_truth, None, None, &|i| {
        if i % 50 == 0 {
            eprintln!("search iteration {i}");
        }
    })?;
    let best_values: Vec<f64> = probes
        .iter()
        .map(|p| eval(&outcome.best, p).unwrap_or(f64::NAN))
        .collect();
    let search = serde_json::json!({
        "expression": outcome.best.to_string(),
        "iterations": a.iterations,
        "fitness_archs": n_fit,
        "fitness_measure": format!("{:?}", opts.fitness),
        "fitness_value": outcome.fitness_spearman,
        "spearman_fitness": spearman(&pick(fit, &best_values), &fit_truth),
        "spearman_heldout": spearman(&pick(rest, &best_values), &pick(rest, &truth)),
        "kendall_heldout": kendall_tau_b(&pick(rest, &best_values), &pick(rest, &truth)),
        "seconds": search_started.elapsed().as_secs_f64(),
    });
    let params_row = serde_json::json!({
        "spearman_all": spearman(&params, &truth),
        "kendall_all": kendall_tau_b(&params, &truth),
        "spearman_heldout": spearman(&pick(rest, &params), &pick(rest, &truth)),
        "kendall_heldout": kendall_tau_b(&pick(rest, &params), &pick(rest, &truth)),
    });
    let summary = serde_json::json!({
        "corpus": CORPUS,
        "vocab": vocab,
        "config": c,
        "training": training,
        "subnets": subnets.len(),
        "truth": "held-out perplexity (lines 112-127, 128-token windows), correlations against -ppl",
        "probe_batch": "2 x 64 training tokens",
        "ppl_range": [ppl.iter().cloned().fold(f64::INFINITY, f64::min), ppl.iter().cloned().fold(0.0, f64::max)],
        "params": params_row,
        "proxies": table,
        "search": search,
        "heldout_subnets": rest,
    });
    report::write_atomic(
        &a.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    let mut md = String::from("| proxy | ρ (100) | τ (100) | ρ (held-out 70) | τ (held-out 70) |\n|---|---|---|---|---|\n");
    let f = |v: &serde_json::Value| v.as_f64().map_or("nan".to_string(), |x| format!("{x:.3}"));
    for row in &table {
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            row["proxy"].as_str().unwrap_or(""),
            f(&row["spearman_all"]),
            f(&row["kendall_all"]),
            f(&row["spearman_heldout"]),
            f(&row["kendall_heldout"])
        );
    }
    md += &format!(
        "| LPZero search `{}` | – | – | {} | {} |\n",
        search["expression"].as_str().unwrap_or(""),
        f(&search["spearman_heldout"]),
        f(&search["kendall_heldout"])
    );
    report::write_atomic(&a.out.join("summary.md"), md)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
