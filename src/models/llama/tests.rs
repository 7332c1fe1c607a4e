//! Tests of the Llama family on tiny random models the tests write themselves.

use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};

use super::net::{self, LayerWeights, Rope};
use super::weights::{self, Init};
use super::*;
use crate::proxy::builtin::Reads;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lpzero-llama-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny config: H 16, FFN 24, 2 layers, 4 heads over 2 key/value heads (GQA), vocab 50.
fn tiny() -> LlamaConfig {
    LlamaConfig::from_json(
        r#"{"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "vocab_size": 50, "tie_word_embeddings": false,
            "initializer_range": 0.2}"#,
    )
    .unwrap()
}

fn vec1(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "entry {i}: {x} vs {y}"
        );
    }
}

fn t(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape, &Device::Cpu).unwrap()
}

/// Central finite differences of `f` at `x` against the autograd gradient of `f`.
fn check_grad(x: &[f32], shape: &[usize], f: impl Fn(&Tensor) -> Tensor) {
    let var = Var::from_tensor(&t(x, shape)).unwrap();
    let y = f(var.as_tensor());
    let grads = y.backward().unwrap();
    let g = vec1(grads.get(var.as_tensor()).unwrap());
    let h = 1e-2f32;
    for i in 0..x.len() {
        let mut plus = x.to_vec();
        plus[i] += h;
        let mut minus = x.to_vec();
        minus[i] -= h;
        let fp = f(&t(&plus, shape)).to_scalar::<f32>().unwrap() as f64;
        let fm = f(&t(&minus, shape)).to_scalar::<f32>().unwrap() as f64;
        let fd = ((fp - fm) / (2.0 * h as f64)) as f32;
        assert!(
            (fd - g[i]).abs() <= 2e-2 * (1.0 + fd.abs()),
            "entry {i}: finite difference {fd}, autograd {}",
            g[i]
        );
    }
}

/// A fixed pseudo-random vector (no dependence on the crate's streams).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(seed);
    rng.normal_vec(n, 1.0)
}

#[test]
fn config_reads_defaults_and_names_bad_fields() {
    let c = LlamaConfig::from_json(
        r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "vocab_size": 10, "architectures": ["LlamaForCausalLM"]}"#,
    )
    .unwrap();
    assert_eq!(c.kv_heads(), 2);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.rope_theta, 10000.0);
    assert!(!c.tie_word_embeddings);
    let err = LlamaConfig::from_json(r#"{"hidden_size": "x"}"#).unwrap_err();
    assert!(format!("{err:#}").contains("hidden_size"), "{err:#}");
    let err = LlamaConfig::from_json(
        r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 3, "vocab_size": 10}"#,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("num_key_value_heads"),
        "{err:#}"
    );
}

#[test]
fn rms_norm_matches_hand_values_and_finite_differences() {
    // x = [3, 4]: mean square 12.5, so y = x / sqrt(12.5) · w.
    let y = net::rms_norm(&t(&[3.0, 4.0], &[1, 2]), &t(&[1.0, 2.0], &[2]), 0.0).unwrap();
    let s = 12.5f32.sqrt();
    close(&vec1(&y), &[3.0 / s, 8.0 / s], 1e-6);
    let r = t(&values(6, 1), &[2, 3]);
    let w = t(&[0.5, 1.5, -1.0], &[3]);
    check_grad(&values(6, 2), &[2, 3], |x| {
        net::rms_norm(x, &w, 1e-5)
            .unwrap()
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
    });
}

#[test]
fn rope_matches_hand_values_and_finite_differences() {
    // head size 4: angles p·1 and p·10000^(−1/2) = p/100; halves [1, 2] and [3, 4].
    let rope = Rope::new(2, 4, 10000.0, &Device::Cpu).unwrap();
    let x = t(&[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 4]);
    let y = vec1(&rope.apply(&x).unwrap());
    let (c1, s1, c2, s2) = (1f32.cos(), 1f32.sin(), 0.01f32.cos(), 0.01f32.sin());
    let want = [
        1.0,
        2.0,
        3.0,
        4.0,
        c1 - 3.0 * s1,
        2.0 * c2 - 4.0 * s2,
        3.0 * c1 + s1,
        4.0 * c2 + 2.0 * s2,
    ];
    close(&y, &want, 1e-6);
    let r = t(&values(16, 3), &[1, 2, 2, 4]);
    let rope = Rope::new(2, 4, 10000.0, &Device::Cpu).unwrap();
    check_grad(&values(16, 4), &[1, 2, 2, 4], |x| {
        rope.apply(x).unwrap().mul(&r).unwrap().sum_all().unwrap()
    });
}

#[test]
fn swiglu_matches_hand_values_and_finite_differences() {
    let y = net::swiglu(&t(&[0.0, 1.0, -1.0], &[3]), &t(&[2.0, 3.0, 4.0], &[3])).unwrap();
    let silu = |v: f32| v / (1.0 + (-v).exp());
    close(&vec1(&y), &[0.0, 3.0 * silu(1.0), 4.0 * silu(-1.0)], 1e-6);
    let up = t(&values(5, 5), &[5]);
    check_grad(&values(5, 6), &[5], |g| {
        net::swiglu(g, &up).unwrap().sum_all().unwrap()
    });
}

