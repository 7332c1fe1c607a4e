//! The GPT-2 benchmark family: loader validation, parameter counts (spec §5.3), the adaptive
//! softmax, probes and the `lpzero_gpt2` closed-form oracle (spec §4.8).

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use lpzero::bench::{gpt2, Arch, Benchmark, DataSource};
use lpzero::models::flexibert::SizeMode;
use lpzero::models::gpt2_flex::{Config, Gpt2Flex, FAMILY};
use lpzero::models::Family;
use lpzero::nn::Build;
use lpzero::probe::{PassMode, Probe, ProbeOptions};
use lpzero::proxy::builtin;
use lpzero::proxy::eval::eval;
use lpzero::proxy::genotype::builtin_genotype;
use lpzero::rng::Rng;

/// `(key, n_head, d_inner, d_model, d_embed, div_val, valid_ppl, [AdaEmb, Attn, FFN,
/// nonembedding, total])` of the three worked examples of spec §5.3.
type Example = (
    &'static str,
    &'static [usize],
    &'static [usize],
    usize,
    usize,
    usize,
    f64,
    [u64; 5],
);

const EXAMPLES: [Example; 3] = [
    (
        "config_0_j0",
        &[2, 4, 4, 8, 8],
        &[1071, 640, 1286, 800, 1871],
        128,
        256,
        4,
        45.022968707221274,
        [6_631_088, 330_240, 1_457_316, 1_790_372, 8_505_006],
    ),
    (
        "config_0_j2",
        &[4, 8, 2, 4, 2, 2, 8, 2, 2, 4, 8, 4, 4, 8, 2, 4],
        &[
            1270, 902, 2044, 934, 1354, 1432, 1808, 1889, 1669, 1024, 903, 2020, 1325, 1286, 942,
            1202,
        ],
        512,
        128,
        1,
        27.47451606091973,
        [6_597_632, 16_809_984, 22_562_292, 39_406_068, 46_119_758],
    ),
    (
        "config_0_j4",
        &[4, 2, 2, 2, 8, 4, 2],
        &[2023, 1184, 1313, 948, 1644, 1615, 548],
        128,
        128,
        1,
        43.128118104943994,
        [6_458_368, 462_336, 2_384_571, 2_850_747, 9_359_637],
    ),
];

fn list(v: &[usize]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A model config in the benchmark's YAML format (with some ignored keys, as the real files).
fn config_yaml(
    heads: &[usize],
    inner: &[usize],
    d_model: usize,
    d_embed: usize,
    k: usize,
) -> String {
    format!(
        "adaptive: true\nattn_type: 0\nclamp_len: -1\ncutoffs:\n- 19997\n- 39997\n- 199997\n- 50264\n\
         d_embed: {d_embed}\nd_head: -1\nd_inner: {}\nd_model: {d_model}\ndiv_val: {k}\n\
         dropatt: 0.0\ndropout: 0.1\ndtype: null\next_len: 0\nmem_len: 192\nn_head: {}\n\
         n_layer: {}\nn_token: 50264\npre_lnorm: false\nproj_init_std: 0.01\ntgt_len: 192\n\
         tie_projs:\n- false\n- true\n- true\n- true\ntie_weight: true\nweight_init_std: 0.02\n",
        list(inner),
        list(heads),
        heads.len()
    )
}

/// Texts of the three files/folders of a fixture benchmark: configs by key, ppl and params
/// summaries.
struct Fixture {
    configs: Vec<(String, String)>,
    ppl: String,
    params: String,
}

fn fixture() -> Fixture {
    let mut configs = Vec::new();
    let mut ppl = String::new();
    let mut params = String::new();
    for (key, heads, inner, d, e, k, valid, counts) in EXAMPLES {
        configs.push((key.to_string(), config_yaml(heads, inner, d, e, k)));
        ppl.push_str(&format!(
            "{key}:\n  test_ppl: {}\n  valid_ppl: {valid}\n",
            valid + 1.0
        ));
        params.push_str(&format!(
            "{key}:\n  AdaEmb: {}.0\n  Attn: {}.0\n  FFN: {}.0\n  nonembedding: {}.0\n  total: {}.0\n",
            counts[0], counts[1], counts[2], counts[3], counts[4]
        ));
    }
    Fixture {
        configs,
        ppl,
        params,
    }
}

/// Writes `f` as `<tmp>/<name>/gpt2_wt103` and returns the data directory.
fn write(name: &str, f: &Fixture) -> PathBuf {
    let data = std::env::temp_dir().join(format!("lpzero-gpt2-{}-{name}", std::process::id()));
    let dir = data.join(gpt2::DIR);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(gpt2::CONFIGS)).unwrap();
    for (key, text) in &f.configs {
        std::fs::write(dir.join(gpt2::CONFIGS).join(format!("{key}.yaml")), text).unwrap();
    }
    std::fs::write(dir.join(gpt2::PPL_FILE), &f.ppl).unwrap();
    std::fs::write(dir.join(gpt2::PARAMS_FILE), &f.params).unwrap();
    data
}

