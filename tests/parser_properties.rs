//! Deterministic property tests of everything that reads text from users or files: random and
//! mutated inputs may be refused, but never make a parser panic, and whatever is accepted is
//! usable (an expression prints back to itself, a record gives a model configuration whose
//! size can be estimated). The inputs come from the project's own seeded generator, so a
//! failure names a case that reproduces.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use lpzero::bench::{self, flexibert, gpt2, Arch};
use lpzero::models;
use lpzero::models::flexibert::SizeMode;
use lpzero::models::gpt2_flex;
use lpzero::probe::{memory, ProbeOptions};
use lpzero::proxy::canonical::canonical;
use lpzero::proxy::genotype::TreeGenotype;
use lpzero::proxy::parse::parse;
use lpzero::rng::Rng;

/// Pieces that random texts are made of: the syntax of every format, names, numbers at the
/// edges of their types, non-ASCII text and control characters.
const PIECES: [&str; 40] = [
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ";",
    ":",
    "\"",
    "'",
    " ",
    "\n",
    "\t",
    "..",
    "..=",
    "-",
    "0",
    "7",
    "18446744073709551615",
    "1e12",
    "-1",
    "NaN",
    "null",
    "true",
    "add",
    "mean",
    "head",
    "act",
    "neg",
    "softmax",
    "disconnect",
    "é",
    "héad",
    "名前",
    "\u{0}",
    "\u{7f}",
    "TREE",
    "random:",
    "all",
];

/// Values at the edges of the types of config fields (in JSON and YAML alike), put in place of
/// one valid value by the loader tests.
const EDGE_VALUES: [&str; 16] = [
    "0",
    "1",
    "2",
    "3",
    "64",
    "256",
    "-1",
    "1.5",
    "1000000000000",
    "18446744073709551615",
    "\"x\"",
    "null",
    "[]",
    "[0]",
    "[1, 1]",
    "[1000000000000, 2]",
];

/// A random text of up to `max` pieces.
fn random_text(rng: &mut Rng, max: usize) -> String {
    let n = rng.range(0, max + 1);
    (0..n).map(|_| PIECES[rng.range(0, PIECES.len())]).collect()
}