#[test]
fn grouped_query_attention_shares_key_value_heads() {
    // 4 query heads of size 2 over 2 key/value heads equals 4 key/value heads where heads
    // 2i and 2i+1 repeat key/value head i.
    let (b, tt, d) = (1, 3, 2);
    let rope = Rope::new(tt, d, 10000.0, &Device::Cpu).unwrap();
    let q = t(&values(b * tt * 4 * d, 7), &[b, tt, 4 * d]);
    let k = values(b * tt * 2 * d, 8);
    let v = values(b * tt * 2 * d, 9);
    let repeat = |x: &[f32]| -> Vec<f32> {
        x.chunks(2 * d)
            .flat_map(|tok| {
                let (h0, h1) = tok.split_at(d);
                [h0, h0, h1, h1].concat()
            })
            .collect()
    };
    let (gqa, _) = net::attention(
        &q,
        &t(&k, &[b, tt, 2 * d]),
        &t(&v, &[b, tt, 2 * d]),
        (4, 2, d),
        &rope,
    )
    .unwrap();
    let (mha, probs) = net::attention(
        &q,
        &t(&repeat(&k), &[b, tt, 4 * d]),
        &t(&repeat(&v), &[b, tt, 4 * d]),
        (4, 4, d),
        &rope,
    )
    .unwrap();
    close(&vec1(&gqa), &vec1(&mha), 1e-6);
    // The first token attends only to itself: its output is its value.
    let first = &vec1(&gqa)[..4 * d];
    close(first, &repeat(&v[..2 * d]), 1e-6);
    let p = vec1(&probs);
    assert_eq!(p[1], 0.0, "causal mask");
    // Finite differences through the whole attention (with the key/value input).
    let r = t(&values(b * tt * 4 * d, 10), &[b, tt, 4 * d]);
    let kt = t(&k, &[b, tt, 2 * d]);
    check_grad(&values(b * tt * 2 * d, 11), &[b, tt, 2 * d], |vv| {
        let (y, _) = net::attention(&q, &kt, vv, (4, 2, d), &rope).unwrap();
        y.mul(&r).unwrap().sum_all().unwrap()
    });
    check_grad(&k, &[b, tt, 2 * d], |kk| {
        let (y, _) = net::attention(&q, kk, &t(&v, &[b, tt, 2 * d]), (4, 2, d), &rope).unwrap();
        y.mul(&r).unwrap().sum_all().unwrap()
    });
}

#[test]
fn decoder_layer_gradients_match_finite_differences() {
    let c = tiny();
    let model = LlamaModel {
        dir: PathBuf::new(),
        config: c.clone(),
        weights: WeightSource::Random { seed: 3, std: 0.2 },
    };
    let subnet = Subnet::full(&c);
    let m = model.with(&subnet);
    let w = m.layer_weights(0).unwrap();
    let rope = Rope::new(3, c.head_dim(), c.rope_theta, &Device::Cpu).unwrap();
    let x = t(&values(3 * 16, 12), &[1, 3, 16]);
    let r = t(&values(3 * 16, 13), &[1, 3, 16]);
    let shape = m.attn_shape(0);
    let down = vec1(&w.down);
    check_grad(&down, &[16, 24], |dw| {
        let lw = LayerWeights {
            attn_norm: w.attn_norm.clone(),
            q: w.q.clone(),
            k: w.k.clone(),
            v: w.v.clone(),
            o: w.o.clone(),
            ffn_norm: w.ffn_norm.clone(),
            gate: w.gate.clone(),
            up: w.up.clone(),
            down: dw.clone(),
        };
        let y = net::layer(&x, &lw, shape, c.rms_norm_eps, &rope).unwrap().y;
        y.mul(&r).unwrap().sum_all().unwrap()
    });
    check_grad(&vec1(&x), &[1, 3, 16], |xx| {
        let y = net::layer(xx, &w, shape, c.rms_norm_eps, &rope).unwrap().y;
        y.mul(&r).unwrap().sum_all().unwrap()
    });
}

/// Writes a tiny random model (config.json and model.safetensors) to a new folder.
fn write_tiny(name: &str, seed: u64) -> (PathBuf, LlamaConfig) {
    let c = tiny();
    let dir = temp_dir(name);
    let source = WeightSource::Random { seed, std: 0.2 };
    weights::save_model(&dir, &c, weights::materialize(&c, &source).unwrap()).unwrap();
    (dir, c)
}