fn load_fixture(name: &str, f: &Fixture) -> Benchmark {
    Benchmark::load(gpt2::KIND, &DataSource::Dir(write(name, f))).unwrap()
}

fn error_for(name: &str, f: &Fixture) -> String {
    let err = Benchmark::load(gpt2::KIND, &DataSource::Dir(write(name, f))).unwrap_err();
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "error should be one line: {msg}");
    msg
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should mention `{p}`");
    }
}

fn record(bench: &Benchmark, i: usize) -> &gpt2::Record {
    bench.entries[i]
        .arch
        .get::<gpt2::Record>()
        .expect("expected a GPT-2 entry")
}

/// The probe of the GPT-2 record `r` at benchmark position `index`.
fn probe(r: &gpt2::Record, index: usize, opts: &ProbeOptions) -> Probe {
    let batch = FAMILY.batch(opts).unwrap();
    FAMILY
        .probe(&Arch::new(r.clone()), index, opts, &batch)
        .unwrap()
}

#[test]
fn fixture_loads_sorted_with_negated_perplexity() {
    let bench = load_fixture("valid", &fixture());
    assert_eq!(bench.kind, gpt2::KIND);
    let keys: Vec<&str> = bench.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["config_0_j0", "config_0_j2", "config_0_j4"]);
    assert_eq!(bench.entries[0].truth, -45.022968707221274);
    let r = record(&bench, 1);
    assert_eq!(r.valid_ppl(), Some(27.47451606091973));
    assert_eq!(r.ppl.as_ref().unwrap().test_ppl, Some(28.47451606091973));
    assert_eq!(r.params.unwrap().total, 46_119_758);
    assert_eq!(r.n_layer(), 16);
    assert_eq!(
        gpt2::clean_cutoffs(&r.cutoffs, r.n_token),
        vec![19997, 39997, 50264]
    );
}