/// `text` with a few random edits: a piece inserted, a character range deleted, a range
/// duplicated, or a character replaced (always on character boundaries).
fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..rng.range(1, 4) {
        let len = chars.len();
        let at = rng.range(0, len + 1);
        match rng.range(0, 4) {
            0 => {
                let piece: Vec<char> = PIECES[rng.range(0, PIECES.len())].chars().collect();
                chars.splice(at..at, piece);
            }
            1 if len > 0 => {
                let end = (at + rng.range(1, 8)).min(len);
                chars.drain(at.min(end)..end);
            }
            2 if len > 0 => {
                let start = rng.range(0, len);
                let end = (start + rng.range(1, 16)).min(len);
                let copy: Vec<char> = chars[start..end].to_vec();
                chars.splice(at..at, copy);
            }
            _ if len > 0 => {
                let i = rng.range(0, len);
                chars[i] = PIECES[rng.range(0, PIECES.len())]
                    .chars()
                    .next()
                    .unwrap_or('x');
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Runs `f` on `input`, failing the test with the input when it panics.
fn no_panic(what: &str, input: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        panic!("{what} panicked on input {input:?}");
    }
}

#[test]
fn expression_and_genotype_parsers_never_panic() {
    let mut rng = Rng::new(13);
    let valid = [
        "add(mean(pow2(head)), mean(abs(act)))",
        "neg(sub(mean(log(invert(grad))), l1_norm(softmax)))",
        "matmul(weight, normalize(grad))",
        "TREE: (head, act), ((15, 3), (8, 13)), 0",
        "{\"input_geno\": [\"head\", \"act\"], \"op_geno\": [[15, 3], [8, 13], 0]}",
    ];
    let deep = format!("{}head{}", "neg(".repeat(400), ")".repeat(400));
    let mut inputs: Vec<String> = vec![deep, String::new(), "\u{0}".into()];
    for i in 0..3000 {
        inputs.push(match i % 3 {
            0 => random_text(&mut rng, 24),
            1 => mutate(valid[rng.range(0, valid.len())], &mut rng),
            // A random expression, spaced out at random: must parse back to itself.
            _ => lpzero::search::genome::grow_expr(6, true, &mut rng)
                .to_string()
                .chars()
                .flat_map(|c| {
                    let pad = if matches!(c, '(' | ',' | ')') && rng.bernoulli(0.3) {
                        " \n"
                    } else {
                        ""
                    };
                    std::iter::once(c).chain(pad.chars())
                })
                .collect(),
        });
    }
    let mut accepted = 0;
    for text in &inputs {
        no_panic("expr::parse", text, || {
            if let Ok(e) = parse(text) {
                accepted += 1;
                // What is accepted prints back to the same expression.
                assert_eq!(parse(&e.to_string()).as_ref(), Ok(&e), "{text:?}");
                let _ = canonical(&e);
            }
        });
        no_panic("TreeGenotype::parse", text, || {
            let _ = TreeGenotype::parse(text);
        });
        no_panic("parse_selection", text, || {
            let _ = bench::parse_selection(text, 500);
            let _ = bench::parse_sample(text, 200, 1);
        });
        no_panic("Proxy::parse_list", text, || {
            let _ = lpzero::scoring::Proxy::parse_list(text, flexibert::KIND);
        });
    }
    // The mutations keep some inputs valid, so the round trip is exercised too.
    assert!(accepted > 1000, "only {accepted} expressions accepted");
}

/// Estimates (and model configurations) of every architecture of a loaded benchmark, under
/// every size mode: what any accepted record must allow without panicking.
fn use_benchmark(b: &bench::Benchmark) -> usize {
    let family = models::family(b.kind);
    for entry in &b.entries {
        for sizes in [SizeMode::Faithful, SizeMode::Intended] {
            let opts = ProbeOptions {
                sizes,
                ..family.probe_options()
            };
            if let Ok(size) = family.size(&entry.arch, &opts) {
                let _ = memory::probe_bytes(&size, &opts);
                let _ = memory::parameter_bytes(&size);
            }
        }
        if let Some(record) = entry.arch.get::<gpt2::Record>() {
            let _ = gpt2_flex::Config::from_record(record).map(|c| c.parameter_count());
        }
    }
    1
}

#[test]
fn flexibert_loader_never_panics() {
    let mut rng = Rng::new(17);
    let text = serde_json::to_string_pretty(&common::fixture_records()).unwrap();
    let path = Path::new("BERT_benchmark.json");
    // Typed edits: each field of a record set to values at the edges of its type.
    let edges = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1u64 << 40),
        serde_json::json!(u64::MAX),
        serde_json::json!(1.5),
        serde_json::json!("SDP"),
        serde_json::json!(null),
        serde_json::json!([]),
        serde_json::json!({}),
    ];
    let fields = [
        "num_operation_heads",
        "feed_forward_dimension",
        "num_feed_forward",
        "operation_parameter",
        "operation_type",
    ];
    let mut accepted = 0;
    for i in 0..1500 {
        let candidate = if i % 3 == 0 {
            let mut records = common::fixture_records();
            let r = rng.range(0, records.len());
            let v = edges[rng.range(0, edges.len())].clone();
            if rng.bernoulli(0.2) {
                records[r]["hparams"]["model_hparam_overrides"]["hidden_size"] = v;
            } else {
                let f = fields[rng.range(0, fields.len())];
                records[r]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"]
                    [0][f] = v;
            }
            serde_json::to_string(&records).unwrap()
        } else {
            mutate(&text, &mut rng)
        };
        no_panic("flexibert::parse", &candidate, || {
            if let Ok(b) = flexibert::parse(&candidate, path) {
                accepted += use_benchmark(&b);
            }
        });
    }
    assert!(accepted > 50, "only {accepted} benchmarks accepted");
}