#[test]
fn safetensors_round_trip_single_and_sharded() {
    let (dir, c) = write_tiny("roundtrip", 5);
    let drawn = LlamaModel {
        dir: PathBuf::new(),
        config: c.clone(),
        weights: WeightSource::Random { seed: 5, std: 0.2 },
    };
    let read = LlamaModel::open(&dir, 999).unwrap();
    assert!(!read.weights.is_random());
    let batch = super::batch(&c, 2, 5, None, 1).unwrap();
    let full = Subnet::full(&c);
    let a = drawn.with(&full).loss(&batch).unwrap();
    let b = read.with(&full).loss(&batch).unwrap();
    assert_eq!(a, b);
    // Two shards and an index.
    let shard_dir = temp_dir("sharded");
    std::fs::copy(dir.join("config.json"), shard_dir.join("config.json")).unwrap();
    let tensors = weights::materialize(&c, &drawn.weights).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (first, "model-00001-of-00002.safetensors"),
        (second, "model-00002-of-00002.safetensors"),
    ] {
        for (n, _) in part {
            map.insert(n.clone(), file.into());
        }
        weights::save(&shard_dir.join(file), part.to_vec()).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(shard_dir.join(weights::INDEX_FILE), index.to_string()).unwrap();
    let sharded = LlamaModel::open(&shard_dir, 0).unwrap();
    assert_eq!(sharded.with(&full).loss(&batch).unwrap(), a);
    // Half-precision checkpoints (how LLaMA weights are published): read as f32 of the stored
    // values, so the model equals the f32 one whose weights are those rounded values.
    for dtype in [candle_core::DType::BF16, candle_core::DType::F16] {
        let half_dir = temp_dir(&format!("half-{dtype:?}"));
        std::fs::copy(dir.join("config.json"), half_dir.join("config.json")).unwrap();
        let half: Vec<(String, candle_core::Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(dtype).unwrap()))
            .collect();
        weights::save(&half_dir.join("model.safetensors"), half.clone()).unwrap();
        let rounded_dir = temp_dir(&format!("rounded-{dtype:?}"));
        std::fs::copy(dir.join("config.json"), rounded_dir.join("config.json")).unwrap();
        let rounded = half
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(candle_core::DType::F32).unwrap()))
            .collect();
        weights::save(&rounded_dir.join("model.safetensors"), rounded).unwrap();
        let h = LlamaModel::open(&half_dir, 0).unwrap();
        let r = LlamaModel::open(&rounded_dir, 0).unwrap();
        let lh = h.with(&full).loss(&batch).unwrap();
        assert_eq!(lh, r.with(&full).loss(&batch).unwrap(), "{dtype:?}");
        assert!(
            lh != a && (lh - a).abs() < 0.01 * a.abs(),
            "{dtype:?}: {lh} vs {a}"
        );
        for d in [half_dir, rounded_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    // A tensor of the wrong shape is named.
    let bad = temp_dir("badshape");
    let mut c2 = c.clone();
    c2.intermediate_size = 20;
    let json = serde_json::to_string(&c2).unwrap();
    std::fs::write(bad.join("config.json"), json).unwrap();
    std::fs::copy(dir.join("model.safetensors"), bad.join("model.safetensors")).unwrap();
    let m = LlamaModel::open(&bad, 0).unwrap();
    let sub = Subnet::full(&c2);
    let err = m.with(&sub).loss(&batch).unwrap_err();
    assert!(format!("{err:#}").contains("mlp.gate_proj"), "{err:#}");
    for d in [dir, shard_dir, bad] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn seeded_weights_are_deterministic() {
    let c = tiny();
    let a = WeightSource::Random { seed: 1, std: 0.02 };
    let b = WeightSource::Random { seed: 1, std: 0.02 };
    let x = a.load(weights::EMBED, &[50, 16], Init::Normal).unwrap();
    let y = b.load(weights::EMBED, &[50, 16], Init::Normal).unwrap();
    assert_eq!(vec1(&x), vec1(&y));
    let z = WeightSource::Random { seed: 2, std: 0.02 }
        .load(weights::EMBED, &[50, 16], Init::Normal)
        .unwrap();
    assert_ne!(vec1(&x), vec1(&z));
    assert_eq!(c.head_dim(), 4);
}

#[test]
fn llama_7b_counts_match_the_published_values() {
    let c = LlamaConfig::llama_7b();
    let space = SubnetSpace::lonas(&c);
    assert_eq!(space.ffn_choices, vec![11008, 9632, 8256, 6880, 5504]);
    let max = space.named(Named::Maximal).count(&c).unwrap();
    assert_eq!(max.total, 6_738_415_616);
    let heur = space.named(Named::Heuristic);
    assert_eq!(heur.ffn_widths, vec![8256; 32]);
    assert_eq!(heur.count(&c).unwrap().total, 5_656_285_184);
    let min = space.named(Named::Minimal).count(&c).unwrap();
    assert!(min.total < 5_656_285_184);
    // The shipped example config gives the same numbers.
    let shipped = LlamaConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/llama-7b/config.json"),
    )
    .unwrap();
    assert_eq!(shipped, c);
}

#[test]
fn counts_match_the_tensors_of_a_built_model() {
    let c = tiny();
    let specs = weights::tensor_specs(&c);
    let total: usize = specs
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(Subnet::full(&c).count(&c).unwrap().total, total as u64);
    // A sub-network counts exactly its sliced tensors.
    let sub = Subnet {
        ffn_widths: vec![12, 18],
        heads: Some(vec![2, 4]),
    };
    let model = LlamaModel {
        dir: PathBuf::new(),
        config: c.clone(),
        weights: WeightSource::Random { seed: 0, std: 0.2 },
    };
    let m = model.with(&sub);
    let mut sliced = 2 * 50 * 16 + 16;
    for l in 0..2 {
        let w = m.layer_weights(l).unwrap();
        sliced += w.attn_norm.elem_count() + w.ffn_norm.elem_count();
        sliced += w
            .linears()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum::<usize>();
    }
    assert_eq!(sub.count(&c).unwrap().total, sliced as u64);
}

