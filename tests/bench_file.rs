//! Bench files (`--bench-file`, JSON Lines): the shipped examples load and score like the
//! same architectures of the shipped benchmarks, and each kind of bad record gets one clear
//! error naming the file, the line and the field.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use lpzero::bench::{flexibert, gpt2, Benchmark, DataSource};
use lpzero::models::flexibert::SizeMode;
use lpzero::models::load_bench_file;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn lpzero(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lpzero"))
        .args(args)
        .env_remove(lpzero::bench::DATA_ENV)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    common::fresh_temp_path("bench-file", name)
}

#[test]
fn flexibert_example_matches_the_shipped_records() {
    let mine = load_bench_file(&example("bench_file_example.jsonl")).unwrap();
    let shipped = Benchmark::load(flexibert::KIND, &DataSource::Embedded).unwrap();
    assert_eq!(mine.kind, flexibert::KIND);
    assert!(mine.has_truth());
    let ids = [0, 1, 35, 250];
    assert_eq!(mine.len(), ids.len());
    for (entry, &id) in mine.entries.iter().zip(&ids) {
        let reference = &shipped.entries[id];
        assert_eq!(entry.key, format!("flexibert_{id}"));
        assert_eq!(entry.truth, reference.truth, "{}", entry.key);
        let (Some(a), Some(b)) = (
            entry.arch.get::<flexibert::Record>(),
            reference.arch.get::<flexibert::Record>(),
        ) else {
            panic!("expected FlexiBERT records");
        };
        assert_eq!((&a.layers, a.hidden_size), (&b.layers, b.hidden_size));
    }
}

#[test]
fn gpt2_example_matches_the_shipped_records() {
    let mine = load_bench_file(&example("bench_file_gpt2.jsonl")).unwrap();
    let shipped = Benchmark::load(gpt2::KIND, &DataSource::Embedded).unwrap();
    assert_eq!(mine.kind, gpt2::KIND);
    // The file's truth is the perplexity, lower is better: lpzero negates it like the shipped
    // benchmark does, and reports raw correlations against `truth` with the sign flipped.
    assert_eq!(mine.raw_truth, ("truth", -1.0));
    let all: Vec<usize> = (0..mine.len()).collect();
    let counts = lpzero::params::count_columns(&mine, &all, SizeMode::Faithful).unwrap();
    for (entry, count) in mine.entries.iter().zip(&counts) {
        let reference = shipped.entries.iter().find(|e| e.key == entry.key).unwrap();
        assert_eq!(entry.truth, reference.truth, "{}", entry.key);
        let Some(r) = reference.arch.get::<gpt2::Record>() else {
            panic!("expected a GPT-2 record");
        };
        assert_eq!(count.total as u64, r.params.unwrap().total, "{}", entry.key);
        let Some(a) = entry.arch.get::<gpt2::Record>() else {
            panic!("expected a GPT-2 record");
        };
        assert!(a.ppl.is_none() && a.params.is_none());
        assert_eq!((&a.n_head, &a.d_inner), (&r.n_head, &r.d_inner));
    }
}

/// `score --proxy params` on the example equals the same architectures of the shipped
/// benchmark: the same counts, the same truth, the same correlations.
#[test]
fn example_scores_like_the_shipped_benchmark() {
    let file = example("bench_file_example.jsonl");
    let (a, b) = (tmp("example.csv"), tmp("shipped.csv"));
    // The reference's sizes, whose counts the assertions below spell out.
    let mine = common::stdout_of(&lpzero(&[
        "score",
        "--sizes",
        "faithful",
        "--bench-file",
        file.to_str().unwrap(),
        "--proxy",
        "params",
        "--json",
        "--out",
        a.to_str().unwrap(),
    ]));
    let shipped = common::stdout_of(&lpzero(&[
        "score",
        "--sizes",
        "faithful",
        "--bench",
        "flexibert",
        "--archs",
        "0,1,35,250",
        "--proxy",
        "params",
        "--json",
        "--out",
        b.to_str().unwrap(),
    ]));
    let (mine, shipped): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&mine).unwrap(),
        serde_json::from_str(&shipped).unwrap(),
    );
    for key in ["n", "spearman", "kendall", "top10_overlap"] {
        assert_eq!(mine[key], shipped[key], "{key}");
    }
    let columns = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split_once(',').unwrap().1.to_string())
            .collect()
    };
    assert_eq!(columns(&a), columns(&b));
    let rows = std::fs::read_to_string(&a).unwrap();
    let row = rows.lines().nth(3).unwrap();
    assert!(
        row.starts_with("flexibert_35,56.79") && row.ends_with(",9557650"),
        "{row}"
    );

    // Other commands read it too; a --bench that agrees is accepted.
    let out = common::stdout_of(&lpzero(&[
        "params",
        "--sizes",
        "faithful",
        "--bench",
        "flexibert",
        "--bench-file",
        file.to_str().unwrap(),
        "--archs",
        "2",
    ]));
    assert_eq!(out, "id,total\nflexibert_35,9557650\n");
}

