//! `lpzero export`: golden files for Python and LaTeX, the command line, and a check that the
//! exported PyTorch function reproduces lpzero's value on a saved probe (when `python3` can
//! import torch; otherwise the check says that it was skipped).

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use lpzero::array::Array;
use lpzero::bench::{flexibert, Benchmark, DataSource};
use lpzero::export::{self, inputs, Target};
use lpzero::models::Family;
use lpzero::probe::ProbeOptions;
use lpzero::proxy::eval::{eval, InputSource, Inputs};
use lpzero::proxy::expr::{Expr, Input};
use lpzero::proxy::ops::{BinaryOp, UnaryOp};
use lpzero::rng::Rng;

use common::{assert_fails, lpzero, stdout_of};

/// The golden cases (`tests/golden/NAME.py`, `NAME.tex`); together they use every operation.
const GOLDEN: &[(&str, &str)] = &[
    ("lpzero_bert", "lpzero_bert"),
    ("lpzero_gpt2", "lpzero_gpt2"),
    (
        "total_matmul",
        "sub(total(mul(log(act), abslog(act))), add(mean(disconnect(grad)), \
         matmul(normalize(weight), relu(grad))))",
    ),
    (
        "elementwise",
        "add(sigmoid(min_max(softmax)), invert(exp(std(no_op(sqrt(abs(act)))))))",
    ),
    (
        "extensive",
        "mul(normalized_sum(head), add(sum(grad), size(weight)))",
    ),
];

fn golden_path(name: &str, ext: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.{ext}"))
}

const TARGETS: [(Target, &str); 2] = [(Target::Python, "py"), (Target::Latex, "tex")];

#[test]
fn exports_match_the_golden_files() {
    // LPZERO_BLESS=1 rewrites the golden files (review the diff before committing it).
    let bless = std::env::var_os("LPZERO_BLESS").is_some();
    for (name, text) in GOLDEN {
        let expr = export::resolve(text).unwrap();
        for (target, ext) in TARGETS {
            let got = export::export(&expr, target).unwrap();
            let path = golden_path(name, ext);
            if bless {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (LPZERO_BLESS=1 writes it)", path.display()));
            assert_eq!(
                got,
                want,
                "{} differs from the export (LPZERO_BLESS=1 rewrites it)",
                path.display()
            );
        }
    }
}

#[test]
fn golden_cases_use_every_operation() {
    fn walk(e: &Expr, unary: &mut BTreeSet<UnaryOp>, binary: &mut BTreeSet<BinaryOp>) {
        match e {
            Expr::Input(_) => {}
            Expr::Unary(op, x) => {
                unary.insert(*op);
                walk(x, unary, binary);
            }
            Expr::Binary(op, a, b) => {
                binary.insert(*op);
                walk(a, unary, binary);
                walk(b, unary, binary);
            }
        }
    }
    let (mut unary, mut binary) = (BTreeSet::new(), BTreeSet::new());
    for (_, text) in GOLDEN {
        walk(&export::resolve(text).unwrap(), &mut unary, &mut binary);
    }
    for op in UnaryOp::ALL {
        assert!(unary.contains(&op), "no golden case uses `{op}`");
    }
    for op in BinaryOp::ALL {
        assert!(binary.contains(&op), "no golden case uses `{op}`");
    }
}

#[test]
fn latex_groups_are_balanced() {
    for (name, _) in GOLDEN {
        let text = std::fs::read_to_string(golden_path(name, "tex")).unwrap();
        let formula = text.lines().last().unwrap();
        let mut depth = 0i64;
        for c in formula.chars() {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            assert!(depth >= 0, "{name}: `}}` before its `{{`");
        }
        assert_eq!(depth, 0, "{name}: unbalanced braces");
        assert_eq!(
            formula.matches("\\left").count(),
            formula.matches("\\right").count(),
            "{name}: unbalanced \\left and \\right"
        );
    }
}

#[test]
fn export_command_prints_writes_and_refuses_what_cannot_be_exported() {
    for (target, ext) in [("python", "py"), ("latex", "tex")] {
        let want = std::fs::read_to_string(golden_path("lpzero_bert", ext)).unwrap();
        let got = stdout_of(&lpzero(&["export", "lpzero_bert", "--to", target]));
        assert_eq!(got, want);
        let file = std::env::temp_dir().join(format!(
            "lpzero-export-{}-{target}.{ext}",
            std::process::id()
        ));
        stdout_of(&lpzero(&[
            "export",
            GOLDEN[2].1,
            "--to",
            target,
            "--out",
            file.to_str().unwrap(),
        ]));
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            written,
            std::fs::read_to_string(golden_path(GOLDEN[2].0, ext)).unwrap()
        );
        let _ = std::fs::remove_file(&file);
    }
    assert_fails(
        &lpzero(&["export", "snip", "--to", "python"]),
        &["`snip` is a built-in proxy", "lpzero_bert"],
    );
    assert_fails(
        &lpzero(&["export", "mean(disconnect(act))", "--to", "latex"]),
        &["has no value", "disconnect", "nothing to export"],
    );
    assert_fails(
        &lpzero(&["export", "add(mean(act)", "--to", "latex"]),
        &["EXPR", "parse error"],
    );
    assert_fails(&lpzero(&["export", "mean(act)"]), &["--to"]);
    assert_fails(
        &lpzero(&["export", "mean(act)", "--to", "r"]),
        &["python", "latex"],
    );
}