#[test]
fn slicing_keeps_leading_rows_and_columns() {
    let c = tiny();
    let model = LlamaModel {
        dir: PathBuf::new(),
        config: c.clone(),
        weights: WeightSource::Random { seed: 4, std: 0.2 },
    };
    let full = Subnet::full(&c);
    let sub = Subnet {
        ffn_widths: vec![12, 24],
        heads: Some(vec![2, 4]),
    };
    let wf = model.with(&full).layer_weights(0).unwrap();
    let ws = model.with(&sub).layer_weights(0).unwrap();
    assert_eq!(ws.gate.dims(), &[12, 16]);
    assert_eq!(ws.down.dims(), &[16, 12]);
    assert_eq!(ws.q.dims(), &[8, 16]);
    assert_eq!(ws.k.dims(), &[4, 16]);
    assert_eq!(ws.o.dims(), &[16, 8]);
    assert_eq!(vec1(&ws.gate), vec1(&wf.gate.narrow(0, 0, 12).unwrap()));
    assert_eq!(vec1(&ws.down), vec1(&wf.down.narrow(1, 0, 12).unwrap()));
    assert_eq!(vec1(&ws.o), vec1(&wf.o.narrow(1, 0, 8).unwrap()));
    assert_eq!(vec1(&ws.k), vec1(&wf.k.narrow(0, 0, 4).unwrap()));
}

#[test]
fn a_subnet_changes_parameters_and_outputs() {
    // The LoNAS bug to guard against: activating a sub-network must change both.
    let (dir, c) = write_tiny("subnet-changes", 6);
    let model = LlamaModel::open(&dir, 0).unwrap();
    let space = model.space();
    let batch = super::batch(&c, 2, 6, None, 2).unwrap();
    let (max, heur) = (space.named(Named::Maximal), space.named(Named::Heuristic));
    assert_ne!(max, heur);
    let (pm, ph) = (max.count(&c).unwrap(), heur.count(&c).unwrap());
    assert!(pm.total > ph.total);
    let (lm, lh) = (
        model.with(&max).loss(&batch).unwrap(),
        model.with(&heur).loss(&batch).unwrap(),
    );
    assert_ne!(lm, lh);
    let proxies = [
        Proxy::parse("params").unwrap(),
        Proxy::parse("snip").unwrap(),
    ];
    let sm = score(&model, &max, &batch, &proxies, Mode::Auto).unwrap();
    let sh = score(&model, &heur, &batch, &proxies, Mode::Auto).unwrap();
    assert_eq!(sm.values[0], pm.total as f64);
    assert_eq!(sh.values[0], ph.total as f64);
    assert_ne!(sm.values[1], sh.values[1]);
    let _ = std::fs::remove_dir_all(dir);
}

/// The probe of `sub` made by the shared probing path ([`crate::probe::run`]) on the
/// sub-network's whole graph ([`graph::Graph`]: every layer's weights as variables at once,
/// one forward and one backward through all of them): the reference for the streaming pass.
fn graph_probe(model: &LlamaModel, sub: &Subnet, batch: &Batch, extra_passes: bool) -> Probe {
    let opts = crate::probe::ProbeOptions {
        batch: batch.rows,
        seq_len: batch.cols - 1,
        seed: 0,
        grad_signal: Default::default(),
        sizes: Default::default(),
        dropout: false,
        corpus: None,
        extra_passes,
        storage: Default::default(),
        pass: Default::default(),
        diversity_ahead: false,
    };
    crate::probe::run("graph".into(), 0, &opts, &SEMANTICS, |_| {
        graph::Graph::new(&model.with(sub), batch)
    })
    .unwrap()
}

