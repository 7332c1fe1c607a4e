//! `lpzero nas` end to end on tiny runs: new architectures drawn from a space and ranked by a
//! cheap proxy, a small benchmark subset, the JSON shape, the files it writes, a sharded run
//! merged, validation from a score table, and errors that name the flag.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails, lpzero, stdout_of};
use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    common::fresh_temp_path("nas", name)
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

/// Tiny probes: one row of 8 tokens, one timed pass.
const TINY: [&str; 6] = ["--batch", "1", "--seq-len", "8", "--latency-repeats", "1"];

fn nas(args: &[&str]) -> std::process::Output {
    let mut all = vec!["nas"];
    all.extend_from_slice(args);
    all.extend_from_slice(&TINY);
    lpzero(&all)
}

/// `candidates.csv` without its latency column (a measurement, different on every run).
fn candidates_without_latency(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("candidates.csv")).unwrap();
    text.lines()
        .map(|l| {
            let mut cells: Vec<&str> = l.split(',').collect();
            cells.remove(4);
            cells.join(",")
        })
        .collect()
}

#[test]
fn a_sample_of_three_is_ranked_and_written_in_the_benchmark_format() {
    let out = tmp("sample3");
    let args = [
        "--bench",
        "flexibert",
        "--proxy",
        "params",
        "--space",
        "sample:3",
        "--top",
        "2",
        "--seed",
        "5",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ];
    let text = stdout_of(&nas(&args));
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["candidates"], 3);
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    for t in top {
        assert!(t["id"].as_str().unwrap().starts_with('s'));
        assert!(t["config"]["encoder_layers"].is_array(), "{t}");
        assert!(t["params"].as_u64().unwrap() > 0);
        assert!(t["latency_ms"].as_f64().unwrap() > 0.0);
        assert!(t["score"].is_number());
    }
    // params is its own score: the top is the largest, and the front by parameters holds
    // every candidate (each larger one scores higher).
    assert!(top[0]["params"].as_u64() >= top[1]["params"].as_u64());
    assert_eq!(
        top[0]["score"].as_f64().unwrap(),
        top[0]["params"].as_f64().unwrap()
    );
    assert_eq!(v["pareto"].as_array().unwrap().len(), 3);
    for f in [
        "nas.json",
        "candidates.csv",
        "pareto.csv",
        "pareto.svg",
        "top_k.jsonl",
        "top_k.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The top as a bench file reads back (the same checks as any bench file) ...
    let bench = lpzero::models::load_bench_file(&out.join("top_k.jsonl")).unwrap();
    assert_eq!(bench.len(), 2);
    // ... and the native file is shaped like BERT_benchmark.json's records.
    let native: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("top_k.json")).unwrap()).unwrap();
    let record = &native[0]["hparams"]["model_hparam_overrides"];
    assert!(record["nas_config"]["encoder_layers"].is_array());
    assert_eq!(native[0]["lpzero"]["rank"], 1);
    // The same seed draws and ranks the same architectures.
    let again = tmp("sample3_again");
    let mut args2 = args.to_vec();
    let n = args2.len();
    args2[n - 1] = again.to_str().unwrap();
    let v2: Value = serde_json::from_str(&stdout_of(&nas(&args2))).unwrap();
    let ids = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].clone(), t["config"].clone(), t["score"].clone()))
            .collect()
    };
    assert_eq!(ids(&v), ids(&v2));
    assert_eq!(
        candidates_without_latency(&out),
        candidates_without_latency(&again)
    );
}