// ---------------------------------------------------------------------------------------------
// The Python cross-check
// ---------------------------------------------------------------------------------------------

/// More expressions checked on the real probe (besides the golden cases).
const PROBE_EXTRA: &[&str] = &[
    "lpzero_csv_bert",
    "total(frobenius_norm(grad))",
    "mean(abs(normalize(act)))",
    "mean(softmax(weight))",
    "add(mean(logsoftmax(act)), std(head))",
    "sub(sqrt(l1_norm(grad)), min_max(sum(weight)))",
    "matmul(weight, relu(grad))",
    "mul(exp(neg(abs(head))), sigmoid(head))",
    "total(mul(invert(size(act)), log(pow2(act))))",
    "add(abslog(softmax), normalized_sum(exp(neg(relu(act)))))",
];

/// Expressions checked on lists that pair items of many shapes (matrix products, one-element
/// broadcasting, surplus items, a shape mismatch, an empty list).
const PAIRING: &[&str] = &[
    "matmul(act, head)",
    "add(act, mean(head))",
    "sub(mean(act), head)",
    "mul(total(act), head)",
    "matmul(sum(act), sum(head))",
    "add(mean(act), act)",
    "add(act, head)",
    "mean(grad)",
    "add(mean(disconnect(grad)), sum(act))",
    "matmul(normalize(act), softmax(head))",
];

/// One-item inputs with edge values, each checked with every unary op.
fn edge_arrays() -> Vec<Array> {
    let arr = |shape: &[usize], data: &[f32]| Array::new(shape.to_vec(), data.to_vec()).unwrap();
    vec![
        arr(&[4], &[1.0, -2.0, 0.0, 3.5]),
        arr(&[3], &[0.0, 0.0, 0.0]),
        arr(&[2], &[1e30, -1e30]),
        arr(&[3], &[1.0, f32::NAN, 2.0]),
        Array::scalar(-3.0),
        arr(&[2, 3], &[1.0, 2.0, 3.0, -4.0, 5.0, -6.0]),
        arr(&[2, 2], &[f32::NEG_INFINITY, 1.0, f32::INFINITY, 2.0]),
        arr(&[1], &[7.0]),
        arr(&[2, 0], &[]),
        arr(&[3, 2], &[1e-10, -1e-10, 1e-3, 80.0, -90.0, 0.25]),
    ]
}

