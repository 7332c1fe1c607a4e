//! Sharded runs end to end: shards merged equal the unsharded output, `--shard auto` reads
//! the scheduler's environment, a killed shard resumes, and bad input gets clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_fails, stdout_of};

/// Runs lpzero with `args`, the scheduler variables cleared and `env` set.
fn lpzero_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpzero"));
    for var in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_STEP",
        "JOB_COMPLETION_INDEX",
        "LPZERO_SHARD_COUNT",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).args(args).output().unwrap()
}

fn lpzero(args: &[&str]) -> Output {
    lpzero_env(args, &[])
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout_of(out)).unwrap()
}

/// A fixture benchmark folder and a scratch folder inside it.
fn fixture(name: &str) -> (PathBuf, String) {
    let dir = common::fixture_data_dir(name, &common::fixture_records());
    let d = dir.to_str().unwrap().to_string();
    (dir, d)
}

/// `score` on the fixture with a tiny probe, in an order that is not the benchmark's.
fn score_args<'a>(d: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "score",
        "--data-dir",
        d,
        "--proxy",
        "head_confidence,snip,lpzero_bert",
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--archs",
        "3,0..3",
    ];
    args.extend(extra);
    args
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn three_shards_merge_to_the_unsharded_csv() {
    let (dir, d) = fixture("shard-merge");
    let full = dir.join("full.csv");
    let whole = json(&lpzero(&score_args(&d, &["--out", path(&full), "--json"])));
    let files: Vec<PathBuf> = (0..3)
        .map(|i| dir.join(format!("shards/score_{i}.jsonl")))
        .collect();
    for (i, f) in files.iter().enumerate() {
        let shard = format!("{i}/3");
        let r = json(&lpzero(&score_args(
            &d,
            &["--shard", &shard, "--out", path(f), "--json"],
        )));
        assert_eq!(r["shard"], shard.as_str());
        assert_eq!(r["share"], if i == 0 { 2 } else { 1 });
        assert_eq!(r["scored"], r["share"]);
        assert_eq!(r["skipped"], 0);
    }
    let merged = dir.join("merged.csv");
    // Any order of the files gives the same output.
    let mut args = vec!["merge", path(&files[2]), path(&files[0]), path(&files[1])];
    args.extend(["--out", path(&merged), "--json"]);
    let summary = json(&lpzero(&args));
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&full).unwrap(),
        "merged shards differ from the unsharded CSV"
    );
    assert_eq!(summary["n"], 4);
    assert_eq!(summary["merged"], 4);
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["missing"], serde_json::json!([]));
    assert_eq!(summary["duplicates"], serde_json::json!([]));
    for (ours, theirs) in summary["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .zip(whole["proxies"].as_array().unwrap())
    {
        for key in [
            "proxy",
            "spearman",
            "kendall",
            "non_finite",
            "top10_overlap",
        ] {
            assert_eq!(ours[key], theirs[key], "{key}");
        }
    }
    // Without --json: a summary line and the correlation table.
    let text = stdout_of(&lpzero(&[
        "merge",
        path(&files[0]),
        path(&files[1]),
        path(&files[2]),
        "--out",
        path(&merged),
    ]));
    assert!(text.starts_with("merged 3 shard file(s) of `lpzero score` (flexibert): 4 of 4"));
    assert!(text.contains("lpzero_bert"), "{text}");
}

