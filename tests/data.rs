//! The shipped benchmarks: the copy built into lpzero equals the repository's `data/` folder,
//! the binary needs no data folder, and `--data-dir` / `$LPZERO_DATA` override the built-in
//! copy in that order.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use lpzero::bench::{flexibert, gpt2, source, Benchmark, DataSource, DATA_ENV};

/// The data files under `dir` (relative, `/`-separated), documentation left out, sorted.
fn files_under(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for item in std::fs::read_dir(dir).unwrap() {
        let item = item.unwrap();
        let name = item.file_name().into_string().unwrap();
        if name.starts_with('.') || name.ends_with(".md") {
            continue;
        }
        if item.path().is_dir() {
            files_under(&item.path(), &format!("{prefix}{name}/"), out);
        } else {
            out.push(format!("{prefix}{name}"));
        }
    }
}

#[test]
fn embedded_copy_equals_the_data_folder() {
    let dir = common::shipped_data();
    let mut on_disk = Vec::new();
    files_under(&dir, "", &mut on_disk);
    on_disk.sort();
    let embedded: Vec<&str> = source::embedded_files().collect();
    assert_eq!(embedded, on_disk);
    // FlexiBERT's benchmark and reference table, GPT-2's two summaries and 200 configs, the
    // real-text corpus.
    assert_eq!(embedded.len(), 2 + 2 + 200 + 1);
    for rel in &on_disk {
        let text = DataSource::Embedded.read(rel, "a shipped file").unwrap();
        assert!(
            text.as_bytes() == std::fs::read(dir.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
}

#[test]
fn embedded_and_folder_load_the_same_benchmarks() {
    for (kind, n) in [(flexibert::KIND, 500), (gpt2::KIND, 200)] {
        let embedded = Benchmark::load(kind, &DataSource::Embedded).unwrap();
        let folder = Benchmark::load(kind, &common::shipped_source()).unwrap();
        assert_eq!(embedded.len(), n);
        assert_eq!(embedded.entries, folder.entries, "{kind}");
        assert!(
            embedded.source.starts_with("<embedded>"),
            "{}",
            embedded.source.display()
        );
        assert!(folder.source.starts_with(common::shipped_data()));
    }
}

fn lpzero_in(dir: &Path, args: &[&str], data_env: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpzero"));
    cmd.args(args).current_dir(dir).env_remove(DATA_ENV);
    if let Some(d) = data_env {
        cmd.env(DATA_ENV, d);
    }
    cmd.output().unwrap()
}

fn empty_dir(name: &str) -> PathBuf {
    common::fresh_temp_dir("data", name)
}

/// From a directory with no data beside it and no `$LPZERO_DATA`, the built-in copy is used.
#[test]
fn binary_works_without_a_data_folder() {
    let cwd = empty_dir("no-data");
    let out = lpzero_in(
        &cwd,
        &[
            "score",
            "--bench",
            "flexibert",
            "--proxy",
            "params",
            "--archs",
            "0..20",
            "--json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout_of(&out)).unwrap();
    assert_eq!(v["n"], 20);
    assert!(v["spearman"].as_f64().unwrap().is_finite(), "{v}");

    let out = lpzero_in(
        &cwd,
        &[
            "params",
            "--bench",
            "flexibert",
            "--archs",
            "0",
            "--sizes",
            "faithful",
        ],
        None,
    );
    assert_eq!(common::stdout_of(&out), "id,total\n0,13330176\n");
    let out = lpzero_in(&cwd, &["params", "--bench", "gpt2", "--archs", "0"], None);
    let text = common::stdout_of(&out);
    assert_eq!(
        text.lines().nth(1).unwrap(),
        "config_0_j0,8505006,6631088,330240,1457316,1790372",
        "{text}"
    );
    assert!(std::fs::read_dir(&cwd).unwrap().next().is_none());
}

/// `$LPZERO_DATA` replaces the built-in copy, and `--data-dir` replaces both.
#[test]
fn data_dir_and_environment_override_in_order() {
    let cwd = empty_dir("override");
    let four = common::fixture_data_dir("env-four", &common::fixture_records());
    let two = common::fixture_data_dir("env-two", &common::fixture_records()[..2]);
    let ids = |out: std::process::Output| common::stdout_of(&out).lines().count() - 1;
    assert_eq!(ids(lpzero_in(&cwd, &["params"], None)), 500);
    assert_eq!(ids(lpzero_in(&cwd, &["params"], Some(&four))), 4);
    let two_arg = two.to_str().unwrap();
    assert_eq!(
        ids(lpzero_in(
            &cwd,
            &["params", "--data-dir", two_arg],
            Some(&four)
        )),
        2
    );

    // A folder that does not exist is an error naming where it was given.
    let out = lpzero_in(&cwd, &["params"], Some(Path::new("/nonexistent/lpzero")));
    common::assert_fails(&out, &["$LPZERO_DATA", "/nonexistent"]);
    let out = lpzero_in(&cwd, &["params", "--data-dir", "/nonexistent/x"], None);
    common::assert_fails(&out, &["--data-dir", "/nonexistent/x"]);
    // A data folder without the requested family names the missing file.
    let out = lpzero_in(&cwd, &["params", "--bench", "gpt2"], Some(&four));
    common::assert_fails(&out, &["gpt2_wt103/configs"]);
}

/// `baselines` finds the reference proxy table in the built-in copy: our parameter counts
/// agree with its parameter column exactly.
#[test]
fn baselines_read_the_embedded_reference_table() {
    let cwd = empty_dir("baselines");
    let out = lpzero_in(
        &cwd,
        &[
            "baselines",
            "--archs",
            "0..6",
            // The reference table was computed at the reference's sizes.
            "--sizes",
            "faithful",
            "--batch",
            "1",
            "--seq-len",
            "16",
            "--skip",
            "grasp,fisher,synflow,logsynflow,jacob_cov,jacob_cov_relu,eznas,w_pca,synaptic_diversity",
            "--out",
            "bl",
            "--json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout_of(&out)).unwrap();
    let params = v["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proxy"] == "params")
        .unwrap();
    assert_eq!(params["reference_column"], "Number of Parameters");
    assert_eq!(params["reference_spearman"].as_f64(), Some(1.0), "{params}");
}