#[test]
fn loader_errors_name_file_and_key() {
    // A key missing from a config.
    let mut f = fixture();
    f.configs[1].1 = f.configs[1].1.replace("d_model: 512\n", "");
    let msg = error_for("missing-key", &f);
    assert_names(&msg, &["config_0_j2.yaml", "d_model"]);

    // A wrong type inside a list.
    let mut f = fixture();
    f.configs[0].1 = f.configs[0]
        .1
        .replace("n_head: [2, 4,", "n_head: [2, four,");
    let msg = error_for("bad-type", &f);
    assert_names(&msg, &["config_0_j0.yaml", "n_head[1]"]);

    // Inconsistent shapes.
    let mut f = fixture();
    f.configs[2].1 = f.configs[2].1.replace("n_layer: 7", "n_layer: 6");
    let msg = error_for("n-layer", &f);
    assert_names(&msg, &["config_0_j4.yaml", "n_head"]);
    let mut f = fixture();
    f.configs[0].1 = f.configs[0].1.replace("n_head: [2, 4,", "n_head: [3, 4,");
    let msg = error_for("heads", &f);
    assert_names(&msg, &["config_0_j0.yaml", "n_head[0]", "d_model"]);

    // Ground truth missing or invalid.
    let mut f = fixture();
    f.ppl = f.ppl.replace("  valid_ppl: 27.47451606091973\n", "");
    let msg = error_for("no-ppl", &f);
    assert_names(&msg, &["ppl_summary.yaml", "config_0_j2", "valid_ppl"]);
    let mut f = fixture();
    f.ppl = f
        .ppl
        .replace("valid_ppl: 27.47451606091973", "valid_ppl: high");
    let msg = error_for("bad-ppl", &f);
    assert_names(&msg, &["ppl_summary.yaml", "config_0_j2.valid_ppl"]);
    let mut f = fixture();
    f.ppl = f.ppl.replace("config_0_j4:", "config_9_j9:");
    let msg = error_for("ppl-key", &f);
    assert_names(&msg, &["ppl_summary.yaml", "config_0_j4"]);

    // Parameter summary missing a column or not a whole number.
    let mut f = fixture();
    f.params = f.params.replacen("  Attn: 330240.0\n", "", 1);
    let msg = error_for("no-attn", &f);
    assert_names(&msg, &["params_summary.yaml", "config_0_j0", "Attn"]);
    let mut f = fixture();
    f.params = f.params.replacen("total: 8505006.0", "total: 8505006.5", 1);
    let msg = error_for("fraction", &f);
    assert_names(&msg, &["params_summary.yaml", "config_0_j0.total"]);

    // A key given twice, in a summary or a config, instead of silently keeping one value.
    let mut f = fixture();
    f.ppl.push_str("config_0_j2:\n  valid_ppl: 20.0\n");
    let msg = error_for("twice-ppl", &f);
    assert_names(&msg, &["ppl_summary.yaml", "config_0_j2", "duplicate"]);
    let mut f = fixture();
    f.params = f
        .params
        .replacen("  Attn: 330240.0\n", "  Attn: 330240.0\n  Attn: 1.0\n", 1);
    let msg = error_for("twice-attn", &f);
    assert_names(
        &msg,
        &["params_summary.yaml", "config_0_j0", "Attn", "duplicate"],
    );
    let mut f = fixture();
    f.configs[1].1.push_str("d_model: 256\n");
    let msg = error_for("twice-config", &f);
    assert_names(&msg, &["config_0_j2.yaml", "d_model", "duplicate"]);
    let mut f = fixture();
    f.configs[1].1.push_str("mem_len: 0\n");
    let msg = error_for("twice-ignored", &f);
    assert_names(&msg, &["config_0_j2.yaml", "mem_len", "duplicate"]);

    // No configs folder at all.
    let dir = common::fresh_temp_path("gpt2", "empty");
    std::fs::create_dir_all(dir.join(gpt2::DIR)).unwrap();
    let msg = format!(
        "{:#}",
        Benchmark::load(gpt2::KIND, &DataSource::Dir(dir)).unwrap_err()
    );
    assert_names(&msg, &["configs"]);
}

fn check_counts(bench: &Benchmark) -> usize {
    let selection: Vec<usize> = (0..bench.len()).collect();
    let counts = lpzero::params::count_columns(bench, &selection, SizeMode::Faithful).unwrap();
    for (i, c) in counts.iter().enumerate() {
        let expected = record(bench, i).params.unwrap();
        let got = [
            c.get("AdaEmb").unwrap() as u64,
            c.get("Attn").unwrap() as u64,
            c.get("FFN").unwrap() as u64,
            c.get("nonembedding").unwrap() as u64,
            c.total as u64,
        ];
        let want = [
            expected.ada_emb,
            expected.attn,
            expected.ffn,
            expected.nonembedding,
            expected.total,
        ];
        assert_eq!(
            got, want,
            "{} [AdaEmb, Attn, FFN, nonembedding, total]",
            c.key
        );
        assert_eq!(c.key, bench.entries[i].key);
    }
    // The plain total API agrees.
    let totals = lpzero::params::count(bench, &selection, SizeMode::Faithful).unwrap();
    assert!(totals.iter().zip(&counts).all(|(t, c)| t.1 == c.total));
    counts.len()
}

#[test]
fn params_match_the_worked_examples() {
    let bench = load_fixture("params", &fixture());
    assert_eq!(check_counts(&bench), 3);
}