#[test]
fn shard_auto_reads_slurm_and_kubernetes_variables() {
    let (dir, d) = fixture("shard-env");
    let out = dir.join("auto.jsonl");
    let args = [
        "score",
        "--data-dir",
        &d,
        "--proxy",
        "params",
        "--shard",
        "auto",
        "--out",
        path(&out),
        "--json",
    ];
    let slurm = [
        ("SLURM_ARRAY_TASK_ID", "1"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ];
    let r = json(&lpzero_env(&args, &slurm));
    assert_eq!(r["shard"], "1/3");
    assert_eq!(r["share"], 1);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("\"shard\":\"1/3\""), "{text}");
    assert!(
        text.lines().nth(1).unwrap().contains("\"id\":\"1\""),
        "{text}"
    );
    // A 1-based array (--array=1-3) numbers the same shards from its first index.
    std::fs::remove_file(&out).unwrap();
    let one_based = [
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
    ];
    assert_eq!(json(&lpzero_env(&args, &one_based))["shard"], "1/3");
    // Kubernetes: the index from JOB_COMPLETION_INDEX, the count from --shard-count or
    // LPZERO_SHARD_COUNT.
    std::fs::remove_file(&out).unwrap();
    let k8s = [("JOB_COMPLETION_INDEX", "2"), ("LPZERO_SHARD_COUNT", "4")];
    let r = json(&lpzero_env(&args, &k8s));
    assert_eq!(
        (r["shard"].as_str(), r["share"].as_u64()),
        (Some("2/4"), Some(1))
    );
    std::fs::remove_file(&out).unwrap();
    let mut with_count = args.to_vec();
    with_count.extend(["--shard-count", "2"]);
    let r = json(&lpzero_env(&with_count, &[("JOB_COMPLETION_INDEX", "0")]));
    assert_eq!(
        (r["shard"].as_str(), r["share"].as_u64()),
        (Some("0/2"), Some(2))
    );
    // Outside a job array there is nothing to read.
    assert_fails(
        &lpzero(&args),
        &[
            "--shard auto",
            "SLURM_ARRAY_TASK_ID",
            "JOB_COMPLETION_INDEX",
        ],
    );
    assert_fails(
        &lpzero_env(&args, &[("JOB_COMPLETION_INDEX", "0")]),
        &["--shard auto", "--shard-count N", "LPZERO_SHARD_COUNT"],
    );
}