#[test]
fn gpt2_config_parser_never_panics() {
    let mut rng = Rng::new(19);
    let valid = "adaptive: true\ncutoffs: [19997, 39997, 199997, 50264]\nd_embed: 64\n\
        d_inner: [128, 96]\nd_model: 32\ndiv_val: 2\ndropatt: 0.0\ndropout: 0.1\n\
        n_head: [2, 4]\nn_layer: 2\nn_token: 50264\nproj_init_std: 0.01\ntgt_len: 192\n\
        tie_projs: [false, true, true, true]\ntie_weight: true\nweight_init_std: 0.02\n";
    let keys = [
        "n_token", "d_model", "d_embed", "div_val", "n_layer", "tgt_len", "cutoffs", "n_head",
        "d_inner",
    ];
    let mut accepted = 0;
    for i in 0..1500 {
        let text = if i % 2 == 0 {
            let key = keys[rng.range(0, keys.len())];
            let value = EDGE_VALUES[rng.range(0, EDGE_VALUES.len())];
            valid
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{key}:")) {
                        format!("{key}: {value}\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect()
        } else {
            mutate(valid, &mut rng)
        };
        no_panic("gpt2::parse_config", &text, || {
            let parsed = gpt2::parse_config(&text, Path::new("c.yaml"), "c");
            if let Ok(record) = parsed {
                let entry = bench::Entry {
                    key: "c".into(),
                    truth: -30.0,
                    arch: Arch::new(record),
                };
                accepted += use_benchmark(&bench::Benchmark {
                    kind: gpt2::KIND,
                    source: "c.yaml".into(),
                    entries: vec![entry],
                    truth_name: "test",
                    data: None,
                    raw_truth: gpt2::KIND.raw_truth(),
                });
            }
        });
    }
    assert!(accepted > 50, "only {accepted} configs accepted");
}

#[test]
fn bench_file_loader_never_panics() {
    let mut rng = Rng::new(23);
    let layer = |kind: &str, param: &str| {
        format!(
            "{{\"operation_type\": \"{kind}\", \"operation_parameter\": {param}, \
             \"num_operation_heads\": 4, \"feed_forward_dimension\": 512, \"num_feed_forward\": 1}}"
        )
    };
    let record = |id: usize, layers: &str| {
        format!(
            "{{\"id\": \"a{id}\", \"family\": \"flexibert\", \"config\": {{\"hidden_size\": 128, \
             \"encoder_layers\": [{layers}]}}, \"truth\": {id}.5, \"higher_is_better\": true}}"
        )
    };
    let valid = [
        record(0, &layer("SA", "\"SDP\"")),
        record(1, &layer("DSC", "9")),
        record(
            2,
            &(layer("LT", "\"DFT\"") + ", " + &layer("SA", "\"WMA\"")),
        ),
    ]
    .join("\n");
    let path = Path::new("archs.jsonl");
    let kinds = models::kinds();
    assert!(bench::jsonl::parse(&valid, path, &kinds).is_ok());
    // Typed edits: one number or flag replaced by a value at the edges of its type.
    let targets = ["128", "512", "4", ": 1", "9", "true", "0.5"];
    let mut accepted = 0;
    for i in 0..1500 {
        let text = if i % 2 == 0 {
            let target = targets[rng.range(0, targets.len())];
            let edge = EDGE_VALUES[rng.range(0, EDGE_VALUES.len())];
            let edge = if target.starts_with(':') {
                format!(": {edge}")
            } else {
                edge.to_string()
            };
            let at: Vec<usize> = valid.match_indices(target).map(|(i, _)| i).collect();
            let i = at[rng.range(0, at.len())];
            format!("{}{edge}{}", &valid[..i], &valid[i + target.len()..])
        } else {
            mutate(&valid, &mut rng)
        };
        no_panic("jsonl::parse", &text, || {
            if let Ok(b) = bench::jsonl::parse(&text, path, &kinds) {
                accepted += use_benchmark(&b);
            }
        });
    }
    assert!(accepted > 50, "only {accepted} bench files accepted");
}
