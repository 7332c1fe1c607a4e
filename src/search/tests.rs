//! Whole-search tests on the synthetic benchmark of [`super::testutil`].

use std::cell::Cell;
use std::path::PathBuf;

use super::testutil::Synthetic;
use super::*;
use crate::proxy::eval::eval;
use crate::proxy::parse::parse;

/// A fresh, empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("lpzero-search-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small(structure: Structure, seed: u64, iterations: usize) -> SearchOptions {
    SearchOptions {
        population: 16,
        iterations,
        structure,
        seed,
        hall_of_fame: 5,
        checkpoint_every: 10,
        // The reference search (Spearman fitness): the tests check its mechanics.
        ..SearchOptions::reference()
    }
}

fn run_quiet(opts: &SearchOptions, s: &Synthetic) -> SearchOutcome {
    let probes = s.sources();
    run(opts, &probes, &s.truth, None, None, &|_| {}).unwrap()
}

#[test]
fn evaluation_threads_do_not_change_the_outcome() {
    let s = Synthetic::new(30, 2);
    let one = run_quiet(&small(Structure::Tree, 5, 40), &s);
    for threads in [2, 3] {
        let opts = SearchOptions {
            threads,
            ..small(Structure::Tree, 5, 40)
        };
        let many = run_quiet(&opts, &s);
        assert_eq!(one.reproducible_summary(), many.reproducible_summary());
        assert_eq!(one.curve, many.curve);
        assert_eq!(
            serde_json::to_string(&one.hall_of_fame).unwrap(),
            serde_json::to_string(&many.hall_of_fame).unwrap()
        );
    }
}

#[test]
fn same_seed_same_outcome_and_seeds_differ() {
    let s = Synthetic::new(30, 1);
    let opts = small(Structure::Tree, 3, 40);
    let a = run_quiet(&opts, &s);
    let b = run_quiet(&opts, &s);
    assert_eq!(a.reproducible_summary(), b.reproducible_summary());
    assert_eq!(a.best, b.best);
    assert_eq!(a.curve, b.curve);
    assert_eq!(a.curve.len(), 41);
    let c = run_quiet(&small(Structure::Tree, 4, 40), &s);
    assert_ne!(
        serde_json::to_string(&a.population).unwrap(),
        serde_json::to_string(&c.population).unwrap()
    );
}