/// All 200 shipped architectures reproduce the five columns of `params_summary.yaml` exactly.
#[test]
fn params_match_the_summary_for_all_200() {
    let bench = Benchmark::load(gpt2::KIND, &common::shipped_source()).unwrap();
    assert_eq!(bench.len(), 200);
    assert!(bench.entries.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(check_counts(&bench), 200);
}

/// The record of a tiny decoder with a 60-token vocabulary in three clusters.
fn tiny_decoder(div_val: usize, d_embed: usize, tie_weight: bool) -> gpt2::Record {
    gpt2::Record {
        key: "tiny".into(),
        n_token: 60,
        d_model: 16,
        d_embed,
        div_val,
        n_head: vec![2, 4, 8],
        d_inner: vec![24, 40, 8],
        cutoffs: vec![20, 40, 60],
        tie_weight,
        tie_projs: vec![false, true, true],
        tgt_len: 12,
        dropout: 0.1,
        dropatt: 0.0,
        weight_init_std: 0.02,
        proj_init_std: 0.01,
        ppl: None,
        params: None,
    }
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.range(0, 60) as u32).collect()
}

/// The adaptive softmax is a distribution over the whole vocabulary, and the forward NLL is
/// the mean of −log p(target) under it.
#[test]
fn adaptive_log_probs_sum_to_one_and_match_the_loss() {
    for (k, e, tied) in [
        (1, 16, true),
        (1, 8, true),
        (2, 16, true),
        (4, 16, true),
        (2, 8, false),
    ] {
        // Larger weights than at initialisation, so that the distribution is far from uniform.
        let record = gpt2::Record {
            weight_init_std: 0.5,
            proj_init_std: 0.5,
            ..tiny_decoder(k, e, tied)
        };
        let cfg = Config::from_record(&record).unwrap();
        let model = Gpt2Flex::new(&cfg, &mut Rng::new(11), &Device::Cpu).unwrap();
        let (rows, cols) = (2, 9);
        let inputs = tokens(rows * cols, 1);
        let targets = tokens(rows * cols, 2);
        let fwd = model
            .forward(&inputs, &targets, (rows, cols), None)
            .unwrap();
        let z = fwd.hidden.reshape((rows * cols, 16)).unwrap();
        let lp: Vec<Vec<f32>> = model.log_probs(&z).unwrap().to_vec2().unwrap();
        let mut nll = 0f64;
        for (row, &y) in lp.iter().zip(&targets) {
            assert_eq!(row.len(), 60);
            let total: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
            assert!((total - 1.0).abs() < 1e-5, "k={k} E={e}: Σp = {total}");
            nll -= row[y as usize] as f64;
        }
        nll /= targets.len() as f64;
        let loss = fwd.loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (loss - nll).abs() < 1e-4 * nll.abs().max(1.0),
            "k={k} E={e}: loss {loss} vs −mean log p {nll}"
        );
        let spread = lp[0].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
            - lp[0].iter().fold(f32::INFINITY, |a, &b| a.min(b));
        assert!(spread > 0.1, "distribution should not be uniform: {spread}");
    }
}

fn tiny_record() -> gpt2::Record {
    let bench = load_fixture("tiny-record", &fixture());
    let mut r = record(&bench, 0).clone();
    r.n_head = vec![2, 4];
    // The second MLP c_proj has ≥ 128 inputs, so head_importance has a term.
    r.d_inner = vec![24, 130];
    r.d_model = 16;
    r.d_embed = 16;
    r.div_val = 2;
    r.tgt_len = 12;
    r
}