/// Without `truth`, `score` gives the values (empty truth column, null correlations), while
/// the commands that rank against the truth refuse with a message saying what is missing.
#[test]
fn records_without_truth_are_scored_but_not_searched() {
    let text = std::fs::read_to_string(example("bench_file_example.jsonl")).unwrap();
    let candidates: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object_mut().unwrap();
            obj.remove("truth");
            obj.remove("higher_is_better");
            v.to_string()
        })
        .collect();
    let file = tmp("candidates.jsonl");
    std::fs::write(&file, candidates.join("\n")).unwrap();
    let f = file.to_str().unwrap();
    let csv = tmp("candidates.csv");
    let out = common::stdout_of(&lpzero(&[
        "score",
        "--sizes",
        "faithful",
        "--bench-file",
        f,
        "--proxy",
        "params",
        "--json",
        "--out",
        csv.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["n"], 4);
    assert!(
        v["spearman"].is_null() && v["top10_overlap"].is_null(),
        "{v}"
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(
        csv.starts_with("id,truth,params\nflexibert_0,,13330176\n"),
        "{csv}"
    );
    // The table output lists the values.
    let out = common::stdout_of(&lpzero(&[
        "score",
        "--sizes",
        "faithful",
        "--bench-file",
        f,
        "--proxy",
        "params",
    ]));
    assert!(out.contains("no ground truth") && out.contains("flexibert_1,,11106199"));

    for command in ["search", "baselines"] {
        let out = lpzero(&[command, "--bench-file", f]);
        common::assert_fails(&out, &["candidates.jsonl", "`truth`"]);
    }
}

/// The example's first FlexiBERT record, as a JSON value to modify.
fn good_record() -> serde_json::Value {
    let text = std::fs::read_to_string(example("bench_file_example.jsonl")).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// The error for a file of these lines; checks it is one line naming the file.
fn error_for(lines: &[String]) -> String {
    let text = lines.join("\n");
    let msg = format!(
        "{:#}",
        lpzero::bench::jsonl::parse(&text, Path::new("mine.jsonl"), &lpzero::models::kinds())
            .unwrap_err()
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(msg.starts_with("mine.jsonl: "), "{msg}");
    msg
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should mention `{p}`");
    }
}

/// Two good records (ids `a` and `b`) and then `third`.
fn with_third(third: serde_json::Value) -> Vec<String> {
    let mut a = good_record();
    a["id"] = "a".into();
    let mut b = good_record();
    b["id"] = "b".into();
    vec![a.to_string(), b.to_string(), third.to_string()]
}

#[test]
fn bad_json_names_the_line_and_column() {
    let mut lines = with_third(good_record());
    lines[1] = r#"{"id": "b", "family": "flexibert","#.to_string();
    let msg = error_for(&lines);
    assert_names(&msg, &["line 2, column", "not valid JSON"]);
    // A key given twice inside a line.
    lines[1] = lines[0].replacen("\"truth\"", "\"truth\": 1.0, \"truth\"", 1);
    let msg = error_for(&lines);
    assert_names(&msg, &["line 2", "`truth` is given twice"]);
    lines[1] = "[1, 2]".to_string();
    let msg = error_for(&lines);
    assert_names(&msg, &["line 2", "expected a JSON object", "an array"]);
}

#[test]
fn missing_fields_are_named() {
    for field in ["id", "family", "config", "higher_is_better"] {
        let mut r = good_record();
        r.as_object_mut().unwrap().remove(field);
        let msg = error_for(&with_third(r));
        assert_names(&msg, &["line 3", &format!("field `{field}`"), "missing"]);
    }
    let mut r = good_record();
    r["config"]["encoder_layers"][1]
        .as_object_mut()
        .unwrap()
        .remove("num_feed_forward");
    let msg = error_for(&with_third(r));
    assert_names(
        &msg,
        &["line 3", "config.encoder_layers[1]", "num_feed_forward"],
    );
    // Truth on some records only.
    let mut r = good_record();
    r.as_object_mut().unwrap().remove("truth");
    let msg = error_for(&with_third(r));
    assert_names(&msg, &["line 3", "field `truth`", "line 1 has one"]);
}

#[test]
fn wrong_types_and_values_are_named() {
    let cases: [(&str, serde_json::Value, &[&str]); 4] = [
        (
            "truth",
            "high".into(),
            &["field `truth`", "expected a number", "high"],
        ),
        (
            "higher_is_better",
            "yes".into(),
            &["field `higher_is_better`", "true or false"],
        ),
        ("id", 1.5.into(), &["field `id`", "1.5"]),
        (
            "config",
            serde_json::json!([1]),
            &["field `config`", "an array"],
        ),
    ];
    for (field, value, parts) in cases {
        let mut r = good_record();
        r[field] = value;
        let msg = error_for(&with_third(r));
        assert_names(&msg, &["line 3"]);
        assert_names(&msg, parts);
    }
    let mut r = good_record();
    r["config"]["encoder_layers"][0]["num_operation_heads"] = "four".into();
    let msg = error_for(&with_third(r));
    assert_names(
        &msg,
        &[
            "line 3",
            "field `config.encoder_layers[0].num_operation_heads`",
            "expected a non-negative integer",
        ],
    );
    // The benchmark's own checks apply to the config.
    let mut r = good_record();
    r["config"]["encoder_layers"][2]["operation_type"] = "RNN".into();
    let msg = error_for(&with_third(r));
    assert_names(
        &msg,
        &[
            "field `config.encoder_layers[2].operation_type`",
            "\"SA\", \"LT\" or \"DSC\"",
        ],
    );
    let mut r = good_record();
    r["typo"] = 1.into();
    let msg = error_for(&with_third(r));
    assert_names(&msg, &["field `typo`", "unknown field", "higher_is_better"]);
}

#[test]
fn unknown_or_mixed_families_are_rejected() {
    let mut r = good_record();
    r["family"] = "resnet".into();
    let msg = error_for(&with_third(r));
    assert_names(
        &msg,
        &[
            "line 3",
            "field `family`",
            "\"flexibert\", \"gpt2\" or \"llama\"",
            "resnet",
        ],
    );

    let gpt2 = std::fs::read_to_string(example("bench_file_gpt2.jsonl")).unwrap();
    let gpt2: serde_json::Value = serde_json::from_str(gpt2.lines().next().unwrap()).unwrap();
    let msg = error_for(&with_third(gpt2.clone()));
    assert_names(
        &msg,
        &["line 3", "field `family`", "line 1", "one family per file"],
    );
    // A GPT-2 config gets the GPT-2 benchmark's checks.
    let mut bad = gpt2;
    bad["config"]["n_head"][1] = 3.into();
    let msg = error_for(&[bad.to_string()]);
    assert_names(&msg, &["line 1", "field `config.n_head[1]`", "d_model"]);
}

#[test]
fn duplicate_ids_and_orientations_are_rejected() {
    let mut r = good_record();
    r["id"] = "a".into();
    let msg = error_for(&with_third(r));
    assert_names(&msg, &["line 3", "field `id`", "`a`", "line 1"]);
    let mut r = good_record();
    r["higher_is_better"] = false.into();
    let msg = error_for(&with_third(r));
    assert_names(&msg, &["line 3", "field `higher_is_better`", "line 1"]);
    let msg = error_for(&["".to_string(), "  ".to_string()]);
    assert_names(&msg, &["no record"]);
}

/// Through the binary the message also names the option.
#[test]
fn cli_errors_name_the_option_and_the_family_conflict() {
    let file = tmp("bad.jsonl");
    std::fs::write(&file, format!("{}\n{{\"id\": 2}}\n", good_record())).unwrap();
    let out = lpzero(&[
        "score",
        "--bench-file",
        file.to_str().unwrap(),
        "--proxy",
        "params",
    ]);
    common::assert_fails(&out, &["--bench-file", "bad.jsonl: line 2: field `family`"]);
    let gpt2 = example("bench_file_gpt2.jsonl");
    let out = lpzero(&[
        "score",
        "--bench",
        "flexibert",
        "--bench-file",
        gpt2.to_str().unwrap(),
        "--proxy",
        "params",
    ]);
    common::assert_fails(&out, &["--bench flexibert conflicts", "gpt2"]);
    // A config that passes the file checks but cannot be built names the architecture by id.
    let mut r = good_record();
    r["config"]["encoder_layers"][0]["num_operation_heads"] = 3.into();
    std::fs::write(&file, r.to_string()).unwrap();
    let out = lpzero(&["params", "--bench-file", file.to_str().unwrap()]);
    common::assert_fails(&out, &["flexibert_0", "3 heads"]);
    let out = lpzero(&[
        "score",
        "--bench-file",
        "/nonexistent/x.jsonl",
        "--proxy",
        "params",
    ]);
    common::assert_fails(&out, &["/nonexistent/x.jsonl"]);
}