#[test]
fn resumed_run_ends_like_uninterrupted_run() {
    let s = Synthetic::new(30, 2);
    let probes = s.sources();
    let full_dir = temp_dir("full");
    let part_dir = temp_dir("part");
    let full_opts = small(Structure::Tree, 9, 40);
    let calls = Cell::new(0);
    let full = run(
        &full_opts,
        &probes,
        &s.truth,
        Some(&full_dir),
        None,
        &|_| calls.set(calls.get() + 1),
    )
    .unwrap();
    assert_eq!(calls.get(), 40);
    let part_opts = SearchOptions {
        iterations: 20,
        ..full_opts.clone()
    };
    let part = run(
        &part_opts,
        &probes,
        &s.truth,
        Some(&part_dir),
        None,
        &|_| {},
    )
    .unwrap();
    assert_eq!(part.iterations, 20);
    // Simulate a crash after the checkpoint: a stray log line past iteration 20.
    let log = part_dir.join("log.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"iteration\":21,\"child\":\"stray\"}\n");
    std::fs::write(&log, text).unwrap();
    let resumed = run(
        &full_opts,
        &probes,
        &s.truth,
        Some(&part_dir),
        Some(&part_dir),
        &|_| {},
    )
    .unwrap();
    assert_eq!(resumed.resumed_from, Some(20));
    assert_eq!(resumed.reproducible_summary(), full.reproducible_summary());
    assert_eq!(resumed.curve, full.curve);
    assert_eq!(resumed.hall_of_fame, full.hall_of_fame);
    // The logs and run files agree too.
    for f in ["log.jsonl", "curve.csv", "hall_of_fame.json", "curve.svg"] {
        let a = std::fs::read_to_string(full_dir.join(f)).unwrap();
        let b = std::fs::read_to_string(part_dir.join(f)).unwrap();
        assert_eq!(a, b, "{f} differs");
    }
    assert_eq!(
        std::fs::read_to_string(full_dir.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        40
    );
    for f in ["config.json", "checkpoint.json"] {
        assert!(full_dir.join(f).is_file(), "{f}");
    }
    // Resuming with result-changing options is refused.
    let other = SearchOptions {
        p_mutation: 0.9,
        ..full_opts.clone()
    };
    let err = run(&other, &probes, &s.truth, None, Some(&part_dir), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("p_mutation"), "{err}");
    let err = run(
        &full_opts,
        &probes[..29],
        &s.truth[..29],
        None,
        Some(&part_dir),
        &|_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("fitness set"), "{err}");
    let _ = std::fs::remove_dir_all(&full_dir);
    let _ = std::fs::remove_dir_all(&part_dir);
}

#[test]
fn finds_a_good_proxy() {
    let s = Synthetic::new(30, 5);
    let out = run_quiet(&small(Structure::Tree, 1, 60), &s);
    assert!(out.fitness_spearman > 0.8, "{}", out.fitness_spearman);
    // The reported fitness is the best expression's real Spearman.
    let probes = s.sources();
    let values: Vec<f64> = probes
        .iter()
        .map(|p| eval(&out.best, *p).unwrap())
        .collect();
    let rho = crate::stats::spearman(&s.truth, &values);
    assert!((rho - out.fitness_spearman).abs() < 1e-12);
    // The curve never gets worse at the top (the best member is never replaced).
    for w in out.curve.windows(2) {
        assert!(w[1].best >= w[0].best);
    }
    assert_eq!(out.hall_of_fame[0].fitness, out.fitness_spearman);
    assert!(out.rejected > 0);
    assert_eq!(
        out.rejected,
        out.rejected_by_rule.values().sum::<u64>(),
        "{:?}",
        out.rejected_by_rule
    );
    assert_eq!(out.candidates, out.valid + out.rejected);
}

#[test]
fn every_structure_runs_and_round_trips() {
    let s = Synthetic::new(20, 7);
    for st in Structure::ALL {
        let out = run_quiet(&small(st, 2, 25), &s);
        assert_eq!(out.best_genome.structure(), st);
        assert!(out.fitness_spearman.is_finite());
        for e in out
            .hall_of_fame
            .iter()
            .map(|h| h.expr.to_string())
            .chain([out.best.to_string()])
        {
            let parsed = parse(&e).unwrap_or_else(|err| panic!("{st}: {e}: {err}"));
            assert_eq!(parsed.to_string(), e);
        }
        for m in &out.population {
            assert_eq!(m.genome.to_expr(), m.expr);
            assert!(!m.negated);
        }
    }
}

#[test]
fn rps_off_evaluates_everything() {
    let s = Synthetic::new(20, 8);
    let on = run_quiet(&small(Structure::Tree, 5, 30), &s);
    let mut opts = small(Structure::Tree, 5, 30);
    opts.rps = RpsOptions::off();
    let off = run_quiet(&opts, &s);
    // No candidate is stopped before evaluation or pruned on the way.
    assert_eq!(off.evaluated, off.candidates);
    for (rule, count) in &off.rejected_by_rule {
        let r: Rule = rule.parse().unwrap();
        if !r.is_mandatory() {
            assert_eq!(*count, 0, "{rule}");
        }
    }
    // Without early exits only an evaluation error stops before the last architecture.
    assert!(off.fully_evaluated + off.rejected_by_rule["eval_error"] >= off.evaluated);
    // With pruning on, rules fire and save work.
    assert!(on.evaluated < on.candidates);
    let saved: f64 = on.saved_evaluations_by_rule.values().sum();
    assert!(saved > 0.0);
    assert!(
        on.rejected_by_rule["duplicate"] > 0,
        "{:?}",
        on.rejected_by_rule
    );
}

#[test]
fn hopeless_configuration_errors_out() {
    // Every input list is empty, so no candidate ever has a value.
    struct Empty;
    impl InputSource for Empty {
        fn input(&self, _: crate::proxy::expr::Input) -> Option<crate::proxy::eval::InputList<'_>> {
            Some(crate::proxy::eval::InputList::Borrowed(&[]))
        }
    }
    let probes: Vec<&dyn InputSource> = vec![&Empty, &Empty, &Empty];
    let opts = SearchOptions {
        population: 4,
        init_attempts_per_member: 5,
        ..SearchOptions::default()
    };
    let err = run(&opts, &probes, &[1.0, 2.0, 3.0], None, None, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("initial population"), "{err}");
}