/// `synaptic_diversity`'s terms started ahead of need (on a thread of idle priority while the
/// extra passes run) are the terms computed after the probe, bit for bit; with bf16 storage
/// nothing is started ahead and the proxy reads the stored (rounded) arrays, which gives
/// another value.
#[test]
fn diversity_terms_started_ahead_are_those_computed_after() {
    let r = tiny_record();
    let base = ProbeOptions {
        batch: 2,
        seq_len: 8,
        extra_passes: true,
        ..FAMILY.probe_options()
    };
    let ahead = ProbeOptions {
        diversity_ahead: true,
        ..base.clone()
    };
    let diversity = builtin::find("synaptic_diversity").unwrap();
    // Work starts ahead only for a probe with cores to spare: this thread is given many (other
    // tests' probes in flight share them).
    let _lease = lpzero::nn::cores::Lease::new(64);
    let after = probe(&r, 3, &base);
    assert!(after.diversity_ahead.is_none());
    let early = probe(&r, 3, &ahead);
    assert!(early.diversity_ahead.is_some());
    let terms = early.diversity_terms();
    assert_eq!(terms.len(), 8, "one term per Conv1D");
    assert!(terms.iter().all(|t| t.is_finite() && *t > 0.0));
    assert_eq!(
        terms.iter().map(|t| t.to_bits()).collect::<Vec<_>>(),
        after
            .diversity_terms()
            .iter()
            .map(|t| t.to_bits())
            .collect::<Vec<_>>()
    );
    let value = (diversity.compute)(&after);
    assert_eq!((diversity.compute)(&early).to_bits(), value.to_bits());
    // Read twice (the normalised form reads the same terms): the same.
    assert_eq!((diversity.compute)(&early).to_bits(), value.to_bits());

    let bf16 = ProbeOptions {
        storage: lpzero::probe::Storage::Bf16,
        ..ahead.clone()
    };
    let stored = probe(&r, 3, &bf16).stored_as(bf16.storage);
    assert!(stored.diversity_ahead.is_none());
    let rounded = (diversity.compute)(&stored);
    assert!(rounded.is_finite() && rounded != value);
    assert_eq!(
        rounded.to_bits(),
        (diversity.compute)(&after.stored_as(bf16.storage)).to_bits()
    );
}

/// Probes of a small model: captures have the documented shapes, the loss starts near a
/// uniform guess, every Conv1D weight and `wpe` row inside the window gets a
/// gradient (rows past the sequence cannot), and a seed fully determines the probe.
#[test]
fn probe_contents_and_determinism() {
    let r = tiny_record();
    let opts = ProbeOptions {
        batch: 2,
        seq_len: 8,
        ..FAMILY.probe_options()
    };
    let batch = FAMILY.batch(&opts).unwrap();
    assert_eq!((batch.rows, batch.cols), (2, 9));
    let p = probe(&r, 3, &opts);
    assert!(std::ptr::eq(p.semantics, FAMILY.semantics()));
    assert_eq!(p.act.len(), 8);
    assert!(std::sync::Arc::ptr_eq(&p.act, &p.head));
    assert!(std::sync::Arc::ptr_eq(&p.act, &p.mixer_outputs));
    assert_eq!(p.act[0].shape(), &[2, 8, 48]);
    assert_eq!(p.act[2].shape(), &[2, 8, 24]);
    assert_eq!(p.act[6].shape(), &[2, 8, 130]);
    assert_eq!(p.softmax.len(), 2);
    assert_eq!(p.softmax[1].shape(), &[2, 4, 8, 8]);
    assert_eq!(p.linears.len(), 8);
    assert_eq!(p.weight.len(), 8);
    assert_eq!(p.grad.len(), 8);
    assert_eq!(
        p.weight[3].shape(),
        &[24, 16],
        "Conv1D weights are in × out"
    );
    for (l, g) in p.linears.iter().zip(&p.grad) {
        assert!(l.role.is_conv1d());
        assert!(
            g.data().iter().any(|&x| x != 0.0),
            "{}: zero gradient",
            l.name
        );
    }
    assert_eq!(p.position_grad.shape(), &[12, 16]);
    let row_norm = |i: usize| -> f32 {
        p.position_grad.data()[i * 16..(i + 1) * 16]
            .iter()
            .map(|x| x * x)
            .sum()
    };
    assert!((0..8).all(|i| row_norm(i) > 0.0));
    assert!((8..12).all(|i| row_norm(i) == 0.0));
    // Near-uniform predictions over 50 264 ids: NLL ≈ ln 19 999 for shortlist targets (most
    // of a Zipf batch), about twice that for tail targets.
    assert!((9.0..13.0).contains(&p.loss), "initial NLL {}", p.loss);
    assert_eq!(p.params, p.param_groups.iter().map(|g| g.1).sum::<usize>());

    let again = probe(&r, 3, &opts);
    assert_eq!(again.grad, p.grad);
    assert_eq!(again.act, p.act);
    assert_eq!(again.loss, p.loss);
    let other_seed = ProbeOptions {
        seed: 1,
        ..opts.clone()
    };
    let other = probe(&r, 3, &other_seed);
    assert_ne!(other.grad, p.grad);
    // Another architecture index draws other weights.
    assert_ne!(probe(&r, 4, &opts).weight, p.weight);
    // Dropout changes the gradients, deterministically.
    let dropout = ProbeOptions {
        dropout: true,
        ..opts.clone()
    };
    let d1 = probe(&r, 3, &dropout);
    let d2 = probe(&r, 3, &dropout);
    assert_eq!(d1.grad, d2.grad);
    assert_ne!(d1.grad, p.grad);

    // With the extra passes on, the captured probe is unchanged (Synflow's absolute weights
    // come after the capture) and every built-in proxy gives a finite value.
    let extra = ProbeOptions {
        extra_passes: true,
        ..opts.clone()
    };
    let full = probe(&r, 3, &extra);
    assert_eq!(
        (&full.weight, &full.grad, &full.act),
        (&p.weight, &p.grad, &p.act)
    );
    assert!(p.extras.is_none() && full.extras.is_some());
    for b in builtin::for_family(gpt2::KIND) {
        let v = (b.compute)(&full);
        assert!(v.is_finite(), "{}: {v}", b.name);
        if b.extra_passes() {
            assert!((b.compute)(&p).is_nan(), "{} without extra passes", b.name);
        }
    }
}

