//! End-to-end runs of the `lpzero` binary on a small fixture benchmark.

mod common;

use std::process::Command;

use common::lpzero;

#[test]
fn params_csv_and_json() {
    let dir = common::fixture_data_dir("params", &common::fixture_records());
    let d = dir.to_str().unwrap();
    let out = lpzero(&[
        "params",
        "--bench",
        "flexibert",
        "--data-dir",
        d,
        "--sizes",
        "faithful",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id,total");
    assert_eq!(lines[1], "0,13330176");
    assert_eq!(lines.len(), 5);
    let out = lpzero(&[
        "params",
        "--data-dir",
        d,
        "--sizes",
        "faithful",
        "--format",
        "json",
        "--archs",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([{"id": "1", "total": 11106199}]));
    // The default is the intended sizes (the fixture's records are H = 128).
    let default = common::stdout_of(&lpzero(&["params", "--data-dir", d]));
    let intended = common::stdout_of(&lpzero(&["params", "--data-dir", d, "--sizes", "intended"]));
    assert_eq!(default, intended);
    assert_ne!(default, text);
}

#[test]
fn score_json_is_one_object_and_deterministic() {
    let dir = common::fixture_data_dir("score", &common::fixture_records());
    let d = dir.to_str().unwrap();
    let csv = dir.join("scores.csv");
    let args = [
        "score",
        "--data-dir",
        d,
        "--proxy",
        "head_confidence",
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--json",
        "--out",
        csv.to_str().unwrap(),
    ];
    let out = lpzero(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim().lines().count(),
        1,
        "exactly one line on stdout: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in ["bench", "proxy", "n", "kendall", "spearman", "seconds"] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["n"], 4);
    assert_eq!(v["bench"], "flexibert");
    let first = std::fs::read_to_string(&csv).unwrap();
    assert!(first.starts_with("id,truth,head_confidence\n"), "{first}");
    assert_eq!(first.lines().count(), 5);
    // Same seed, same values; another seed, other values.
    assert!(lpzero(&args).status.success());
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), first);
    // The memory budget decides only which probes run at once: a budget smaller than any
    // probe (one at a time, the largest first) and none give the same values.
    for budget in ["0.000001", "none"] {
        let mut within = args.to_vec();
        within.extend(["--threads", "2", "--memory-budget", budget]);
        let out = lpzero(&within);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), first, "{budget}");
    }
    let mut bad = args.to_vec();
    bad.extend(["--memory-budget", "0"]);
    let out = lpzero(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--memory-budget") && err.contains("positive number of GB"),
        "{err}"
    );
    let mut other = args.to_vec();
    other.extend(["--seed", "1"]);
    assert!(lpzero(&other).status.success());
    assert_ne!(std::fs::read_to_string(&csv).unwrap(), first);
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = common::fixture_data_dir("errors", &common::fixture_records());
    let d = dir.to_str().unwrap();
    let out = lpzero(&["score", "--data-dir", d, "--proxy", "nonsense"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown proxy `nonsense`") && err.contains("head_confidence"),
        "{err}"
    );

    let out = lpzero(&[
        "score",
        "--data-dir",
        d,
        "--proxy",
        "add(mean(head)",
        "--archs",
        "0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("byte"), "{err}");

    let params_on = |archs: &str| {
        lpzero(&[
            "score",
            "--data-dir",
            d,
            "--proxy",
            "params",
            "--archs",
            archs,
        ])
    };
    let out = params_on("0..9");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("past the 4 architectures"),
        "{err}"
    );

    // An architecture selected twice would count twice in the correlations.
    let out = params_on("0..3,1,1");
    common::assert_fails(&out, &["--archs", "architecture 1 is selected twice"]);
    let out = lpzero(&[
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..4,1,1",
        "--iterations",
        "1",
    ]);
    common::assert_fails(
        &out,
        &["--fitness-archs", "architecture 1 is selected twice"],
    );

    let out = lpzero(&[
        "score",
        "--data-dir",
        "/nonexistent/dir",
        "--proxy",
        "params",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/dir"),
        "{err}"
    );

    let out = lpzero(&[
        "score",
        "--data-dir",
        d,
        "--proxy",
        "params",
        "--seq-len",
        "600",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("512"), "{err}");

    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "101 2000 abc").unwrap();
    let out = lpzero(&[
        "score",
        "--data-dir",
        d,
        "--proxy",
        "head_confidence",
        "--corpus",
        corpus.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("corpus.txt") && err.contains("abc"),
        "{err}"
    );
}

#[test]
fn expressions_and_genotypes_score() {
    let dir = common::fixture_data_dir("expr", &common::fixture_records());
    let d = dir.to_str().unwrap();
    let v = fixture_score(
        d,
        &[
            "--proxy",
            "lpzero_bert;add(mean(pow2(head)), mean(abs(act)))",
        ],
    );
    assert_eq!(v["proxies"].as_array().unwrap().len(), 2);
    assert_eq!(v["proxies"][0]["non_finite"], 0);
}

/// The JSON of `score --data-dir d --batch 1 --seq-len 16 --json ARGS` (which must succeed) on
/// a fixture of small records.
fn fixture_score(d: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "score",
        "--data-dir",
        d,
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--json",
    ];
    all.extend(args);
    serde_json::from_str(&common::stdout_of(&lpzero(&all))).unwrap()
}

/// Eight small records: the fixture's four plus variations, for searches.
fn search_fixture() -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut recs = common::fixture_records();
    let extra = [
        (62.0, vec![("SA", json!("WMA"), 2, 1)]),
        (
            70.0,
            vec![("SA", json!("SDP"), 4, 3), ("DSC", json!(5), 4, 1)],
        ),
        (58.0, vec![("LT", json!("DCT"), 2, 1)]),
        (
            68.0,
            vec![
                ("DSC", json!(9), 2, 3),
                ("SA", json!("WMA"), 4, 1),
                ("LT", json!("DFT"), 4, 1),
            ],
        ),
    ];
    for (i, (glue, layers)) in extra.into_iter().enumerate() {
        recs.push(common::record_json(4 + i, glue, &layers));
    }
    recs
}

/// The summary of `search --data-dir d --batch 1 --seq-len 16 --json ARGS` (which must succeed)
/// on a fixture of small records.
fn fixture_search(d: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "search",
        "--data-dir",
        d,
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--json",
    ];
    all.extend(args);
    serde_json::from_str(&common::stdout_of(&lpzero(&all))).unwrap()
}

#[test]
fn a_spilled_fitness_set_gives_the_same_search() {
    let dir = common::fixture_data_dir("spill", &search_fixture());
    let d = dir.to_str().unwrap();
    let spill = dir.join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let run = |storage: &str, spill_dir: Option<&str>| {
        let mut args = vec![
            "--fitness-archs",
            "0..6",
            "--population",
            "6",
            "--iterations",
            "15",
            "--threads",
            "2",
            "--probe-storage",
            storage,
        ];
        if let Some(s) = spill_dir {
            args.extend(["--spill-dir", s]);
        }
        fixture_search(d, &args)
    };
    for storage in ["f32", "bf16"] {
        let memory = run(storage, None);
        let disk = run(storage, Some(spill.to_str().unwrap()));
        for key in [
            "best",
            "fitness_spearman",
            "heldout_spearman",
            "heldout_kendall",
            "evaluated",
            "heldout_baselines",
            "hall_of_fame",
        ] {
            assert_eq!(memory[key], disk[key], "{storage} {key}");
        }
        assert!(memory["fitness_probe_bytes"].as_u64().unwrap() > 0);
        assert_eq!(memory["fitness_spilled_bytes"], 0);
        assert_eq!(disk["fitness_probe_bytes"], 0);
        assert!(disk["fitness_spilled_bytes"].as_u64().unwrap() > 0);
    }
    // The spill file is gone once the search ends.
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
    // Under a memory budget whose share holds about half of the probes, the others go to a
    // spill file in the temporary folder, and the search is the same again.
    let memory = run("f32", None);
    let held = memory["fitness_probe_bytes"].as_u64().unwrap();
    let room = (3u64 << 30) as f64; // the memo's default budget (1 GiB) and 2 GiB for probing
    let budget = format!("{:.9}", (room + held as f64 / 2.0) / 1e9);
    let mut args = vec![
        "search",
        "--data-dir",
        d,
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--json",
        "--fitness-archs",
        "0..6",
        "--population",
        "6",
        "--iterations",
        "15",
        "--threads",
        "2",
        "--memory-budget",
        &budget,
    ];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lpzero"))
        .args(&args)
        .env("TMPDIR", &spill)
        .output()
        .unwrap();
    let split: serde_json::Value = serde_json::from_str(&common::stdout_of(&out)).unwrap();
    for key in [
        "best",
        "fitness_spearman",
        "heldout_spearman",
        "evaluated",
        "hall_of_fame",
    ] {
        assert_eq!(memory[key], split[key], "budget {budget}: {key}");
    }
    let in_memory = split["fitness_probe_bytes"].as_u64().unwrap();
    assert!(
        in_memory > 0 && in_memory <= held / 2 + 1,
        "{in_memory} of {held}"
    );
    assert!(split["fitness_spilled_bytes"].as_u64().unwrap() > 0);
    assert!(
        (split["memory_budget_gb"].as_f64().unwrap() - budget.parse::<f64>().unwrap()).abs() < 1e-9
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("spill file in"));
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
    // Without a budget every probe stays in memory, and the summary says there was none.
    args.pop();
    args.push("none");
    let none: serde_json::Value = serde_json::from_str(&common::stdout_of(&lpzero(&args))).unwrap();
    assert_eq!(none["fitness_probe_bytes"].as_u64().unwrap(), held);
    assert!(none["memory_budget_gb"].is_null());
    assert_eq!(memory["memory_budget_gb"], 6.0);
    // A directory that does not exist is named in the error.
    let out = lpzero(&[
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..6",
        "--spill-dir",
        "/nonexistent/spill",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/spill"), "{err}");
}

#[test]
fn a_rank_join_search_is_scored_over_its_held_out_set() {
    let dir = common::fixture_data_dir("rank_join", &search_fixture());
    let d = dir.to_str().unwrap();
    let v = fixture_search(
        d,
        &[
            "--fitness-archs",
            "0..4",
            "--population",
            "6",
            "--iterations",
            "10",
            "--restarts",
            "1",
            "--rank-join",
            "1",
        ],
    );
    let best = v["best"].as_str().unwrap();
    assert!(best.starts_with("rank_add("), "{best}");
    // `score` over the same held-out architectures ranks within them, as the search did.
    let scored = fixture_score(d, &["--proxy", best, "--archs", "4..8"]);
    assert!(v["heldout_spearman"].is_number(), "{v}");
    assert_eq!(scored["spearman"], v["heldout_spearman"]);
    // A rank join is no function of one network: export and sharded runs refuse it by name.
    for args in [
        vec!["export", best, "--to", "python"],
        vec![
            "score",
            "--data-dir",
            d,
            "--proxy",
            best,
            "--shard",
            "0/2",
            "--out",
            "x.jsonl",
        ],
    ] {
        common::assert_fails(&lpzero(&args), &["rank join"]);
    }
}

#[test]
fn search_writes_run_directory_and_summary() {
    let dir = common::fixture_data_dir("search", &search_fixture());
    let d = dir.to_str().unwrap();
    let run = dir.join("run");
    let out = lpzero(&[
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..6",
        "--population",
        "6",
        "--iterations",
        "15",
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--checkpoint-every",
        "5",
        "--json",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "best",
        "fitness_spearman",
        "heldout_spearman",
        "heldout_kendall",
        "heldout_n",
        "seconds",
        "evaluated",
        "rejected_by_rule",
    ] {
        assert!(v.get(key).is_some(), "summary lacks {key}: {v}");
    }
    assert_eq!(v["heldout_n"], 2);
    assert!(v["heldout_spearman"].is_number(), "{v}");
    lpzero::proxy::parse::parse(v["best"].as_str().unwrap()).unwrap();
    // The comparison with every single-pass baseline on the same held-out architectures.
    let baselines = v["heldout_baselines"]
        .as_object()
        .expect("heldout_baselines");
    for name in [
        "params",
        "head_confidence",
        "eznas",
        "jacob_cov_relu",
        "w_pca",
        "snip",
        "grad_norm",
        "synaptic_saliency",
        "head_importance",
        "lpzero_bert",
    ] {
        assert!(baselines[name]["spearman"].is_number(), "{name}: {v}");
        assert!(baselines[name].get("kendall").is_some(), "{name}: {v}");
    }
    let pair = &baselines["pair_ensemble"];
    assert_eq!(pair["members"].as_array().unwrap().len(), 2, "{pair}");
    assert!(pair["fitness_spearman"].is_number(), "{pair}");
    let best = v["best_baseline"].as_str().unwrap();
    assert!(baselines.contains_key(best), "{best}");
    let margin = v["margin"].as_f64().unwrap();
    let best_rho = baselines[best]["spearman"].as_f64().unwrap();
    assert!((margin - (v["heldout_spearman"].as_f64().unwrap() - best_rho)).abs() < 1e-12);
    assert!(baselines
        .values()
        .all(|c| c["spearman"].as_f64().is_none_or(|r| r <= best_rho)));
    // The combined ensemble: the hall-of-fame ensemble's proxies and the pair's baselines,
    // as one proxy list `score --rank-sum` reads.
    let combined = &v["combined_ensemble"];
    assert_eq!(
        combined["searched"], v["hall_of_fame_ensemble"]["members"],
        "{v}"
    );
    assert_eq!(combined["baselines"], pair["members"], "{v}");
    assert!(combined.get("spearman").is_some() && combined.get("margin").is_some());
    let list = combined["proxy_list"].as_str().unwrap();
    let proxies = lpzero::scoring::Proxy::parse_list(list, lpzero::bench::flexibert::KIND).unwrap();
    let n_searched = combined["searched"].as_array().unwrap().len();
    assert_eq!(proxies.len(), n_searched + 2, "{list}");
    assert_eq!(
        proxies[n_searched].name(),
        pair["members"][0].as_str().unwrap()
    );
    // The complement ensemble: the searched proxy and the same pair.
    let complement = &v["complement_ensemble"];
    assert_eq!(
        complement["searched"],
        serde_json::json!([v["best"]]),
        "{v}"
    );
    assert_eq!(complement["baselines"], pair["members"], "{v}");
    assert!(complement["spearman"].is_number(), "{v}");
    // A complement search's fitness is that rank sum's correlation on the fitness set.
    let out = lpzero(&[
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..6",
        "--population",
        "6",
        "--iterations",
        "5",
        "--restarts",
        "1",
        "--batch",
        "1",
        "--seq-len",
        "16",
        "--fitness",
        "spearman",
        "--complement",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let joined = c["complement_ensemble"]["fitness_spearman"]
        .as_f64()
        .unwrap();
    assert!(
        (c["fitness"].as_f64().unwrap() - joined).abs() < 1e-12,
        "{c}"
    );
    // It ranks with higher-is-better companions, so a backward fitness is refused up front.
    let out = lpzero(&[
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..6",
        "--complement",
        "--fitness-sign",
        "either",
    ]);
    common::assert_fails(
        &out,
        &[
            "invalid search options",
            "complement goes with the oriented fitness",
        ],
    );
    // The default search runs 3 GP restarts: the search folder holds the summary, plots and
    // merged hall of fame; each restart folder a complete run folder.
    for file in [
        "summary.json",
        "hall_of_fame.json",
        "curve.svg",
        "scatter.svg",
        "heldout.svg",
    ] {
        assert!(run.join(file).is_file(), "missing {file}");
    }
    let restarts = v["restarts"].as_array().expect("restarts");
    assert_eq!(restarts.len(), 3, "{v}");
    let chosen = v["chosen_restart"].as_u64().unwrap() as usize;
    assert_eq!(restarts[chosen]["best"], v["best"]);
    assert_eq!(restarts[0]["seed"], v["seed"]);
    for (r, restart) in restarts.iter().enumerate() {
        assert!(restart["fitness"].as_f64().unwrap() <= v["fitness"].as_f64().unwrap());
        assert!(restart["heldout_spearman"].is_number(), "{restart}");
        let folder = run.join(format!("restart_{r}"));
        for file in [
            "config.json",
            "log.jsonl",
            "curve.csv",
            "curve.svg",
            "checkpoint.json",
        ] {
            assert!(folder.join(file).is_file(), "restart {r}: missing {file}");
        }
        let log = std::fs::read_to_string(folder.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 15);
    }
    assert!(v["fitness_probe_bytes"].as_u64().unwrap() > 0, "{v}");

    // A probe that needs more than the memory limit stops the search, before it is built, with
    // a clear message.
    let small = |limit: &str| {
        Command::new(env!("CARGO_BIN_EXE_lpzero"))
            .args(["search", "--data-dir", d, "--fitness-archs", "0..6"])
            .args(["--batch", "1", "--seq-len", "16", "--iterations", "1"])
            .env("LPZERO_PROBE_MEMORY_GB", limit)
            .output()
            .unwrap()
    };
    let out = small("0.000001");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("needs about")
            && err.contains("set by LPZERO_PROBE_MEMORY_GB")
            && err.contains("lower the batch rows"),
        "{err}"
    );
    let out = lpzero(&["search", "--data-dir", d, "--fitness-sign", "sideways"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--fitness-sign") && err.contains("either"),
        "{err}"
    );
    let out = small("lots");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("LPZERO_PROBE_MEMORY_GB") && err.contains("lots"),
        "{err}"
    );

    let out = lpzero(&[
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..6",
        "--structure",
        "tree2",
        "--iterations",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--structure"),
        "{err}"
    );
    let out = lpzero(&[
        "search",
        "--data-dir",
        d,
        "--fitness-archs",
        "0..6",
        "--rps-disable",
        "nonsense",
        "--iterations",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--rps-disable"),
        "{err}"
    );
}

#[test]
fn baselines_write_every_file_and_check_the_reference() {
    let dir = common::fixture_data_dir("baselines", &common::fixture_records());
    let d = dir.to_str().unwrap();
    // A reference file whose parameter column holds our own counts: agreement must be 1.
    let out = lpzero(&["params", "--data-dir", d]);
    let counts = String::from_utf8(out.stdout).unwrap();
    let columns = [
        "Synaptic Diversity",
        "Synaptic Saliency",
        "Activation Distance Normalized",
        "Jacobian Score",
        "Jacobian Score Normalized",
        "Number of Parameters",
        "Head Importance",
        "Head Confidence",
        "Head Softmax Confidence",
    ];
    let mut reference = format!("ID,GLUE Score,{}\n", columns.join(","));
    for line in counts.lines().skip(1) {
        let (id, total) = line.split_once(',').unwrap();
        let mut row = vec![id.to_string(), "70".to_string()];
        for c in columns {
            row.push(if c == "Number of Parameters" {
                total.to_string()
            } else {
                id.to_string()
            });
        }
        reference.push_str(&(row.join(",") + "\n"));
    }
    std::fs::write(dir.join("flexibert/reference_proxy_scores.csv"), reference).unwrap();
    let out_dir = dir.join("bl");
    let o = out_dir.to_str().unwrap();
    let args = [
        "baselines",
        "--data-dir",
        d,
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--out",
        o,
        "--json",
        "--with",
        "lpzero_bert",
    ];
    let out = lpzero(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 4);
    let proxies = v["proxies"].as_array().unwrap();
    let names: Vec<&str> = proxies
        .iter()
        .map(|p| p["proxy"].as_str().unwrap())
        .collect();
    for name in [
        "grasp",
        "synflow",
        "fisher",
        "jacob_cov_relu",
        "eznas",
        "w_pca",
        "lpzero_bert",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(!names.contains(&"decoder_params"));
    let params = proxies.iter().find(|p| p["proxy"] == "params").unwrap();
    let agreement = params["reference_spearman"].as_f64().unwrap();
    assert!((agreement - 1.0).abs() < 1e-12, "{agreement}");
    assert_eq!(params["reference_column"], "Number of Parameters");
    let grasp = proxies.iter().find(|p| p["proxy"] == "grasp").unwrap();
    assert!(grasp["reference_spearman"].is_null());
    assert_eq!(grasp["orientation"], "lower_is_better");
    // Extra-pass proxies got real values on every architecture.
    let csv = std::fs::read_to_string(out_dir.join("baselines.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header[0], "id");
    assert_eq!(header[1..], names[..]);
    assert_eq!(csv.lines().count(), 5);
    let col = header.iter().position(|&h| h == "synflow").unwrap();
    for line in csv.lines().skip(1) {
        let x: f64 = line.split(',').nth(col).unwrap().parse().unwrap();
        assert!(x.is_finite() && x > 0.0, "synflow {x}");
    }
    // The extra passes (which leave the weights absolute) do not leak into the single-pass
    // proxies: `score` without them gives the same values.
    let single = dir.join("single.csv");
    let out = lpzero(&[
        "score",
        "--data-dir",
        d,
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--proxy",
        "snip,synaptic_diversity,head_confidence",
        "--out",
        single.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let single = std::fs::read_to_string(&single).unwrap();
    let single_header: Vec<&str> = single.lines().next().unwrap().split(',').collect();
    for name in ["snip", "synaptic_diversity", "head_confidence"] {
        let a = header.iter().position(|h| *h == name).unwrap();
        let b = single_header.iter().position(|h| *h == name).unwrap();
        for (x, y) in csv.lines().zip(single.lines()).skip(1) {
            assert_eq!(x.split(',').nth(a), y.split(',').nth(b), "{name}");
        }
    }
    let md = std::fs::read_to_string(out_dir.join("baselines.md")).unwrap();
    assert!(md.contains("| grasp | lower |"), "{md}");
    let svg = std::fs::read_to_string(out_dir.join("baselines.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("synflow"));
    // Same seed, same table.
    let again = lpzero(&args);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(out_dir.join("baselines.csv")).unwrap(),
        csv
    );
    // An unknown --skip name is an error that names it.
    let bad = lpzero(&["baselines", "--data-dir", d, "--skip", "nope", "--out", o]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`nope`"));
}

#[test]
fn study_runs_splits_and_aggregates() {
    let dir = common::fixture_data_dir("study", &search_fixture());
    let d = dir.to_str().unwrap();
    // Twice: with value joins, and with rank joins only (each split's joins rank within its
    // own held-out architectures, as its search alone does).
    for rank_join in ["0", "1"] {
        let out_dir = dir.join(format!("study_{rank_join}"));
        let args = [
            "study",
            "--data-dir",
            d,
            "--splits",
            "2",
            "--fitness-n",
            "5",
            "--population",
            "6",
            "--iterations",
            "4",
            "--structure",
            "extended",
            "--rank-join",
            rank_join,
            "--batch",
            "1",
            "--seq-len",
            "16",
            "--json",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        let out = lpzero(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["splits"], 2);
        let splits = v["per_split"].as_array().unwrap();
        assert_eq!(splits.len(), 2);
        for (k, s) in splits.iter().enumerate() {
            assert_eq!(s["seed"], k as u64);
            assert_eq!(s["heldout_n"], 3);
            assert!(s["heldout_spearman"].is_number(), "{s}");
            assert!(s["heldout_baselines"]["pair_ensemble"]["members"].is_array());
            assert!(out_dir.join(format!("split_{k}/summary.json")).is_file());
            let joined = s["best"].as_str().unwrap().starts_with("rank_add(");
            assert_eq!(joined, rank_join == "1", "{}", s["best"]);
        }
        // The two splits draw different fitness sets.
        assert_ne!(splits[0]["fitness_archs"], splits[1]["fitness_archs"]);
        let rows = &v["aggregate"]["rows"];
        for row in ["searched", "pair_ensemble", "best_single_baseline", "eznas"] {
            assert_eq!(rows[row]["spearman"].as_array().unwrap().len(), 2, "{row}");
        }
        for file in ["study.json", "study.md", "study.csv", "study.svg"] {
            assert!(out_dir.join(file).is_file(), "missing {file}");
        }
        // A split's result equals `search --seed S --probe-seed 0 --fitness-archs random:5`.
        let s = fixture_search(
            d,
            &[
                "--seed",
                "1",
                "--probe-seed",
                "0",
                "--fitness-archs",
                "random:5",
                "--population",
                "6",
                "--iterations",
                "4",
                "--structure",
                "extended",
                "--rank-join",
                rank_join,
            ],
        );
        for key in [
            "best",
            "heldout_spearman",
            "hall_of_fame_ensemble",
            "heldout_baselines",
            "fitness_archs",
        ] {
            assert_eq!(s[key], splits[1][key], "{key}");
        }
    }
    // Bad input is named.
    let bad = lpzero(&["study", "--data-dir", d, "--fitness-n", "8"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("fitness"), "{err}");
}

/// `--probe-storage bf16`: a search keeps about half the bytes of fitness probes and says so
/// in its summary; `score` values move by no more than the rounding (and some do move).
#[test]
fn probe_storage_bf16_halves_the_fitness_probes() {
    let dir = common::fixture_data_dir("storage", &search_fixture());
    let d = dir.to_str().unwrap();
    let search = |storage: &str| {
        fixture_search(
            d,
            &[
                "--fitness-archs",
                "0..6",
                "--population",
                "4",
                "--iterations",
                "3",
                "--restarts",
                "1",
                "--heldout",
                "off",
                "--probe-storage",
                storage,
            ],
        )
    };
    let (full, half) = (search("f32"), search("bf16"));
    assert_eq!(full["probe"]["storage"], "f32", "{full}");
    assert_eq!(half["probe"]["storage"], "bf16", "{half}");
    let bytes = |v: &serde_json::Value| v["fitness_probe_bytes"].as_f64().unwrap();
    let ratio = bytes(&half) / bytes(&full);
    assert!((0.45..0.6).contains(&ratio), "bf16/f32 probe bytes {ratio}");

    let score = |storage: &str| -> Vec<Vec<f64>> {
        let csv = dir.join(format!("score_{storage}.csv"));
        let out = lpzero(&[
            "score",
            "--data-dir",
            d,
            "--proxy",
            "all",
            "--archs",
            "0..6",
            "--batch",
            "1",
            "--seq-len",
            "16",
            "--probe-storage",
            storage,
            "--out",
            csv.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Rows: id, truth, then one value per proxy.
        std::fs::read_to_string(&csv)
            .unwrap()
            .lines()
            .skip(1)
            .map(|row| {
                row.split(',')
                    .skip(2)
                    .map(|x| x.parse().unwrap_or(f64::NAN))
                    .collect()
            })
            .collect()
    };
    let (a, b) = (score("f32"), score("bf16"));
    assert_eq!(a.len(), b.len());
    let mut moved = 0;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        if x.is_finite() {
            moved += usize::from(x != y);
            assert!(
                (x - y).abs() <= 0.02 * x.abs().max(1e-12),
                "f32 {x}, bf16 {y}"
            );
        }
    }
    assert!(moved > 0, "bf16 storage changed no value");

    // A storage that does not exist is refused with the ones that do.
    let bad = lpzero(&[
        "score",
        "--data-dir",
        d,
        "--proxy",
        "params",
        "--probe-storage",
        "f16",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{err}");
    for part in ["--probe-storage", "f16", "f32", "bf16"] {
        assert!(err.contains(part), "{part}: {err}");
    }
}