#[test]
fn streaming_probe_equals_one_whole_backward() {
    let c = tiny();
    let model = LlamaModel {
        dir: PathBuf::new(),
        config: c.clone(),
        weights: WeightSource::Random { seed: 8, std: 0.2 },
    };
    let sub = Subnet {
        ffn_widths: vec![12, 24],
        heads: Some(vec![4, 2]),
    };
    let batch = super::batch(&c, 2, 5, None, 3).unwrap();
    let want = graph_probe(&model, &sub, &batch, false);
    let probe = whole_probe(&model.with(&sub), &batch, "t", false).unwrap();
    assert!((probe.loss - want.loss).abs() < 1e-6);
    // The graph holds exactly the sub-network's tensors.
    assert_eq!(probe.params, want.params);
    assert_eq!(probe.linears.len(), 14);
    assert_eq!(want.linears.len(), 14);
    for (lin, w) in probe.linears.iter().zip(&want.linears) {
        assert_eq!((&lin.name, lin.layer, lin.role), (&w.name, w.layer, w.role));
        assert!(lin.weight == w.weight, "{}", lin.name);
        close(&lin.grad.data(), &w.grad.data(), 1e-4);
        assert!(
            lin.grad.data().iter().any(|&x| x != 0.0),
            "{} has no gradient",
            lin.name
        );
    }
    let lists = |p: &Probe| -> Vec<Array> {
        let mut all: Vec<Array> = p.act.iter().chain(p.head.iter()).cloned().collect();
        all.extend(p.softmax.iter().chain(p.mixer_outputs.iter()).cloned());
        all
    };
    let (got, expected) = (lists(&probe), lists(&want));
    assert_eq!(got.len(), expected.len());
    for (a, b) in got.iter().zip(&expected) {
        assert_eq!(a.shape(), b.shape());
        close(&a.data(), &b.data(), 1e-5);
    }
    close(
        &probe.position_grad.data(),
        &want.position_grad.data(),
        1e-4,
    );
    assert_eq!(probe.act.len(), 2);
    assert_eq!(probe.act[0].shape(), &[2, 5, 12]);
    assert_eq!(probe.softmax[1].shape(), &[2, 2, 5, 5]);
    assert_eq!(probe.position_grad.shape(), &[5, 16]);
}

/// A random model of `layers` tiny layers and a sub-network whose FFN widths and heads vary
/// by layer, so that a proxy reading the wrong layer's arrays gets another value.
fn varied(layers: usize, seed: u64) -> (LlamaModel, Subnet) {
    let mut c = tiny();
    c.num_hidden_layers = layers;
    let sub = Subnet {
        ffn_widths: (0..layers).map(|l| [24, 12, 18][l % 3]).collect(),
        heads: Some((0..layers).map(|l| [4, 2][l % 2]).collect()),
    };
    let model = LlamaModel {
        dir: PathBuf::new(),
        config: c,
        weights: WeightSource::Random { seed, std: 0.2 },
    };
    (model, sub)
}

/// Scores `proxies` with a whole probe and streaming, and checks that every value is the
/// same up to float rounding (`finite`: and that it is a number, so that the check means
/// something).
fn assert_streaming_equals_whole(
    model: &LlamaModel,
    sub: &Subnet,
    batch: &Batch,
    proxies: &[Proxy],
    finite: impl Fn(&Proxy) -> bool,
) {
    let whole = score(model, sub, batch, proxies, Mode::Whole).unwrap();
    let streamed = score(model, sub, batch, proxies, Mode::Stream).unwrap();
    assert!(streamed.streamed && !whole.streamed);
    assert_eq!(whole.loss, streamed.loss);
    for (p, (a, b)) in proxies
        .iter()
        .zip(whole.values.iter().zip(&streamed.values))
    {
        if finite(p) {
            assert!(a.is_finite(), "{}: whole probe {a}", p.name());
        }
        assert!(
            (a - b).abs() <= 1e-9 * a.abs().max(1.0) || (a.is_nan() && b.is_nan()),
            "{}: whole {a}, streamed {b}",
            p.name()
        );
    }
}

#[test]
fn streamed_builtins_equal_the_whole_probe_or_are_refused() {
    let (model, sub) = varied(3, 9);
    let batch = super::batch(&model.config, 2, 6, None, 4).unwrap();
    let layers = model.config.num_hidden_layers;
    let mut streams = Vec::new();
    for b in crate::proxy::builtin::BUILTINS
        .iter()
        .filter(|b| !b.extra_passes())
    {
        let p = Proxy::Builtin(b);
        match StreamProxy::of(&p, layers) {
            Ok(_) => streams.push(p),
            Err(err) => {
                // Only what reads every linear at once is refused, by name.
                assert_eq!(b.reads, Reads::AllLinears, "{} refused: {err:#}", b.name);
                let text = format!("{err:#}");
                assert!(text.contains(&format!("`{}`", b.name)), "{text}");
                assert!(text.contains("together"), "{text}");
                let err = score(&model, &sub, &batch, &[p], Mode::Stream).unwrap_err();
                assert_eq!(format!("{err:#}"), text);
            }
        }
    }
    let names: Vec<String> = streams.iter().map(Proxy::name).collect();
    for needed in [
        "params",
        "head_confidence",
        "head_softmax_confidence_normalized",
        "activation_distance",
        "jacobian_cosine",
        "jacobian_score",
        "jacob_cov_relu",
        "eznas",
        "w_pca",
        "snip",
        "synaptic_diversity",
        "synaptic_diversity_normalized",
        "synaptic_saliency_normalized",
        "head_importance_normalized",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} does not stream"
        );
    }
    // No decoder parameter groups in a Llama (NaN both ways); head importance reads linears
    // with ≥ 128 rows, none here (0 both ways, so its mean is 0 / 0 both ways).
    assert_streaming_equals_whole(&model, &sub, &batch, &streams, |p| {
        p.name() != "decoder_params" && p.name() != "head_importance_normalized"
    });
    // Every single-pass built-in has a value on the whole probe (but the two above and the
    // mean head importance, 0 / 0 here).
    for b in crate::proxy::builtin::BUILTINS.iter().filter(|b| {
        !b.extra_passes() && b.name != "decoder_params" && b.name != "head_importance_normalized"
    }) {
        let v = score(&model, &sub, &batch, &[Proxy::Builtin(b)], Mode::Whole).unwrap();
        assert!(v.values[0].is_finite(), "{}: {}", b.name, v.values[0]);
    }
}

