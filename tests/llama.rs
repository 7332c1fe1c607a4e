//! End-to-end runs of `lpzero subnet` on the shipped LLaMA-7B config and on a tiny random
//! Llama written by the test.

mod common;

use std::path::PathBuf;

use common::{assert_fails, lpzero, stdout_of};

fn manifest(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_string_lossy()
        .into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    common::fresh_temp_dir("llama-cli", name)
}

/// A fresh folder holding the `config.json` of a tiny random Llama: hidden 16, FFN 32, 2
/// layers, 2 heads, vocab 40, init std 0.2, with `changes` (a JSON object) applied on top.
fn tiny_model(name: &str, changes: serde_json::Value) -> PathBuf {
    let dir = temp_dir(name);
    let mut config = serde_json::json!({
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "vocab_size": 40, "initializer_range": 0.2
    });
    for (k, v) in changes.as_object().expect("changes are an object") {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn llama_7b_params_are_exact() {
    let model = manifest("examples/llama-7b");
    for (subnet, total) in [("maximal", 6_738_415_616u64), ("heuristic", 5_656_285_184)] {
        let out = lpzero(&[
            "subnet", "params", "--model", &model, "--subnet", subnet, "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
        assert_eq!(v["total"], total, "{subnet}");
        assert_eq!(v["ffn_widths"].as_array().unwrap().len(), 32);
        assert!(v["non_embedding"].as_u64().unwrap() < total);
        assert!(v["flops_per_token"].as_u64().unwrap() > 0);
    }
    let out = lpzero(&[
        "subnet",
        "params",
        "--model",
        &model,
        "--subnet",
        "nope.json",
    ]);
    assert_fails(&out, &["--subnet", "nope.json"]);
}

#[test]
fn subnet_score_on_a_tiny_random_llama() {
    let dir = tiny_model(
        "score",
        serde_json::json!({"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64}),
    );
    let csv = dir.join("scores.csv");
    let out = lpzero(&[
        "subnet",
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--subnets",
        "random:3",
        "--proxy",
        "params,snip,grad_norm,head_softmax_confidence",
        "--seq-len",
        "8",
        "--out",
        csv.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].starts_with("subnet,total,non_embedding,flops_per_token,loss,seconds,params,snip")
    );
    // Streaming keeps the captures: a proxy reading them gets the whole probe's value.
    let values = |mode: &str| -> Vec<f64> {
        let out = lpzero(&[
            "subnet",
            "score",
            "--model",
            dir.to_str().unwrap(),
            "--subnets",
            "heuristic",
            "--proxy",
            "head_softmax_confidence;add(mean(act), mean(weight));synaptic_saliency_normalized",
            "--seq-len",
            "8",
            "--mode",
            mode,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
        let score = &v[0]["score"];
        assert_eq!(score["streamed"], mode == "stream");
        let values = score["values"].as_array().unwrap();
        values.iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (whole, streamed) = (values("whole"), values("stream"));
    for (a, b) in whole.iter().zip(&streamed) {
        assert!(
            (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            "{whole:?} vs {streamed:?}"
        );
    }
    assert_eq!(whole.len(), 3);
    // It refuses a proxy that needs every linear at once, naming it.
    let out = lpzero(&[
        "subnet",
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--subnets",
        "heuristic",
        "--proxy",
        "total(weight)",
        "--mode",
        "stream",
    ]);
    assert_fails(&out, &["total(weight)", "`total`"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn subnet_score_runs_the_extra_pass_proxies_on_the_whole_probe() {
    let dir = tiny_model(
        "extra",
        serde_json::json!({"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64}),
    );
    let model = dir.to_str().unwrap();
    let extra = "fisher,grasp,synflow,logsynflow,jacob_cov,attention_confidence";
    let score = |proxy: &str, mode: &str| {
        lpzero(&[
            "subnet",
            "score",
            "--model",
            model,
            "--subnets",
            "random:2",
            "--proxy",
            proxy,
            "--batch",
            "2",
            "--seq-len",
            "8",
            "--mode",
            mode,
            "--json",
        ])
    };
    // `auto` probes a tiny model whole; the extra-pass proxies sit beside the others.
    for mode in ["whole", "auto"] {
        let out = score(&format!("snip,{extra},head_confidence"), mode);
        let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert_eq!(row["score"]["streamed"], false);
            let values = row["score"]["values"].as_array().unwrap();
            assert_eq!(values.len(), 8);
            for (i, x) in values.iter().enumerate() {
                if i == 4 {
                    // logsynflow is undefined for Llama (see the README): NaN, JSON null.
                    assert!(x.is_null(), "{mode} {i}: {x}");
                } else {
                    assert!(x.as_f64().is_some_and(f64::is_finite), "{mode} {i}: {x}");
                }
            }
        }
    }
    // `all` (the single-pass built-ins) works on the same model.
    let out = score("all", "auto");
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert!(v[0]["score"]["values"].as_array().unwrap().len() > 10);
    // Streaming refuses them by name, pointing at the whole probe.
    for name in extra.split(',') {
        let out = score(name, "stream");
        assert_fails(
            &out,
            &[&format!("`{name}`"), "extra passes", "mode `whole`"],
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn subnet_search_writes_a_front_and_a_best_subnet_that_score_reads() {
    let dir = tiny_model("search", serde_json::json!({"num_hidden_layers": 3}));
    let model = dir.to_str().unwrap();
    let heur = lpzero(&[
        "subnet",
        "params",
        "--model",
        model,
        "--subnet",
        "heuristic",
        "--json",
    ]);
    let budget: serde_json::Value = serde_json::from_str(&stdout_of(&heur)).unwrap();
    let budget = budget["total"].as_u64().unwrap();
    let out_dir = dir.join("run");
    let out = lpzero(&[
        "subnet",
        "search",
        "--model",
        model,
        "--proxy",
        "grad_norm",
        "--max-params",
        &budget.to_string(),
        "--population",
        "6",
        "--generations",
        "2",
        "--seq-len",
        "8",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    let front: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert!(!front["front"].as_array().unwrap().is_empty());
    for f in ["front.csv", "evaluated.csv", "front.svg", "best.json"] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }
    let best = out_dir.join("best.json");
    let out = lpzero(&[
        "subnet",
        "score",
        "--model",
        model,
        "--subnets",
        best.to_str().unwrap(),
        "--proxy",
        "params",
        "--seq-len",
        "8",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(v[0]["name"], "best");
    assert!(v[0]["count"]["total"].as_u64().unwrap() <= budget);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn llama_bench_file_records_are_scored_through_the_family_seam() {
    let dir = tiny_model("benchfile", serde_json::json!({}));
    let model = dir.to_str().unwrap();
    let lines: Vec<String> = [
        ([32, 32], 10.0),
        ([16, 16], 14.0),
        ([24, 32], 11.0),
        ([16, 24], 13.0),
    ]
    .iter()
    .enumerate()
    .map(|(i, (w, t))| {
        serde_json::json!({"id": format!("s{i}"), "family": "llama",
                "config": {"model": model, "ffn_widths": w}, "truth": t, "higher_is_better": false})
        .to_string()
    })
    .collect();
    let file = dir.join("subnets.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let f = file.to_str().unwrap();
    let out = lpzero(&["params", "--bench-file", f]);
    let text = stdout_of(&out);
    assert!(
        text.starts_with("id,total,non_embedding,flops_per_token"),
        "{text}"
    );
    let out = lpzero(&[
        "score",
        "--bench-file",
        f,
        "--proxy",
        "params,snip",
        "--seq-len",
        "8",
        "--json",
    ]);
    let text = stdout_of(&out);
    assert!(text.contains("\"params\""), "{text}");
    // Through the family seam too, the extra passes run when a proxy needs them.
    let out = lpzero(&[
        "score",
        "--bench-file",
        f,
        "--proxy",
        "fisher,grasp",
        "--seq-len",
        "8",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    let proxies = v["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2);
    for p in proxies {
        assert_eq!(p["non_finite"], 0, "{p}");
        assert!(p["spearman"].is_number(), "{p}");
    }
    // A sub-network that does not fit the model is named.
    let bad = dir.join("bad.jsonl");
    let rec = serde_json::json!({"id": "x", "family": "llama",
        "config": {"model": model, "ffn_widths": [64, 32]}, "truth": 1.0, "higher_is_better": false});
    std::fs::write(&bad, rec.to_string()).unwrap();
    let out = lpzero(&[
        "score",
        "--bench-file",
        bad.to_str().unwrap(),
        "--proxy",
        "snip",
        "--seq-len",
        "8",
    ]);
    assert_fails(&out, &["ffn_widths[0]"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn head_and_ffn_choices_shape_the_space() {
    // Parameter counts only: the initialiser does not matter.
    let dir = tiny_model(
        "choices",
        serde_json::json!({"num_attention_heads": 4, "num_key_value_heads": 2}),
    );
    let model = dir.to_str().unwrap();
    let count = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "subnet",
            "params",
            "--model",
            model,
            "--subnet",
            "heuristic",
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&stdout_of(&lpzero(&args))).unwrap()
    };
    let plain = count(&[]);
    assert_eq!(plain["ffn_widths"], serde_json::json!([24, 24]));
    // Heuristic heads: the middle of {4, 2} is 2 (one key/value head): fewer parameters.
    let heads = count(&["--head-choices", "4,2"]);
    assert!(heads["total"].as_u64() < plain["total"].as_u64());
    let ffn = count(&["--ffn-choices", "32,8,16"]);
    assert_eq!(ffn["ffn_widths"], serde_json::json!([16, 16]));
    // A head count that is not a multiple of the group size is refused by name.
    let out = lpzero(&["subnet", "params", "--model", model, "--head-choices", "3"]);
    assert_fails(&out, &["--head-choices", "heads"]);
    let _ = std::fs::remove_dir_all(dir);
}