#[test]
fn a_benchmark_subset_respects_the_budget_and_evolves() {
    let out = tmp("subset");
    let file = example("bench_file_example.jsonl");
    let text = stdout_of(&nas(&[
        "--bench-file",
        &file,
        "--proxy",
        "params",
        "--max-params",
        "12000000",
        "--evolve",
        "1",
        "--children",
        "2",
        "--top",
        "3",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["candidates"].as_u64().unwrap(), 4 + 2);
    for t in v["top"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["pareto"].as_array().unwrap())
    {
        assert!(t["params"].as_u64().unwrap() <= 12_000_000, "{t}");
    }
    // The benchmark's architectures keep their ids and truth; mutants carry their config.
    let csv = std::fs::read_to_string(out.join("candidates.csv")).unwrap();
    assert!(csv.lines().any(|l| l.contains(",flexibert_0,0,")), "{csv}");
    assert!(csv.lines().any(|l| l.contains(",g1_0,1,")), "{csv}");
}

#[test]
fn probes_taking_turns_within_a_memory_budget_rank_alike() {
    // A budget far below one probe makes every probe run alone; the values cannot move.
    let run = |name: &str, budget: &str| {
        let out = tmp(name);
        stdout_of(&nas(&[
            "--bench",
            "flexibert",
            "--proxy",
            "grad_norm",
            "--space",
            "sample:3",
            "--seed",
            "2",
            "--threads",
            "2",
            "--memory-budget",
            budget,
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]));
        candidates_without_latency(&out)
    };
    let whole = run("budget_default", "4");
    assert_eq!(whole.len(), 4, "header and 3 candidates: {whole:?}");
    assert_eq!(whole, run("budget_tiny", "0.000001"));
    assert_eq!(whole, run("budget_none", "none"));
    let refused = nas(&[
        "--bench",
        "flexibert",
        "--proxy",
        "grad_norm",
        "--memory-budget",
        "0",
    ]);
    assert_fails(&refused, &["--memory-budget"]);
}

/// Runs `nas` with `common` unsharded and as two shards merged; both write the same
/// candidates (latency aside). Returns the merged output folder.
fn sharded_equals_whole(name: &str, common: &[&str]) -> PathBuf {
    let whole = tmp(&format!("{name}_whole"));
    let mut args = common.to_vec();
    args.extend(["--out", whole.to_str().unwrap()]);
    stdout_of(&nas(&args));
    let mut files = Vec::new();
    for i in 0..2 {
        let file = tmp(&format!("{name}_shard{i}.jsonl"));
        let shard = format!("{i}/2");
        let mut args = common.to_vec();
        args.extend(["--shard", &shard, "--out", file.to_str().unwrap()]);
        stdout_of(&nas(&args));
        files.push(file.to_str().unwrap().to_string());
    }
    let merged = tmp(&format!("{name}_merged"));
    let text = stdout_of(&lpzero(&[
        "merge",
        &files[0],
        &files[1],
        "--out",
        merged.to_str().unwrap(),
        "--json",
    ]));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["command"].as_str(), v["complete"].as_bool()),
        (Some("nas"), Some(true))
    );
    assert_eq!(
        candidates_without_latency(&whole),
        candidates_without_latency(&merged)
    );
    merged
}

#[test]
fn shards_of_a_sample_merge_into_the_unsharded_result() {
    let common = [
        "--bench",
        "gpt2",
        "--proxy",
        "decoder_params",
        "--space",
        "sample:4",
        "--seed",
        "3",
    ];
    let merged = sharded_equals_whole("sample", &common);
    assert!(merged.join("top_k").is_dir());
}

#[test]
fn shards_of_a_bench_file_merge_into_the_unsharded_result() {
    let file = example("bench_file_example.jsonl");
    let common = ["--bench-file", &file, "--proxy", "params", "--top", "2"];
    let merged = sharded_equals_whole("file", &common);
    assert!(merged.join("top_k.json").is_file());
}