#[test]
fn a_killed_shard_resumes_and_probes_only_what_is_missing() {
    let (dir, d) = fixture("shard-resume");
    let full = dir.join("full.csv");
    stdout_of(&lpzero(&score_args(&d, &["--out", path(&full)])));
    let s0 = dir.join("s0.jsonl");
    let s1 = dir.join("s1.jsonl");
    let shard = |i: usize, f: &Path| {
        let spec = format!("{i}/2");
        json(&lpzero(&score_args(
            &d,
            &["--shard", &spec, "--out", path(f), "--json"],
        )))
    };
    shard(0, &s0);
    shard(1, &s1);
    let complete = std::fs::read_to_string(&s0).unwrap();
    let lines: Vec<&str> = complete.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two architectures: {complete}");
    // What a kill leaves: the header, one complete line, and half of the next one.
    let cut = format!(
        "{}\n{}\n{}",
        lines[0],
        lines[1],
        &lines[2][..lines[2].len() / 2]
    );
    std::fs::write(&s0, &cut).unwrap();
    let merged = dir.join("merged.csv");
    let m = [path(&s0), path(&s1), "--out", path(&merged)];
    let partial = lpzero(&["merge", m[0], m[1], m[2], m[3], "--json"]);
    assert_fails(
        &partial,
        &["1 of 4 architectures are missing", "re-run shard(s) 0/2"],
    );
    assert!(String::from_utf8_lossy(&partial.stderr).contains("incomplete line"));
    let summary: serde_json::Value = serde_json::from_slice(&partial.stdout).unwrap();
    assert_eq!(summary["complete"], false);
    assert_eq!(summary["missing"], serde_json::json!(["1"]));
    assert!(!merged.exists(), "an incomplete merge writes nothing");
    // The re-run skips the architecture already written and scores only the cut one.
    let r = shard(0, &s0);
    assert_eq!(
        (r["skipped"].as_u64(), r["scored"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(r["discarded_bytes"].as_u64().unwrap() > 0);
    let resumed = std::fs::read_to_string(&s0).unwrap();
    assert_eq!(resumed.lines().count(), 3);
    assert_eq!(resumed.lines().take(2).collect::<Vec<_>>(), lines[..2]);
    stdout_of(&lpzero(&["merge", m[0], m[1], m[2], m[3]]));
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&full).unwrap()
    );
    // A kill during the very first write leaves part of the header: the shard starts over.
    let s2 = dir.join("s2.jsonl");
    std::fs::write(&s2, &lines[0][..40]).unwrap();
    let r = shard(0, &s2);
    assert_eq!(
        (r["skipped"].as_u64(), r["scored"].as_u64()),
        (Some(0), Some(2))
    );
    let restarted = std::fs::read_to_string(&s2).unwrap();
    assert_eq!(restarted.lines().count(), 3);
    assert_eq!(restarted.lines().next(), Some(lines[0]));
    // A complete shard run again probes nothing.
    let r = shard(0, &s0);
    assert_eq!(
        (r["skipped"].as_u64(), r["scored"].as_u64()),
        (Some(2), Some(0))
    );
    // Other settings or another shard cannot append to the file.
    let other = lpzero(&score_args(
        &d,
        &["--shard", "0/2", "--out", path(&s0), "--seed", "1"],
    ));
    assert_fails(&other, &["another run", "probe.seed: was 0, now 1"]);
    let wrong = lpzero(&score_args(&d, &["--shard", "1/2", "--out", path(&s0)]));
    assert_fails(&wrong, &["written by shard 0/2", "this is shard 1/2"]);
    // A damaged complete line is an error, not silently dropped.
    std::fs::write(&s1, format!("{}\n{{\"id\": 3}}\n", lines[0])).unwrap();
    assert_fails(
        &lpzero(&score_args(&d, &["--shard", "1/2", "--out", path(&s1)])),
        &["s1.jsonl: line 2: not an architecture record"],
    );
}

#[test]
fn merge_reports_duplicates_and_refuses_conflicts_and_mixed_runs() {
    let (dir, d) = fixture("shard-dups");
    let a = dir.join("a.jsonl");
    let b = dir.join("b.jsonl");
    let args = |f: &Path, extra: &[&str]| {
        let mut v = vec![
            "score".to_string(),
            "--data-dir".into(),
            d.clone(),
            "--proxy".into(),
            "params".into(),
            "--shard".into(),
            "0/1".into(),
            "--out".into(),
            path(f).into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |f: &Path, extra: &[&str]| {
        let v = args(f, extra);
        lpzero(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    stdout_of(&run(&a, &[]));
    std::fs::copy(&a, &b).unwrap();
    let out = dir.join("m.csv");
    let dup = lpzero(&["merge", path(&a), path(&b), "--out", path(&out), "--json"]);
    let summary = json(&dup);
    assert_eq!(summary["duplicates"].as_array().unwrap().len(), 4);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("with the same values: kept once"));
    assert_fails(
        &lpzero(&["merge", path(&a), path(&a), "--out", path(&out)]),
        &["given twice"],
    );
    // The same architecture with another value: the files are not one run.
    let text = std::fs::read_to_string(&a).unwrap();
    let edited = text.replacen("\"params\":\"", "\"params\":\"1", 1);
    assert_ne!(edited, text);
    std::fs::write(&b, edited).unwrap();
    assert_fails(
        &lpzero(&["merge", path(&a), path(&b), "--out", path(&out)]),
        &["different values", "params"],
    );
    // Shards of different runs.
    std::fs::remove_file(&b).unwrap();
    stdout_of(&run(&b, &["--archs", "0..2"]));
    assert_fails(
        &lpzero(&["merge", path(&a), path(&b), "--out", path(&out)]),
        &["belong to different runs", "selection"],
    );
    // Not a shard file.
    std::fs::write(&b, "id,truth\n").unwrap();
    assert_fails(
        &lpzero(&["merge", path(&b), "--out", path(&out)]),
        &["line 1: not the header of an lpzero shard file"],
    );
}

#[test]
fn bad_shard_options_give_clear_errors() {
    let (dir, d) = fixture("shard-errors");
    let f = dir.join("s.jsonl");
    let base = ["score", "--data-dir", &d, "--proxy", "params"];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend(extra);
        lpzero(&v)
    };
    assert_fails(
        &with(&["--shard", "3/3", "--out", path(&f)]),
        &["--shard 3/3", "out of range", "0..=2", "numbered from 0"],
    );
    assert_fails(
        &with(&["--shard", "1", "--out", path(&f)]),
        &["expected I/N"],
    );
    assert_fails(
        &with(&["--shard", "x/2", "--out", path(&f)]),
        &["`x` is not the shard index I"],
    );
    assert_fails(
        &with(&["--shard", "0/0", "--out", path(&f)]),
        &["at least 1 shard"],
    );
    assert_fails(
        &with(&["--shard", "0/2"]),
        &["--shard 0/2 needs --out FILE"],
    );
    assert_fails(
        &with(&["--shard-count", "2"]),
        &["--shard-count goes with --shard auto"],
    );
    assert_fails(
        &with(&["--shard", "0/2", "--shard-count", "2", "--out", path(&f)]),
        &[
            "--shard 0/2 --shard-count 2",
            "a separate shard count goes with `auto` only",
        ],
    );
    assert_fails(
        &with(&["--shard", "0/2", "--out", path(&dir)]),
        &["is a folder", "a shard is written to a JSON Lines file"],
    );
    assert_fails(
        &lpzero_env(
            &[&base[..], &["--shard", "auto", "--out", path(&f)]].concat(),
            &[
                ("SLURM_ARRAY_TASK_ID", "5"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
        ),
        &["shard index 5 is out of range for 3"],
    );
    assert!(!f.exists(), "no file is written on a bad option");
    // An existing file that is not a shard file is never overwritten, even without a newline.
    std::fs::write(&f, "id,truth").unwrap();
    assert_fails(
        &with(&["--shard", "0/2", "--out", path(&f)]),
        &["is not an lpzero shard file"],
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "id,truth");
}

#[test]
fn sharded_baselines_merge_to_the_unsharded_files() {
    let (dir, d) = fixture("shard-baselines");
    let common = [
        "baselines",
        "--data-dir",
        &d,
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--skip",
        "synaptic_diversity,jacobian_score,w_pca",
        "--with",
        "lpzero_bert",
    ];
    let full = dir.join("full");
    stdout_of(&lpzero(
        &[&common[..], &["--out", path(&full), "--json"]].concat(),
    ));
    let files: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("b{i}.jsonl"))).collect();
    for (i, f) in files.iter().enumerate() {
        let spec = format!("{i}/2");
        stdout_of(&lpzero(
            &[&common[..], &["--shard", &spec, "--out", path(f)]].concat(),
        ));
    }
    let merged = dir.join("merged");
    let text = stdout_of(&lpzero(&[
        "merge",
        path(&files[0]),
        path(&files[1]),
        "--out",
        path(&merged),
    ]));
    assert!(text.contains("of `lpzero baselines`"), "{text}");
    for name in ["baselines.csv", "baselines.svg"] {
        assert_eq!(
            std::fs::read(full.join(name)).unwrap(),
            std::fs::read(merged.join(name)).unwrap(),
            "{name}"
        );
    }
    // The summaries agree on everything but the timing fields.
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("baselines.json")).unwrap()).unwrap()
    };
    let (a, b) = (read(&full), read(&merged));
    for key in ["bench", "truth", "n"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    let (pa, pb) = (
        a["proxies"].as_array().unwrap(),
        b["proxies"].as_array().unwrap(),
    );
    assert_eq!(pa.len(), pb.len());
    for (x, y) in pa.iter().zip(pb) {
        let mut x = x.clone();
        let mut y = y.clone();
        x["seconds"] = serde_json::Value::Null;
        y["seconds"] = serde_json::Value::Null;
        assert_eq!(x, y);
    }
    assert!(b["peak_rss_mib"].as_f64().unwrap() > 0.0);
    assert_eq!(b["threads"], 1);
}