/// The interpreter to use (`LPZERO_PYTHON`, default `python3`) when it can import torch, else
/// why not.
fn python_with_torch() -> Result<String, String> {
    let python = std::env::var("LPZERO_PYTHON").unwrap_or_else(|_| "python3".to_string());
    match Command::new(&python).args(["-c", "import torch"]).output() {
        Ok(out) if out.status.success() => Ok(python),
        Ok(out) => Err(format!(
            "`{python} -c 'import torch'` failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(format!("cannot run `{python}`: {e}")),
    }
}

/// A line on the test process's real stderr (not captured by the test harness), so that a
/// skipped check is visible in every run.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// True when lpzero's and the exported function's values agree: both NaN, the same infinity,
/// or within a relative 1e-5 (with an absolute floor of 1e-6 for values near 0).
fn agree(ours: f64, theirs: f64) -> bool {
    if ours.is_nan() || theirs.is_nan() {
        return ours.is_nan() && theirs.is_nan();
    }
    if ours.is_infinite() || theirs.is_infinite() {
        return ours == theirs;
    }
    (ours - theirs).abs() <= 1e-5 * ours.abs().max(theirs.abs()) + 1e-6
}

#[test]
fn python_export_reproduces_lpzero_on_a_saved_probe() {
    let python = match python_with_torch() {
        Ok(p) => p,
        Err(why) => {
            assert!(
                std::env::var_os("LPZERO_REQUIRE_TORCH").is_none(),
                "LPZERO_REQUIRE_TORCH is set, but torch is not importable: {why}"
            );
            say(&format!(
                "skipped: torch not importable ({why}); the exported Python functions were NOT \
                 checked against lpzero. Set LPZERO_PYTHON to an interpreter with torch to run \
                 the check (LPZERO_REQUIRE_TORCH=1 makes its absence a failure)."
            ));
            return;
        }
    };
    let dir = common::fixture_data_dir("export", &common::fixture_records());
    let scratch = dir.join("export-check");
    std::fs::create_dir_all(&scratch).unwrap();
    // Each case: an inputs file, an expression, lpzero's value on those inputs.
    let mut cases: Vec<(PathBuf, String, f64)> = Vec::new();
    let mut add = |file: &Path, expr: &str, source: &dyn InputSource| {
        let e = export::resolve(expr).unwrap();
        cases.push((
            file.to_path_buf(),
            e.to_string(),
            eval(&e, source).unwrap_or(f64::NAN),
        ));
    };

    // 1. A real probe: FlexiBERT fixture architecture 3, batch 1 × 16 tokens, saved to a file
    //    and read back (lpzero's values are computed on what was read, which is what Python
    //    reads).
    let bench = Benchmark::load(flexibert::KIND, &DataSource::Dir(dir.clone())).unwrap();
    let opts = ProbeOptions {
        batch: 1,
        seq_len: 16,
        ..lpzero::models::flexibert::FAMILY.probe_options()
    };
    let probe = lpzero::models::probe_map(&bench, &[3], &opts, 1, |_, p| Ok(p), || {})
        .unwrap()
        .remove(0);
    let probe_file = scratch.join("probe.bin");
    inputs::write(&probe_file, &probe).unwrap();
    let saved = inputs::read(&probe_file).unwrap();
    for input in Input::ALL {
        assert!(
            !saved[&input].is_empty(),
            "the probe's `{input}` list is empty"
        );
    }
    for expr in GOLDEN
        .iter()
        .map(|(_, e)| *e)
        .chain(PROBE_EXTRA.iter().copied())
    {
        let e = export::resolve(expr).unwrap();
        assert_eq!(
            eval(&e, &saved).map(f64::to_bits),
            eval(&e, &probe).map(f64::to_bits),
            "the saved probe gives another value for {expr}"
        );
        add(&probe_file, expr, &saved);
    }

    // 2. Lists whose items pair in every way the binary ops allow (and some they do not).
    let mut rng = Rng::new(5);
    let mut random = |shape: &[usize]| {
        let n = shape.iter().product();
        Array::new(shape.to_vec(), rng.normal_vec(n, 1.5)).unwrap()
    };
    let act = vec![
        random(&[2, 3]),
        random(&[3, 2]),
        random(&[]),
        random(&[1, 1]),
    ];
    let head = vec![
        random(&[3, 2]),
        random(&[2, 4]),
        random(&[2, 2]),
        random(&[5]),
        random(&[4]),
    ];
    let pairing = Inputs {
        act: &act,
        head: &head,
        ..Default::default()
    };
    let pairing_file = scratch.join("pairing.bin");
    inputs::write(&pairing_file, &pairing).unwrap();
    let pairing = inputs::read(&pairing_file).unwrap();
    for expr in PAIRING {
        add(&pairing_file, expr, &pairing);
    }

    // 3. Edge values, one item at a time, through every unary op.
    for (k, a) in edge_arrays().into_iter().enumerate() {
        let list = [a];
        let file = scratch.join(format!("edge{k}.bin"));
        let source = Inputs {
            act: &list,
            ..Default::default()
        };
        inputs::write(&file, &source).unwrap();
        let saved = inputs::read(&file).unwrap();
        for op in UnaryOp::ALL.iter().filter(|&&o| o != UnaryOp::Disconnect) {
            add(&file, &format!("{op}(act)"), &saved);
        }
    }

    // Export every distinct expression once, and run them all in one Python process.
    let mut modules: Vec<String> = cases.iter().map(|(_, e, _)| e.clone()).collect();
    modules.sort();
    modules.dedup();
    let module_path = |expr: &str| {
        let k = modules.binary_search_by(|m| m.as_str().cmp(expr)).unwrap();
        scratch.join(format!("proxy_{k}.py"))
    };
    for expr in &modules {
        let e = Expr::parse(expr).unwrap();
        std::fs::write(
            module_path(expr),
            export::export(&e, Target::Python).unwrap(),
        )
        .unwrap();
    }
    let pairs: Vec<[String; 2]> = cases
        .iter()
        .map(|(file, expr, _)| {
            [
                file.to_str().unwrap().to_string(),
                module_path(expr).to_str().unwrap().to_string(),
            ]
        })
        .collect();
    let pairs_file = scratch.join("pairs.json");
    std::fs::write(&pairs_file, serde_json::to_string(&pairs).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_export.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&pairs_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{python} {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<f64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(values.len(), cases.len());
    let mut worst: f64 = 0.0;
    let mut finite = 0;
    let mut failures = Vec::new();
    for ((file, expr, ours), &theirs) in cases.iter().zip(&values) {
        if ours.is_finite() && theirs.is_finite() {
            finite += 1;
            let scale = ours.abs().max(theirs.abs());
            if scale > 0.0 {
                worst = worst.max((ours - theirs).abs() / scale);
            }
        }
        if !agree(*ours, theirs) {
            let name = file.file_name().unwrap().to_string_lossy();
            failures.push(format!(
                "{expr} on {name}: lpzero {ours:e}, python {theirs:e}"
            ));
        }
    }
    say(&format!(
        "python export check ({python}): {} values compared, {finite} finite on both sides, \
         max relative error {worst:.3e}",
        cases.len()
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The check must have compared real numbers, not only NaN: every value on the real probe
    // is finite, and most of the others.
    for (file, expr, ours) in &cases {
        assert!(
            *file != probe_file || ours.is_finite(),
            "{expr} is not finite on the probe: {ours}"
        );
    }
    assert!(
        finite * 2 > cases.len(),
        "only {finite} of {} values finite",
        cases.len()
    );
}