#[test]
fn validation_reads_a_score_table() {
    let file = example("bench_file_example.jsonl");
    let scores = tmp("scores.csv");
    // Made-up `params` values for the four records (validation reads the column as is).
    std::fs::write(
        &scores,
        "id,params\nflexibert_0,1\nflexibert_1,4\nflexibert_35,2\nflexibert_250,3\n",
    )
    .unwrap();
    let out = tmp("validate");
    let text = stdout_of(&lpzero(&[
        "nas",
        "--bench-file",
        &file,
        "--proxy",
        "params",
        "--scores",
        scores.to_str().unwrap(),
        "--validate",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "one row per quantile: {v}");
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap();
        assert!(
            f("best") >= f("proxy_top1") && f("best") >= f("params_top1"),
            "{r}"
        );
        // Five picks cover every architecture within a budget of at most four.
        assert_eq!(f("best"), f("proxy_top5"), "{r}");
    }
    assert_eq!(rows[2]["within"], 3);
    let md = std::fs::read_to_string(out.join("validation.md")).unwrap();
    assert!(md.starts_with("| proxy | budget"), "{md}");
}

#[test]
fn bad_flags_are_named() {
    assert_fails(
        &nas(&[
            "--bench", "gpt2", "--proxy", "params", "--space", "sample:0",
        ]),
        &["--space", "sample:N"],
    );
    assert_fails(
        &nas(&["--bench", "gpt2", "--proxy", "params", "--depth", "0..=3"]),
        &["--depth", "non-empty range"],
    );
    assert_fails(
        &nas(&["--bench", "gpt2", "--proxy", "nope"]),
        &["--proxy", "unknown proxy"],
    );
    let scores = tmp("empty_scores.csv");
    std::fs::write(&scores, "id,other\nconfig_0_j0,1\n").unwrap();
    assert_fails(
        &nas(&[
            "--bench",
            "gpt2",
            "--proxy",
            "params",
            "--scores",
            scores.to_str().unwrap(),
        ]),
        &["--scores", "no column `params`"],
    );
    assert_fails(
        &nas(&[
            "--bench",
            "gpt2",
            "--proxy",
            "params",
            "--space",
            "sample:2",
            "--evolve",
            "1",
            "--shard",
            "0/2",
            "--out",
            tmp("x.jsonl").to_str().unwrap(),
        ]),
        &["--evolve does not go with --shard"],
    );
    let table = tmp("decoder_scores.csv");
    std::fs::write(&table, "id,decoder_params\nconfig_0_j0,1\n").unwrap();
    assert_fails(
        &nas(&[
            "--bench",
            "gpt2",
            "--proxy",
            "decoder_params",
            "--scores",
            table.to_str().unwrap(),
            "--evolve",
            "1",
        ]),
        &["--evolve makes new architectures", "--scores"],
    );
    // A table that lacks an architecture names the file and the architecture.
    assert_fails(
        &nas(&[
            "--bench",
            "gpt2",
            "--proxy",
            "decoder_params",
            "--scores",
            table.to_str().unwrap(),
        ]),
        &[
            "decoder_scores.csv",
            "no row for architecture `config_0_j1`",
        ],
    );
}

#[test]
fn a_rank_sum_ensemble_is_scored_then_ranks_the_nas() {
    let file = example("bench_file_example.jsonl");
    let scores = tmp("rank_sum.csv");
    let text = stdout_of(&lpzero(&[
        "score",
        "--bench-file",
        &file,
        "--proxy",
        "params; head_confidence",
        "--rank-sum",
        "--batch",
        "1",
        "--seq-len",
        "8",
        "--out",
        scores.to_str().unwrap(),
    ]));
    assert!(text.contains("rank_sum"), "{text}");
    // The column is the sum of the two columns' ranks (both higher-is-better).
    let table = std::fs::read_to_string(&scores).unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.last(), Some(&"rank_sum"), "{table}");
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| {
            l.split(',')
                .skip(1)
                .map(|c| c.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let rank = |col: usize, row: usize| -> f64 {
        let v = rows[row][col - 1];
        let below = rows.iter().filter(|r| r[col - 1] < v).count() as f64;
        let tied = rows.iter().filter(|r| r[col - 1] == v).count() as f64;
        below + (tied + 1.0) / 2.0
    };
    for (row, r) in rows.iter().enumerate() {
        let expected = rank(at("params"), row) + rank(at("head_confidence"), row);
        assert_eq!(r[at("rank_sum") - 1], expected, "{table}");
    }
    // `nas` reads the ensemble's column; its top is the highest rank sum.
    let out = tmp("rank_sum_nas");
    let text = stdout_of(&nas(&[
        "--bench-file",
        &file,
        "--proxy",
        "rank_sum",
        "--scores",
        scores.to_str().unwrap(),
        "--top",
        "1",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&text).unwrap();
    let best = rows
        .iter()
        .map(|r| r[at("rank_sum") - 1])
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(v["top"][0]["score"].as_f64(), Some(best), "{text}");
    assert_eq!(v["proxy"], "rank_sum");
    // Without a score table there is nothing to read it from.
    assert_fails(
        &nas(&["--bench-file", &file, "--proxy", "rank_sum"]),
        &["--proxy rank_sum", "--scores"],
    );
}

#[test]
fn validation_adds_the_rank_sum_of_the_listed_proxies() {
    let file = example("bench_file_example.jsonl");
    let scores = tmp("scores_two.csv");
    // Two made-up columns that order the records alike: their rank sum orders them so too.
    std::fs::write(
        &scores,
        "id,params,snip\nflexibert_0,1,10\nflexibert_1,4,40\nflexibert_35,2,20\nflexibert_250,3,30\n",
    )
    .unwrap();
    let text = stdout_of(&lpzero(&[
        "nas",
        "--bench-file",
        &file,
        "--proxy",
        "params,snip",
        "--scores",
        scores.to_str().unwrap(),
        "--validate",
        "--rank-sum",
        "--json",
        "--out",
        tmp("validate_rank_sum").to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let of = |name: &str| -> Vec<&Value> { rows.iter().filter(|r| r["proxy"] == name).collect() };
    assert_eq!(of("rank_sum").len(), 3, "one row per quantile: {v}");
    for (p, r) in of("params").iter().zip(of("rank_sum")) {
        assert_eq!(p["proxy_top1"], r["proxy_top1"], "{v}");
        assert_eq!(p["within"], r["within"], "{v}");
    }
    // Without --validate the flag is refused by name.
    assert_fails(
        &nas(&["--bench-file", &file, "--proxy", "params", "--rank-sum"]),
        &["--validate"],
    );
}