#[test]
fn streamed_expressions_equal_the_whole_probe() {
    // 8 layers: 56 linears, so an expression pairing act (8 items) with weight reads linear 7,
    // the first of layer 1, beside the act of layer 7.
    let (model, sub) = varied(8, 10);
    let batch = super::batch(&model.config, 1, 7, None, 5).unwrap();
    // Each expression with whether the pass must keep the captures for it.
    let texts = [
        // Captures only (`total` too: the lists are whole at the end).
        ("mean(l1_norm(softmax))", true),
        ("add(std(head), mean(abs(act)))", true),
        ("log(total(abs(act)))", true),
        ("lpzero_bert", true),
        ("lpzero_csv_bert", true),
        // Captures with weight or grad, item by item.
        ("add(mean(act), mean(weight))", true),
        ("mul(std(head), frobenius_norm(grad))", true),
        ("sub(l1_norm(softmax), mean(abs(mul(weight, grad))))", true),
        ("add(mean(pow2(act)), mean(abs(weight)))", true),
        // (Its canonical form drops the disconnected operand.)
        ("sub(disconnect(act), mean(abs(weight)))", false),
        // Weight and grad only.
        ("mean(abs(mul(weight, grad)))", false),
        ("lpzero_gpt2", false),
        // No value either way (shapes that do not combine).
        ("matmul(act, weight)", true),
    ];
    let layers = model.config.num_hidden_layers;
    let mut proxies = Vec::new();
    for (text, captures) in texts {
        let p = Proxy::parse(text).unwrap();
        let plan = StreamProxy::of(&p, layers).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(plan.reads_captures(), captures, "{text}");
        proxies.push(p);
    }
    assert_streaming_equals_whole(&model, &sub, &batch, &proxies, |p| {
        p.name() != "matmul(act, weight)"
    });
}

#[test]
fn streaming_refuses_what_it_cannot_compute_exactly() {
    let (model, sub) = varied(2, 11);
    let batch = super::batch(&model.config, 1, 5, None, 6).unwrap();
    let refused = |text: &str| {
        let p = Proxy::parse(text).unwrap();
        let err = score(&model, &sub, &batch, &[p], Mode::Stream).unwrap_err();
        format!("{err:#}")
    };
    // `total` over weight or grad needs every linear at once.
    for text in [
        "total(weight)",
        "add(total(mean(grad)), act)",
        "mul(total(act), grad)",
    ] {
        let err = refused(text);
        assert!(err.contains(&format!("`{text}`")), "{err}");
        assert!(err.contains("`total`"), "{err}");
    }
    // Extra passes run on the whole graph only: refused by name, pointing at the whole probe.
    let extra: Vec<&str> = crate::proxy::builtin::BUILTINS
        .iter()
        .filter(|b| b.extra_passes())
        .map(|b| b.name)
        .collect();
    assert_eq!(extra.len(), 6, "{extra:?}");
    for name in extra {
        let err = refused(name);
        assert!(
            err.contains(&format!("proxy `{name}` needs extra passes")),
            "{err}"
        );
        assert!(err.contains("not on the streaming pass"), "{err}");
        assert!(err.contains("mode `whole`"), "{err}");
    }
    // Captures too large for the streaming pass: refused before probing, naming the proxy.
    let huge = super::batch(&model.config, 64, 4096, None, 6).unwrap();
    let bytes = stream::capture_bytes(&model.config, &sub, &huge);
    assert!(bytes > STREAM_CAPTURE_BYTES, "{bytes}");
    for text in ["head_confidence", "add(mean(act), mean(weight))"] {
        let p = Proxy::parse(text).unwrap();
        let err = score(&model, &sub, &huge, &[p], Mode::Stream).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(&format!("`{text}`")), "{err}");
        assert!(err.contains("lower the batch rows"), "{err}");
    }
    // The estimate is exact: the bytes of the whole probe's captures.
    let probe = whole_probe(&model.with(&sub), &batch, "t", false).unwrap();
    let floats: usize = probe
        .act
        .iter()
        .chain(probe.head.iter())
        .chain(&probe.softmax)
        .chain(probe.mixer_outputs.iter())
        .map(Array::len)
        .sum();
    assert_eq!(
        stream::capture_bytes(&model.config, &sub, &batch),
        4 * floats as u64
    );
}

#[test]
fn progress_counts_two_passes_per_layer() {
    let c = tiny();
    let model = LlamaModel {
        dir: PathBuf::new(),
        config: c.clone(),
        weights: WeightSource::Random { seed: 1, std: 0.2 },
    };
    let sub = Subnet::full(&c);
    let batch = super::batch(&c, 1, 4, None, 0).unwrap();
    let n = std::cell::Cell::new(0);
    let tick = || n.set(n.get() + 1);
    let p = [Proxy::parse("snip").unwrap()];
    score_with_progress(&model, &sub, &batch, &p, Mode::Stream, Some(&tick)).unwrap();
    assert_eq!(n.get(), 2 * c.num_hidden_layers);
}

