//! Reliability of the `lpzero` binary under bad input and failing outputs, one test per class
//! of the bad-input and fault sweep: stdout errors, resume with other settings, edited
//! checkpoints, outputs that must not be lost, bounds on sizes, and short, whole messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A small, fast probe for the fixture benchmark.
const PROBE: [&str; 4] = ["--batch", "1", "--seq-len", "16"];

fn lpzero(args: &[&str]) -> Output {
    lpzero_env(args, &[])
}

fn lpzero_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpzero"));
    cmd.args(args).env_remove("LPZERO_PROBE_MEMORY_GB");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Asserts that the run failed with status 1 and that stderr holds every one of `needles`;
/// returns stderr.
fn fails_with(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "status {:?}: {err}", out.status);
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in stderr: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn succeeds(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh, empty temporary folder.
fn temp(name: &str) -> PathBuf {
    common::fresh_temp_dir("rel", name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Arguments of a small search on the fixture, without the held-out phase; with `out`, it
/// checkpoints every 3 iterations into that run folder.
fn search_args<'a>(d: &'a str, iterations: &'a str, out: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec!["search", "--data-dir", d, "--fitness-archs", "0..4"];
    args.extend(["--heldout", "off", "--population", "4"]);
    args.extend(["--iterations", iterations]);
    args.extend(PROBE);
    if let Some(run) = out {
        args.extend(["--checkpoint-every", "3", "--out", run]);
    }
    args
}

#[test]
fn stdout_errors_are_one_line_and_a_closed_pipe_is_quiet() {
    let dir = common::fixture_data_dir("stdout", &common::fixture_records());
    let d = s(&dir);
    let probed = |args: &[&'static str]| -> Vec<&str> {
        let mut v = vec![args[0], "--data-dir", d];
        v.extend(&args[1..]);
        v.extend(PROBE);
        v
    };
    let mut search = search_args(d, "2", None);
    search.push("--json");
    let commands = [
        vec!["params", "--data-dir", d],
        probed(&["score", "--proxy", "params", "--json"]),
        probed(&["score", "--proxy", "params"]),
        probed(&["bench", "--archs", "0", "--json"]),
        search,
    ];
    for args in &commands {
        // The reader goes away before anything is written: a quiet stop with status 0.
        let mut child = Command::new(env!("CARGO_BIN_EXE_lpzero"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
        // A full device behind stdout: one error line, status 1.
        if Path::new("/dev/full").exists() {
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_lpzero"))
                .args(args)
                .stdout(full)
                .output()
                .unwrap();
            let err = fails_with(&out, &["error: cannot write to stdout: "]);
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
    }
}

#[test]
fn resume_refuses_other_probe_settings_and_edited_checkpoints() {
    let dir = common::fixture_data_dir("resume", &common::fixture_records());
    let d = s(&dir);
    let work = temp("resume");
    let corpus = work.join("corpus.txt");
    let ids: Vec<String> = (0..40).map(|i| (1000 + 7 * i).to_string()).collect();
    std::fs::write(&corpus, ids.join(" ")).unwrap();
    let run = work.join("run");
    let mut first = search_args(d, "6", Some(s(&run)));
    first.extend(["--corpus", s(&corpus)]);
    succeeds(&lpzero(&first));

    // Continue to 9 iterations with the same settings except one.
    let resume = |change: &[&str]| {
        let mut args = search_args(d, "9", Some(s(&run)));
        args.extend(["--resume", s(&run)]);
        let replaced: Vec<&str> = change.iter().step_by(2).copied().collect();
        let mut kept = Vec::new();
        let mut i = 0;
        while i < args.len() {
            if replaced.contains(&args[i]) {
                i += 2;
            } else {
                kept.push(args[i]);
                i += 1;
            }
        }
        kept.extend(change);
        if !replaced.contains(&"--corpus") {
            kept.extend(["--corpus", s(&corpus)]);
        }
        // A tiny memory limit: had the run started probing before checking the checkpoint, it
        // would fail on that instead.
        lpzero_env(&kept, &[("LPZERO_PROBE_MEMORY_GB", "0.000001")])
    };
    for (change, name) in [
        (
            vec!["--seq-len", "32"],
            "seq_len: 16 in the checkpoint, 32 now",
        ),
        (vec!["--batch", "2"], "batch: 1 in the checkpoint, 2 now"),
        (vec!["--grad-signal", "faithful"], "grad_signal"),
        (
            vec!["--dropout", "on"],
            "dropout: false in the checkpoint, true now",
        ),
        (vec!["--sizes", "faithful"], "sizes"),
        (vec!["--seed", "3"], "seed"),
    ] {
        fails_with(&resume(&change), &["cannot resume", name]);
    }
    // The corpus is compared by its content.
    let copy = work.join("copy.txt");
    std::fs::write(&copy, ids[1..].join(" ") + " 1000").unwrap();
    fails_with(
        &resume(&["--corpus", s(&copy)]),
        &["cannot resume", "corpus"],
    );
    fails_with(
        &resume(&["--corpus", "/nonexistent/corpus.txt"]),
        &["cannot read"],
    );

    // An edited checkpoint is refused.
    // The default search runs 3 restarts, each with its checkpoint in `restart_<r>/`.
    let ck = run.join("restart_0").join("checkpoint.json");
    let text = std::fs::read_to_string(&ck).unwrap();
    std::fs::write(&ck, text.replace("\"iteration\": 6", "\"iteration\": 9999")).unwrap();
    fails_with(
        &resume(&[]),
        &["checkpoint.json", "checksum does not match"],
    );
    std::fs::write(&ck, &text).unwrap();

    // The same settings continue the run, with the corpus at another path (same content).
    std::fs::copy(&corpus, &copy).unwrap();
    let mut args = search_args(d, "9", Some(s(&run)));
    args.extend(["--resume", s(&run), "--corpus", s(&copy)]);
    succeeds(&lpzero(&args));
    for r in 0..3 {
        let log = run.join(format!("restart_{r}")).join("log.jsonl");
        let log = std::fs::read_to_string(log).unwrap();
        assert_eq!(log.lines().count(), 9, "restart {r}");
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn outputs_are_written_whole_or_refused() {
    let dir = common::fixture_data_dir("outputs", &common::fixture_records());
    let d = s(&dir);
    let work = temp("outputs");
    let score = |out: &str| {
        let mut args = vec!["score", "--data-dir", d, "--proxy", "params", "--out", out];
        args.extend(PROBE);
        lpzero(&args)
    };
    // A folder that cannot be made (a file is in the way).
    let blocker = work.join("file");
    std::fs::write(&blocker, "keep").unwrap();
    let below = blocker.join("scores.csv");
    fails_with(&score(s(&below)), &[s(&blocker), "cannot create folder"]);
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "keep");
    // A full device: the write error is reported, not an empty success.
    if Path::new("/dev/full").exists() {
        fails_with(
            &score("/dev/full"),
            &["/dev/full: cannot write", "No space left"],
        );
    }
    // A good write leaves exactly the file, no temporary.
    let csv = work.join("scores.csv");
    succeeds(&score(s(&csv)));
    assert!(std::fs::read_to_string(&csv)
        .unwrap()
        .starts_with("id,truth,params\n"));
    let names: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Baselines into a path below a file.
    let mut args = vec![
        "baselines",
        "--data-dir",
        d,
        "--out",
        s(&below),
        "--archs",
        "0..2",
    ];
    args.extend(PROBE);
    let out = lpzero(&args);
    fails_with(&out, &[s(&blocker)]);

    // A run folder is never reused by accident.
    let run = work.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    let out = lpzero(&search_args(d, "3", Some(s(&run))));
    fails_with(&out, &["not empty", "notes.txt", "--overwrite", "--resume"]);
    let mut args = search_args(d, "3", Some(s(&run)));
    args.push("--overwrite");
    succeeds(&lpzero(&args));
    assert_eq!(
        std::fs::read_to_string(run.join("notes.txt")).unwrap(),
        "mine"
    );
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    let out = lpzero(&search_args(d, "3", Some(s(&run))));
    fails_with(&out, &["not empty", "curve.svg"]);
    assert_eq!(
        std::fs::read_to_string(run.join("summary.json")).unwrap(),
        summary
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// A one-record FlexiBERT benchmark whose first layer has `field` set to `value`.
fn flexibert_with(name: &str, field: &str, value: serde_json::Value) -> PathBuf {
    let mut records = common::fixture_records();
    if field == "hidden_size" {
        records[0]["hparams"]["model_hparam_overrides"]["hidden_size"] = value;
    } else {
        records[0]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"][0][field] =
            value;
    }
    common::fixture_data_dir(name, &records)
}

/// A one-config GPT-2 benchmark: a small valid config with `key` set to `value`.
fn gpt2_with(name: &str, key: &str, value: &str) -> PathBuf {
    let mut config: Vec<String> = [
        "adaptive: true",
        "cutoffs: [19997, 39997, 199997, 50264]",
        "d_embed: 64",
        "d_inner: [128, 96]",
        "d_model: 32",
        "div_val: 2",
        "dropatt: 0.0",
        "dropout: 0.1",
        "n_head: [2, 4]",
        "n_layer: 2",
        "n_token: 50264",
        "proj_init_std: 0.01",
        "tgt_len: 192",
        "tie_projs: [false, true, true, true]",
        "tie_weight: true",
        "weight_init_std: 0.02",
    ]
    .iter()
    .map(|l| l.to_string())
    .collect();
    for line in config.iter_mut() {
        if line.starts_with(&format!("{key}:")) {
            *line = format!("{key}: {value}");
        }
    }
    let data = temp(name);
    let root = data.join("gpt2_wt103");
    std::fs::create_dir_all(root.join("configs")).unwrap();
    std::fs::write(root.join("configs/config_0_j0.yaml"), config.join("\n")).unwrap();
    std::fs::write(
        root.join("ppl_summary.yaml"),
        "config_0_j0:\n  valid_ppl: 30.0\n",
    )
    .unwrap();
    std::fs::write(
        root.join("params_summary.yaml"),
        "config_0_j0:\n  AdaEmb: 1.0\n  Attn: 1.0\n  FFN: 1.0\n  nonembedding: 1.0\n  total: 1.0\n",
    )
    .unwrap();
    data
}

#[test]
fn sizes_are_bounded_with_clear_messages() {
    let layer = "encoder_layers[0]";
    for (field, value, needle) in [
        (
            "hidden_size",
            serde_json::json!(1_000_000_000u64),
            "hidden_size",
        ),
        (
            "feed_forward_dimension",
            serde_json::json!(1_000_000_000_000u64),
            "feed_forward_dimension",
        ),
        (
            "num_feed_forward",
            serde_json::json!(1_000_000),
            "num_feed_forward",
        ),
    ] {
        let dir = flexibert_with(field, field, value);
        let out = lpzero(&["params", "--data-dir", s(&dir)]);
        let err = fails_with(&out, &["record id 0", needle, "expected at most"]);
        assert!(field == "hidden_size" || err.contains(layer), "{err}");
    }
    for (key, value) in [
        ("n_token", "1000000000000"),
        ("d_model", "1000000000"),
        ("n_layer", "100000"),
    ] {
        let dir = gpt2_with(key, key, value);
        let out = lpzero(&["params", "--bench", "gpt2", "--data-dir", s(&dir)]);
        let err = fails_with(
            &out,
            &["config_0_j0.yaml", &format!("`{key}`"), "expected at most"],
        );
        assert!(!err.contains("cutoffs"), "{err}");
    }
    let ok = gpt2_with("gpt2-ok", "n_token", "50264");
    succeeds(&lpzero(&[
        "params",
        "--bench",
        "gpt2",
        "--data-dir",
        s(&ok),
    ]));

    // Legal sizes that cannot fit this machine are refused before anything is built.
    let mut records = common::fixture_records();
    let overrides = &mut records[0]["hparams"]["model_hparam_overrides"];
    overrides["hidden_size"] = serde_json::json!(16384);
    for l in overrides["nas_config"]["encoder_layers"]
        .as_array_mut()
        .unwrap()
    {
        l["feed_forward_dimension"] = serde_json::json!(65536);
        l["num_feed_forward"] = serde_json::json!(64);
    }
    let dir = common::fixture_data_dir("huge", &records);
    let d = s(&dir);
    let args = [
        "params",
        "--data-dir",
        d,
        "--sizes",
        "intended",
        "--archs",
        "0",
    ];
    fails_with(
        &lpzero(&args),
        &["architecture 0 needs about", "TB", "for its parameters"],
    );
    let out = lpzero(&[
        "score",
        "--data-dir",
        d,
        "--proxy",
        "snip",
        "--sizes",
        "intended",
    ]);
    fails_with(
        &out,
        &["architecture 0 needs about", "lower the batch rows"],
    );
    // The fixture's real sizes fit, except under a tiny limit, which the message names.
    let mut args = vec!["score", "--data-dir", d, "--proxy", "snip", "--archs", "1"];
    args.extend(PROBE);
    let tiny = [("LPZERO_PROBE_MEMORY_GB", "0.001")];
    fails_with(
        &lpzero_env(&args, &tiny),
        &["1.00 MB (set by LPZERO_PROBE_MEMORY_GB)"],
    );
    let zero = [("LPZERO_PROBE_MEMORY_GB", "0")];
    fails_with(
        &lpzero_env(&args, &zero),
        &["LPZERO_PROBE_MEMORY_GB=0", "positive number"],
    );

    // Option bounds say the allowed range.
    for (flag, value, needle) in [
        ("--batch", "100000", "batch must be within 1..=65536"),
        ("--threads", "100000", "--threads 100000: expected 1..=1024"),
    ] {
        let out = lpzero(&["score", "--data-dir", d, "--proxy", "params", flag, value]);
        fails_with(&out, &[needle]);
    }
    for (flag, value, needle) in [
        (
            "--population",
            "100000000",
            "population must be within 2..=100000",
        ),
        (
            "--iterations",
            "100000000",
            "iterations must be at most 10000000",
        ),
        ("--n-unary", "1000", "n_unary must be within 0..=16"),
        ("--restarts", "0", "restarts must be within 1..=1000"),
        ("--restarts", "5000", "restarts must be within 1..=1000"),
    ] {
        let out = lpzero(&[
            "search",
            "--data-dir",
            d,
            "--fitness-archs",
            "0..4",
            flag,
            value,
        ]);
        fails_with(&out, &[needle]);
    }
}

#[test]
fn bad_input_messages_are_short_and_whole() {
    let dir = common::fixture_data_dir("messages", &common::fixture_records());
    let d = s(&dir);
    let score = |proxy: &str, archs: &str| {
        lpzero(&["score", "--data-dir", d, "--proxy", proxy, "--archs", archs])
    };
    // A huge input is echoed in part, with its length.
    let long = format!("add({}, act)", "x".repeat(100_000));
    let err = fails_with(&score(&long, "0"), &["characters in all", "unknown name"]);
    assert!(err.len() < 2_000, "{} bytes of message", err.len());
    let long_name = "y".repeat(100_000);
    let err = fails_with(&score(&long_name, "0"), &["characters in all"]);
    assert!(err.len() < 2_000, "{} bytes of message", err.len());
    // A non-ASCII name is named whole.
    fails_with(
        &score("add(mean(héad), mean(act))", "0"),
        &["unknown name `héad`"],
    );
    fails_with(&score("héad", "0"), &["unknown proxy `héad`"]);
    // Empty proxies are errors, not empty tables.
    fails_with(&score("", "0"), &["--proxy", "no proxy given"]);
    fails_with(&score("params,,snip", "0"), &["item 2", "is empty"]);
    fails_with(&score("mean(head);", "0"), &["item 2", "is empty"]);
    // Huge indices do not wrap around.
    let err = fails_with(&score("params", "18446744073709551615"), &["too large"]);
    assert!(!err.contains("is empty"), "{err}");
    fails_with(&score("params", "0..=18446744073709551615"), &["too large"]);
}