/// The published GPT-2 genotype agrees with its closed form within 1 % on a real config
/// (spec §4.8), here on a 2 × 33-token batch.
#[test]
fn lpzero_gpt2_matches_its_closed_form() {
    let bench = load_fixture("oracle", &fixture());
    let opts = ProbeOptions {
        batch: 2,
        seq_len: 32,
        ..FAMILY.probe_options()
    };
    let batch = FAMILY.batch(&opts).unwrap();
    assert_eq!(batch.cols, 33);
    let entry = &bench.entries[0];
    let r = record(&bench, 0);
    let probe = FAMILY.probe(&entry.arch, 0, &opts, &batch).unwrap();
    let value = eval(&builtin_genotype("lpzero_gpt2").unwrap(), &probe).unwrap();
    let sigma2 = 0.02f64 * 0.02;
    let l = r.n_layer() as f64;
    let d = r.d_model as f64;
    let expected = r
        .d_inner
        .iter()
        .map(|&di| {
            0.25 * ((sigma2 + 1.0 / (d * d))
                + (sigma2 / (2.0 * l) + 1.0 / (d * d))
                + (sigma2 + 1.0 / (d * d))
                + (sigma2 / (2.0 * l) + 1.0 / (di as f64 * di as f64)))
        })
        .sum::<f64>()
        / l;
    let rel = (value - expected).abs() / expected;
    eprintln!("lpzero_gpt2 {value:.6e}, closed form {expected:.6e}, relative error {rel:.2e}");
    assert!(
        rel < 0.01,
        "lpzero_gpt2 {value} vs closed form {expected} ({rel:.4})"
    );
}

#[test]
fn zipf_batch_and_corpus() {
    let opts = FAMILY.probe_options();
    assert_eq!((opts.batch, opts.seq_len), (16, 192));
    let b = FAMILY.batch(&opts).unwrap();
    assert_eq!((b.rows, b.cols), (16, 193));
    assert!(b.ids.iter().all(|&id| id < 50264));
    // Zipf(1) over 50 264 ids: P(id < 19 997) = H(19997)/H(50264) ≈ 0.92.
    let short = b.ids.iter().filter(|&&id| id < 19997).count() as f64 / b.ids.len() as f64;
    assert!((short - 0.92).abs() < 0.03, "{short}");
    assert_eq!(b, FAMILY.batch(&opts).unwrap());
    let (x, y) = b.shifted();
    assert_eq!(x.len(), 16 * 192);
    assert_eq!(x[1], y[0]);

    let too_long = ProbeOptions {
        seq_len: 193,
        ..opts.clone()
    };
    let err = FAMILY.batch(&too_long).unwrap_err().to_string();
    assert!(err.contains("192"), "{err}");

    let path = std::env::temp_dir().join(format!("lpzero-gpt2-{}-corpus.txt", std::process::id()));
    std::fs::write(
        &path,
        (0..40)
            .map(|i| (i * 1000).to_string())
            .collect::<Vec<_>>()
            .join(" "),
    )
    .unwrap();
    let corpus = ProbeOptions {
        batch: 2,
        seq_len: 4,
        corpus: Some(path.clone()),
        ..opts.clone()
    };
    let b = FAMILY.batch(&corpus).unwrap();
    assert_eq!(
        b.ids,
        vec![0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000]
    );
    std::fs::write(&path, "1 2 3 60000 5 6 7 8 9 10").unwrap();
    let err = FAMILY.batch(&corpus).unwrap_err().to_string();
    assert!(err.contains("50264"), "{err}");
    let _ = std::fs::remove_file(Path::new(&path));
}

