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
    let dir = std::env::temp_dir().join(format!("lpzero-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn stdout_errors_are_one_line_and_a_closed_pipe_is_quiet() {
    let dir = common::fixture_data_dir("stdout", &common::fixture_records());
    let d = s(&dir);
    let probed = |args: &[&'static str]| -> Vec<String> {
        let mut v = vec![args[0].to_string(), "--data-dir".into(), d.to_string()];
        v.extend(args[1..].iter().chain(&PROBE).map(|a| a.to_string()));
        v
    };
    let commands: Vec<Vec<String>> = vec![
        vec!["params".into(), "--data-dir".into(), d.into()],
        probed(&["score", "--proxy", "params", "--json"]),
        probed(&["score", "--proxy", "params"]),
        probed(&["bench", "--archs", "0", "--json"]),
        probed(&[
            "search",
            "--fitness-archs",
            "0..4",
            "--heldout",
            "off",
            "--population",
            "4",
            "--iterations",
            "2",
            "--json",
        ]),
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

/// Arguments of a small search on the fixture writing to `run`.
fn search_args<'a>(d: &'a str, run: &'a str, iterations: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..4",
        "--heldout",
        "off",
        "--population",
        "4",
        "--checkpoint-every",
        "3",
        "--iterations",
        iterations,
    ];
    args.extend(PROBE);
    args.extend(["--out", run]);
    args
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
    let out = lpzero(&search_args(d, s(&run), "3"));
    fails_with(&out, &["not empty", "notes.txt", "--overwrite", "--resume"]);
    let mut args = search_args(d, s(&run), "3");
    args.push("--overwrite");
    succeeds(&lpzero(&args));
    assert_eq!(
        std::fs::read_to_string(run.join("notes.txt")).unwrap(),
        "mine"
    );
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    let out = lpzero(&search_args(d, s(&run), "3"));
    fails_with(&out, &["not empty", "checkpoint.json"]);
    assert_eq!(
        std::fs::read_to_string(run.join("summary.json")).unwrap(),
        summary
    );
    let _ = std::fs::remove_dir_all(&work);
}
