//! Shared fixtures for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// One FlexiBERT record as benchmark JSON, with the given layers (`(type, param, heads, n)`).
pub fn record_json(
    id: usize,
    glue: f64,
    layers: &[(&str, serde_json::Value, usize, usize)],
) -> serde_json::Value {
    let layers: Vec<_> = layers
        .iter()
        .map(|(t, p, h, n)| {
            serde_json::json!({
                "operation_type": t, "operation_parameter": p, "num_operation_heads": h,
                "feed_forward_dimension": 1024, "num_feed_forward": n
            })
        })
        .collect();
    serde_json::json!({
        "id": id, "is_running": false, "completed": true, "time_to_train": 1.0,
        "scores": {"cola": 1.0, "glue": glue},
        "hparams": {"use_tpu": true, "model_hparam_overrides": {
            "hidden_size": 128, "nas_config": {"encoder_layers": layers}}}
    })
}

/// Records 0, 1 and 35 of the real benchmark (architectures only; spec §1.10 worked
/// examples with parameter counts 13 330 176, 11 106 199 and 9 557 650) plus a small
/// two-layer record, with made-up GLUE scores.
pub fn fixture_records() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        record_json(
            0,
            74.7,
            &[
                ("SA", json!("WMA"), 4, 3),
                ("LT", json!("DCT"), 2, 3),
                ("SA", json!("SDP"), 4, 3),
                ("SA", json!("SDP"), 4, 1),
            ],
        ),
        record_json(
            1,
            73.4,
            &[
                ("LT", json!("DFT"), 4, 3),
                ("SA", json!("SDP"), 2, 1),
                ("DSC", json!(9), 4, 3),
                ("DSC", json!(5), 2, 1),
            ],
        ),
        record_json(
            2,
            60.0,
            &[("LT", json!("DFT"), 2, 3), ("DSC", json!(9), 4, 3)],
        ),
        record_json(
            3,
            65.0,
            &[("SA", json!("SDP"), 2, 1), ("LT", json!("DCT"), 4, 1)],
        ),
    ]
}

/// A path `name` inside this test process's temporary folder `lpzero-{group}-{pid}`, with
/// whatever an earlier process of the same id left there removed (process ids are reused, and
/// a test killed midway leaves its files behind).
pub fn fresh_temp_path(group: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lpzero-{group}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if path.is_dir() {
        std::fs::remove_dir_all(&path).unwrap();
    } else if path.exists() {
        std::fs::remove_file(&path).unwrap();
    }
    path
}

/// A new, empty folder `name` inside this test process's temporary folder (see
/// [`fresh_temp_path`]).
pub fn fresh_temp_dir(group: &str, name: &str) -> PathBuf {
    let dir = fresh_temp_path(group, name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a data directory holding `records` as the FlexiBERT benchmark; returns its path.
pub fn fixture_data_dir(name: &str, records: &[serde_json::Value]) -> PathBuf {
    let dir = fresh_temp_path("test", name);
    std::fs::create_dir_all(dir.join("flexibert")).unwrap();
    std::fs::write(
        dir.join("flexibert/BERT_benchmark.json"),
        serde_json::to_string(records).unwrap(),
    )
    .unwrap();
    dir
}

/// The repository's `data/` folder (the shipped benchmarks). Panics when a file is missing:
/// tests that need the shipped data must fail, not pass vacuously.
pub fn shipped_data() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    for file in [
        "flexibert/BERT_benchmark.json",
        "flexibert/reference_proxy_scores.csv",
        "gpt2_wt103/ppl_summary.yaml",
        "gpt2_wt103/params_summary.yaml",
        "gpt2_wt103/configs/config_0_j0.yaml",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{}: missing from the repository (the shipped benchmarks)",
            dir.join(file).display()
        );
    }
    dir
}

/// The shipped benchmarks as a data source read from disk.
pub fn shipped_source() -> lpzero::bench::DataSource {
    lpzero::bench::DataSource::Dir(shipped_data())
}

/// Runs the `lpzero` binary with `args`.
pub fn lpzero(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lpzero"))
        .args(args)
        .output()
        .unwrap()
}

/// The stdout of a run that must succeed (panics with its stderr otherwise).
pub fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts that a run failed with a message on stderr mentioning each of `parts`.
pub fn assert_fails(out: &std::process::Output, parts: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail; stderr: {err}");
    for p in parts {
        assert!(err.contains(p), "stderr `{err}` should mention `{p}`");
    }
}