#[test]
fn either_sign_finds_backward_proxies_and_reports_them_negated() {
    // Reverse the ground truth: every good proxy of the synthetic set now ranks backwards.
    let mut s = Synthetic::new(30, 4);
    s.truth.iter_mut().for_each(|t| *t = -*t);
    let probes = s.sources();
    let set = FitnessSet::new(&probes, &s.truth).unwrap();
    let e = canonical(&parse("mean(pow2(head))").unwrap());
    let mut memo = Memo::new();
    let oriented = set.evaluate(
        &e,
        std::slice::from_mut(&mut memo),
        &RpsOptions::off(),
        None,
    );
    let either = set.with_either_sign(true).evaluate(
        &e,
        std::slice::from_mut(&mut memo),
        &RpsOptions::off(),
        Some(0.0),
    );
    let rho = oriented.fitness.unwrap();
    assert!(rho < -0.5 && !oriented.negated, "{oriented:?}");
    assert_eq!(either.fitness, Some(-rho));
    assert!(either.negated);

    let opts = SearchOptions {
        either_sign: true,
        ..small(Structure::Tree, 2, 30)
    };
    let out = run_quiet(&opts, &s);
    assert!(out.fitness_spearman > 0.5, "{}", out.fitness_spearman);
    // Every entry is higher-is-better as written: its ρ on the set equals its fitness.
    for h in &out.hall_of_fame {
        let values: Vec<f64> = s.archs.iter().map(|a| eval(&h.expr, a).unwrap()).collect();
        let rho = crate::stats::spearman(&s.truth, &values);
        assert!(
            (rho - h.fitness).abs() < 1e-9,
            "{}: {rho} vs {}",
            h.expr,
            h.fitness
        );
    }
    assert!(
        out.hall_of_fame
            .iter()
            .any(|h| h.negated && h.expr.to_string().starts_with("neg(")),
        "{:?}",
        out.hall_of_fame
    );
    let best: Vec<f64> = s
        .archs
        .iter()
        .map(|a| eval(&out.best, a).unwrap())
        .collect();
    assert!((crate::stats::spearman(&s.truth, &best) - out.fitness_spearman).abs() < 1e-9);
}