/// The extra-pass built-ins, in table order.
fn extra_pass_proxies() -> Vec<Proxy> {
    crate::proxy::builtin::BUILTINS
        .iter()
        .filter(|b| b.extra_passes())
        .map(Proxy::Builtin)
        .collect()
}

#[test]
fn extra_pass_proxies_have_values_on_the_whole_probe() {
    let (model, sub) = varied(2, 12);
    let batch = super::batch(&model.config, 2, 5, None, 7).unwrap();
    let extra = extra_pass_proxies();
    let names: Vec<String> = extra.iter().map(Proxy::name).collect();
    for needed in [
        "fisher",
        "grasp",
        "synflow",
        "logsynflow",
        "jacob_cov",
        "attention_confidence",
    ] {
        assert!(names.iter().any(|n| n == needed), "{needed}: {names:?}");
    }
    let whole = score(&model, &sub, &batch, &extra, Mode::Whole).unwrap();
    assert!(!whole.streamed);
    for (name, v) in names.iter().zip(&whole.values) {
        if name == "logsynflow" {
            // Synflow's all-ones input makes every token the same vector, so q_proj and k_proj
            // get no gradient (see the finite-difference test): the log of those gradients is
            // undefined, and the family says so with NaN instead of +∞ or rounding noise.
            assert!(v.is_nan(), "{name}: {v}");
        } else {
            assert!(v.is_finite(), "{name}: {v}");
        }
    }
    // A tiny model fits the whole probe: `auto` runs the same passes.
    let auto = score(&model, &sub, &batch, &extra, Mode::Auto).unwrap();
    assert!(!auto.streamed);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&auto.values), bits(&whole.values));
    // The passes run on their own graph: the single-pass proxies keep their values, and the
    // probe's own loss is unchanged.
    let single = ["snip", "head_confidence"].map(|n| Proxy::parse(n).unwrap());
    let mut mixed: Vec<Proxy> = ["snip", "head_confidence"]
        .iter()
        .map(|n| Proxy::parse(n).unwrap())
        .collect();
    mixed.extend(extra_pass_proxies());
    let alone = score(&model, &sub, &batch, &single, Mode::Whole).unwrap();
    let together = score(&model, &sub, &batch, &mixed, Mode::Whole).unwrap();
    assert_eq!(alone.values[..], together.values[..2]);
    assert_eq!(bits(&together.values[2..]), bits(&whole.values));
    assert_eq!(alone.loss, together.loss);
    // Synflow reads no token (its input is all ones): another batch of the same shape gives
    // the same bits, while the proxies of the probe's own signal move.
    let other = super::batch(&model.config, 2, 5, None, 8).unwrap();
    assert_ne!(other.ids, batch.ids);
    let moved = score(&model, &sub, &other, &extra, Mode::Whole).unwrap();
    for ((name, a), b) in names.iter().zip(&whole.values).zip(&moved.values) {
        match name.as_str() {
            "synflow" | "logsynflow" => assert_eq!(a.to_bits(), b.to_bits(), "{name}"),
            _ => assert_ne!(a, b, "{name}"),
        }
    }
}

#[test]
fn the_bench_file_path_runs_the_extra_passes_when_asked() {
    let (dir, c) = write_tiny("family-extras", 13);
    let sub = Subnet {
        ffn_widths: vec![12, 24],
        heads: None,
    };
    let arch = crate::bench::Arch::new(crate::bench::llama::Record {
        model: dir.to_string_lossy().into_owned(),
        ffn_widths: sub.ffn_widths.clone(),
        heads: None,
    });
    let fam: &dyn crate::models::Family = &FAMILY;
    let mut opts = fam.probe_options();
    opts.seq_len = 6;
    let batch = fam.build_batch(&opts).unwrap();
    let plain = fam.probe(&arch, 0, &opts, &batch).unwrap();
    assert!(plain.extras.is_none());
    opts.extra_passes = true;
    let probe = fam.probe(&arch, 0, &opts, &batch).unwrap();
    let fisher = Proxy::parse("fisher").unwrap();
    assert!(fisher.compute(&plain).is_nan());
    assert!(fisher.compute(&probe).is_finite());
    assert_eq!(probe.loss, plain.loss);
    assert_eq!(probe.params as u64, sub.count(&c).unwrap().total);
    let _ = std::fs::remove_dir_all(dir);
}