#[test]
fn score_json_reports_the_raw_correlation_with_perplexity() {
    let data = write("cli-raw", &fixture());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lpzero"))
        .args([
            "score",
            "--bench",
            "gpt2",
            "--proxy",
            "params",
            "--json",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["raw_truth"], "valid_ppl");
    let (rho, raw) = (
        v["spearman"].as_f64().unwrap(),
        v["spearman_raw"].as_f64().unwrap(),
    );
    assert!(rho.abs() > 0.0 && raw == -rho, "{v}");
    assert_eq!(
        v["kendall_raw"].as_f64().unwrap(),
        -v["kendall"].as_f64().unwrap()
    );
}

/// The probe of [`tiny_record`] at position 3, batch 2 × 8.
fn tiny_probe() -> Probe {
    let opts = ProbeOptions {
        batch: 2,
        seq_len: 8,
        ..FAMILY.probe_options()
    };
    probe(&tiny_record(), 3, &opts)
}

/// bf16 storage (`ProbeOptions::storage`): every array is rounded, the lists and arrays that
/// were shared stay shared (so the memory really halves), and every proxy value stays within
/// the rounding error of the f32 value; f32 storage leaves the probe untouched.
#[test]
fn bf16_storage_rounds_every_array_and_keeps_sharing() {
    use lpzero::array::{from_bf16, to_bf16};
    use lpzero::probe::Storage;
    use lpzero::proxy::eval::list_bytes;
    use std::sync::Arc;
    let p = tiny_probe();
    let same = p.clone().stored_as(Storage::F32);
    assert!(same
        .weight
        .iter()
        .zip(&p.weight)
        .all(|(a, b)| a.values_id() == b.values_id()));
    let c = p.clone().stored_as(Storage::Bf16);
    assert!(Arc::ptr_eq(&c.act, &c.head) && Arc::ptr_eq(&c.act, &c.mixer_outputs));
    let lists = [&c.act[..], &c.softmax, &c.weight, &c.grad];
    assert!(lists.iter().all(|l| l.iter().all(|a| a.is_compact())));
    assert!(!c.position_grad.is_compact(), "position_grad stays f32");
    assert_eq!(c.position_grad.values_id(), p.position_grad.values_id());
    for (lin, (w, g)) in c.linears.iter().zip(c.weight.iter().zip(&c.grad)) {
        assert!(lin.weight.is_compact() && lin.grad.is_compact());
        assert_eq!(lin.weight.values_id(), w.values_id(), "{}", lin.name);
        assert_eq!(lin.grad.values_id(), g.values_id(), "{}", lin.name);
    }
    let value_bytes = |l: &[lpzero::array::Array]| l.iter().map(|a| a.value_bytes()).sum::<usize>();
    assert_eq!(2 * value_bytes(&c.weight), value_bytes(&p.weight));
    assert!(list_bytes(&c.grad) < list_bytes(&p.grad));
    for (a, b) in p.act.iter().zip(c.act.iter()) {
        let rounded: Vec<f32> = a.data().iter().map(|&x| from_bf16(to_bf16(x))).collect();
        assert_eq!(*b.data(), *rounded);
    }
    // Every proxy reads the rounded values: close to f32, not always equal.
    let mut differ = 0;
    let genotypes = ["lpzero_gpt2", "lpzero_bert"].map(|g| builtin_genotype(g).unwrap());
    let exprs: Vec<_> = ["mean(mul(weight, grad))", "total(frobenius_norm(softmax))"]
        .iter()
        .map(|e| lpzero::proxy::parse::parse(e).unwrap())
        .chain(genotypes)
        .collect();
    let mut values: Vec<(String, f64, f64)> = builtin::for_family(gpt2::KIND)
        .filter(|b| !b.extra_passes())
        .map(|b| (b.name.to_string(), (b.compute)(&p), (b.compute)(&c)))
        .collect();
    for e in &exprs {
        let v = |q: &Probe| eval(e, q).unwrap_or(f64::NAN);
        values.push((e.to_string(), v(&p), v(&c)));
    }
    for (name, full, half) in &values {
        if full.is_nan() {
            assert!(half.is_nan(), "{name}: {half} for NaN");
            continue;
        }
        differ += usize::from(full != half);
        let rel = (full - half).abs() / full.abs().max(1e-30);
        assert!(rel < 0.02, "{name}: f32 {full}, bf16 {half} ({rel:.2e})");
    }
    assert!(
        differ >= values.len() / 2,
        "only {differ} of {} values moved",
        values.len()
    );
}

/// `scoring::compute_all` (which derives `synaptic_diversity_normalized` from
/// `synaptic_diversity` instead of recomputing every nuclear norm) gives every proxy's own
/// value bit for bit, in any order of the list.
#[test]
fn compute_all_equals_each_proxy_on_its_own() {
    use lpzero::scoring::{compute_all, Proxy};
    let p = tiny_probe();
    let mut proxies = Proxy::parse_list("all", gpt2::KIND).unwrap();
    assert!(proxies
        .iter()
        .any(|q| q.name() == "synaptic_diversity_normalized"));
    for _ in 0..2 {
        let each: Vec<u64> = proxies.iter().map(|q| q.compute(&p).to_bits()).collect();
        let all: Vec<u64> = compute_all(&proxies, &p)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(all, each);
        proxies.reverse();
    }
}

/// A probe run block by block (the default: each block's forward recomputed for its backward)
/// holds the same values, bit for bit, as the whole pass: with and without the extra passes (taps,
/// GraSP's second pass, Synflow), for both embedding layouts; with dropout it runs whole.
#[test]
fn a_pass_by_blocks_gives_the_whole_pass_values_bit_for_bit() {
    let mut records = vec![tiny_record()];
    let mut single = tiny_record();
    single.div_val = 1;
    records.push(single);
    for r in &records {
        for extra_passes in [false, true] {
            let whole = ProbeOptions {
                batch: 3,
                seq_len: 8,
                extra_passes,
                pass: PassMode::Whole,
                ..FAMILY.probe_options()
            };
            let by_blocks = ProbeOptions {
                pass: PassMode::ByBlocks,
                ..whole.clone()
            };
            let (a, b) = (probe(r, 1, &whole), probe(r, 1, &by_blocks));
            assert_eq!(a.extras.is_some(), extra_passes);
            assert_eq!(b.extras.is_some(), extra_passes);
            let (a, b) = (a.value_bits(), b.value_bits());
            assert_eq!(a.len(), b.len());
            let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differing, 0,
                "div_val {}, extra passes {extra_passes}",
                r.div_val
            );
        }
    }
    let dropout = ProbeOptions {
        batch: 2,
        seq_len: 8,
        dropout: true,
        pass: PassMode::Whole,
        ..FAMILY.probe_options()
    };
    let by_blocks = ProbeOptions {
        pass: PassMode::ByBlocks,
        ..dropout.clone()
    };
    let r = tiny_record();
    assert_eq!(
        probe(&r, 2, &dropout).value_bits(),
        probe(&r, 2, &by_blocks).value_bits()
    );
}

/// `lpzero bench --pass`: both modes run and are reported in the JSON; any other value is
/// refused with the flag and the accepted values named.
#[test]
fn bench_pass_flag_is_reported_and_checked() {
    let data = write("cli-pass", &fixture());
    let bench = |pass: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lpzero"))
            .args([
                "bench", "--bench", "gpt2", "--archs", "0", "--proxy", "params",
            ])
            .args(["--batch", "2", "--seq-len", "8", "--threads", "1", "--json"])
            .args(["--pass", pass, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    for pass in ["by-blocks", "whole"] {
        let out = bench(pass);
        assert!(
            out.status.success(),
            "{pass}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["pass"], pass);
        assert_eq!(v["n"], 1);
    }
    let out = bench("sideways");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["--pass", "sideways", "by-blocks", "whole"] {
        assert!(err.contains(part), "stderr `{err}` should mention `{part}`");
    }
}