#[test]
fn restarts_report_the_fittest_run_and_merge_the_halls() {
    let s = Synthetic::new(30, 7);
    let probes = s.sources();
    let fitness = FitnessData {
        probes: &probes,
        truth: &s.truth,
        settings: &serde_json::Value::Null,
        companion: None,
    };
    let base = small(Structure::Tree, 3, 25);
    // One restart is the plain search.
    let plain = run_quiet(&base, &s);
    let one = run_restarts(&base, &fitness, None, None, &|_| {}).unwrap();
    assert_eq!(one.reproducible_summary(), plain.reproducible_summary());
    assert_eq!(one.restarts.len(), 1);
    // Three restarts: each is the plain search with its own seed, run 0 with the search's.
    let opts = SearchOptions {
        restarts: 3,
        ..base.clone()
    };
    let dir = temp_dir("restarts");
    let ticks = Cell::new(0usize);
    let out = run_restarts(&opts, &fitness, Some(&dir), None, &|i| {
        assert_eq!(i, ticks.get() + 1, "iterations count across restarts");
        ticks.set(i);
    })
    .unwrap();
    assert_eq!(ticks.get(), 3 * 25);
    let runs: Vec<SearchOutcome> = (0..3)
        .map(|r| run_quiet(&restarts::restart_options(&opts, r), &s))
        .collect();
    assert_eq!(runs[0].best, plain.best);
    let seeds: Vec<u64> = out.restarts.iter().map(|r| r.seed).collect();
    assert_eq!(seeds[0], 3);
    assert!(seeds[1] != seeds[0] && seeds[2] != seeds[1] && seeds[2] != seeds[0]);
    for (r, run) in runs.iter().enumerate() {
        assert_eq!(out.restarts[r].best, run.best);
        assert_eq!(out.restarts[r].fitness, run.fitness_spearman);
    }
    // The reported run is the fittest (the first on ties).
    let fits: Vec<f64> = runs.iter().map(|r| r.fitness_spearman).collect();
    let chosen = out.chosen_restart;
    assert!(fits.iter().all(|&f| f <= fits[chosen]));
    assert!(fits[..chosen].iter().all(|&f| f < fits[chosen]));
    assert_eq!(out.best, runs[chosen].best);
    assert_eq!(out.curve, runs[chosen].curve);
    assert_eq!(
        out.candidates,
        runs.iter().map(|r| r.candidates).sum::<u64>()
    );
    // The merged hall of fame holds the best distinct entries of all runs, best first.
    let mut all: Vec<(f64, usize)> = runs
        .iter()
        .enumerate()
        .flat_map(|(r, run)| run.hall_of_fame.iter().map(move |e| (e.fitness, r)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert_eq!(out.hall_of_fame.len(), opts.hall_of_fame);
    assert_eq!(out.hall_of_fame[0].fitness, all[0].0);
    assert!(out
        .hall_of_fame
        .windows(2)
        .all(|w| w[0].fitness >= w[1].fitness));
    for e in &out.hall_of_fame {
        assert!(runs[e.restart].hall_of_fame.iter().any(|h| h.key == e.key));
    }
    // Each restart has its run folder, and resuming from the search folder ends the same.
    for r in 0..3 {
        assert!(restarts::restart_dir(&dir, r)
            .join("checkpoint.json")
            .is_file());
    }
    let hall: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hall_of_fame.json")).unwrap())
            .unwrap();
    assert_eq!(hall[0]["key"], out.hall_of_fame[0].key.as_str());
    assert_eq!(hall[0]["restart"], out.hall_of_fame[0].restart);
    assert!(dir.join("curve.svg").is_file());
    let again = run_restarts(&opts, &fitness, Some(&dir), Some(&dir), &|_| {}).unwrap();
    assert_eq!(again.best, out.best);
    assert_eq!(again.hall_of_fame, out.hall_of_fame);
    // A checkpoint file cannot resume several restarts.
    let file = restarts::restart_dir(&dir, 0).join("checkpoint.json");
    let err = run_restarts(&opts, &fitness, None, Some(&file), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("run folder"), "{err}");
    // Overwriting the folder clears the restart folders too.
    rundir::claim(&dir, true).unwrap();
    assert!(!restarts::restart_dir(&dir, 0).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_complement_search_scores_every_candidate_with_its_companion() {
    let s = Synthetic::new(30, 6);
    let probes = s.sources();
    let mut rng = crate::rng::Rng::new(3);
    let columns: Vec<Vec<f64>> = (0..2)
        .map(|_| s.truth.iter().map(|t| t + 1.5 * rng.normal()).collect())
        .collect();
    let opts = SearchOptions {
        complement: true,
        ..small(Structure::Tree, 2, 30)
    };
    // Without companion columns a complement search refuses to run.
    let err = run(&opts, &probes, &s.truth, None, None, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("companion"), "{err}");
    // With them every hall-of-fame entry's fitness is that of its rank sum with the columns.
    let fitness = FitnessData {
        probes: &probes,
        truth: &s.truth,
        settings: &serde_json::Value::Null,
        companion: Some(&columns),
    };
    let out = run_restarts(&opts, &fitness, None, None, &|_| {}).unwrap();
    assert!(!out.hall_of_fame.is_empty());
    for h in &out.hall_of_fame {
        let values: Vec<f64> = s.archs.iter().map(|a| eval(&h.expr, a).unwrap()).collect();
        let joined = crate::stats::rank_sum(&[&values, &columns[0], &columns[1]]);
        let rho = crate::stats::spearman(&s.truth, &joined);
        assert!(
            (rho - h.fitness).abs() < 1e-12,
            "{}: {rho} vs {}",
            h.expr,
            h.fitness
        );
    }
    // Only with the oriented fitness.
    let either = SearchOptions {
        either_sign: true,
        ..opts.clone()
    };
    assert!(either.validate().is_err());
}