/// Synflow's readout computed independently of the engine: a plain `f64` Llama forward of one
/// row of `tokens` all-ones input embeddings through the decoder layers `layers` (per layer the
/// nine tensors attention norm, q, k, v, o, FFN norm, gate, up, down; out × in, row-major) with
/// `shapes` (heads, key/value heads, head size), the final norm and the LM head: the sum of
/// the logits.
fn f64_readout(
    c: &LlamaConfig,
    shapes: &[(usize, usize, usize)],
    layers: &[Vec<Vec<f64>>],
    (final_norm, head): (&[f64], &[f64]),
    tokens: usize,
) -> f64 {
    let norm = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + c.rms_norm_eps).sqrt();
        x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
    };
    let mv = |w: &[f64], x: &[f64]| -> Vec<f64> {
        w.chunks(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    let rope = |x: &mut [f64], p: usize| {
        let half = x.len() / 2;
        for i in 0..half {
            let angle = p as f64 * c.rope_theta.powf(-2.0 * i as f64 / x.len() as f64);
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * angle.cos() - b * angle.sin();
            x[i + half] = b * angle.cos() + a * angle.sin();
        }
    };
    let mut x = vec![vec![1.0; c.hidden_size]; tokens];
    for (w, &(heads, kv, d)) in layers.iter().zip(shapes) {
        let hn: Vec<Vec<f64>> = x.iter().map(|t| norm(t, &w[0])).collect();
        let proj = |i: usize| -> Vec<Vec<f64>> { hn.iter().map(|t| mv(&w[i], t)).collect() };
        let (mut q, mut k, v) = (proj(1), proj(2), proj(3));
        for p in 0..tokens {
            q[p].chunks_mut(d).for_each(|h| rope(h, p));
            k[p].chunks_mut(d).for_each(|h| rope(h, p));
        }
        for p in 0..tokens {
            let mut mixed = vec![0.0; heads * d];
            for hd in 0..heads {
                let g = hd / (heads / kv);
                let qh = &q[p][hd * d..(hd + 1) * d];
                let scores: Vec<f64> = (0..=p)
                    .map(|u| {
                        let kh = &k[u][g * d..(g + 1) * d];
                        qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (u, eu) in e.iter().enumerate() {
                    for j in 0..d {
                        mixed[hd * d + j] += eu / z * v[u][g * d + j];
                    }
                }
            }
            let o = mv(&w[4], &mixed);
            x[p].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        for t in x.iter_mut() {
            let hn = norm(t, &w[5]);
            let (gate, up) = (mv(&w[6], &hn), mv(&w[7], &hn));
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            t.iter_mut().zip(mv(&w[8], &act)).for_each(|(a, b)| *a += b);
        }
    }
    x.iter()
        .map(|t| mv(head, &norm(t, final_norm)).iter().sum::<f64>())
        .sum()
}

#[test]
fn synflow_matches_finite_differences_of_an_f64_forward() {
    // Spec §3.3 for a decoder (as the GPT-2 family reads it): every parameter absolute-valued,
    // one row of all-ones input embeddings, R = Σ of the LM head's logits, and Σ |W ⊙ ∂R/∂W|
    // over the seven linears of every layer. Here ∂R/∂W comes from central differences of
    // an independent f64 forward, one weight at a time.
    let (model, sub) = varied(2, 14);
    let c = &model.config;
    let tokens = 4;
    let batch = super::batch(c, 1, tokens, None, 9).unwrap();
    let m = model.with(&sub);
    let abs = |t: &Tensor| -> Vec<f64> { vec1(t).iter().map(|&v| (v as f64).abs()).collect() };
    let mut layers: Vec<Vec<Vec<f64>>> = (0..c.num_hidden_layers)
        .map(|l| {
            let w = m.layer_weights(l).unwrap();
            [
                &w.attn_norm,
                &w.q,
                &w.k,
                &w.v,
                &w.o,
                &w.ffn_norm,
                &w.gate,
                &w.up,
                &w.down,
            ]
            .into_iter()
            .map(abs)
            .collect()
        })
        .collect();
    let shapes: Vec<_> = (0..c.num_hidden_layers).map(|l| m.attn_shape(l)).collect();
    let (final_norm, head) = (abs(&m.final_norm().unwrap()), abs(&m.lm_head().unwrap()));
    let readout =
        |layers: &[Vec<Vec<f64>>]| f64_readout(c, &shapes, layers, (&final_norm, &head), tokens);
    let step = 1e-6;
    let (mut want, mut query_key) = (0.0, 0.0);
    for l in 0..layers.len() {
        // The linears among the nine tensors (not the norms).
        for i in [1, 2, 3, 4, 6, 7, 8] {
            for e in 0..layers[l][i].len() {
                let w = layers[l][i][e];
                layers[l][i][e] = w + step;
                let plus = readout(&layers);
                layers[l][i][e] = w - step;
                let minus = readout(&layers);
                layers[l][i][e] = w;
                let term = w * ((plus - minus) / (2.0 * step)).abs();
                want += term;
                if i <= 2 {
                    query_key += term;
                }
            }
        }
    }
    // What the definition implies for a RoPE decoder: all-ones input rows stay identical
    // through every layer, so attention mixes identical values and q_proj, k_proj do not
    // move the readout (their terms are rounding noise).
    assert!(query_key <= 1e-6 * want, "q/k terms {query_key} of {want}");
    let synflow = Proxy::parse("synflow").unwrap();
    let got = score(&model, &sub, &batch, &[synflow], Mode::Whole)
        .unwrap()
        .values[0];
    assert!(want > 0.0 && want.is_finite(), "{want}");
    assert!(
        (got - want).abs() <= 1e-4 * want,
        "synflow {got}, finite differences {want}"
    );
}
