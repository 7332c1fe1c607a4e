//! Reliability of the `lpzero` binary under bad input and failing outputs, one test per class
//! of the bad-input and fault sweep: stdout errors, resume with other settings, edited
//! checkpoints, outputs that must not be lost, bounds on sizes, and short, whole messages.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A small, fast probe for the fixture benchmark.
const PROBE: [&str; 4] = ["--batch", "1", "--seq-len", "16"];

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
