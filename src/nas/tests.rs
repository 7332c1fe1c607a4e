use super::*;
use crate::bench::space::validated;
use crate::bench::{flexibert, gpt2, BenchKind};

fn space_of(kind: BenchKind) -> &'static dyn crate::bench::space::DesignSpace {
    models::family(kind).design_space().unwrap()
}

/// Checks that `config` lies in the family's published space (the values the spec lists).
fn in_space(kind: BenchKind, config: &Value) {
    if kind == flexibert::KIND {
        assert!([128, 256].contains(&config["hidden_size"].as_u64().unwrap()));
        let layers = config["encoder_layers"].as_array().unwrap();
        assert!([2, 4].contains(&layers.len()), "{config}");
        for l in layers {
            assert!([2, 4].contains(&l["num_operation_heads"].as_u64().unwrap()));
            assert!([512, 1024].contains(&l["feed_forward_dimension"].as_u64().unwrap()));
            assert!([1, 3].contains(&l["num_feed_forward"].as_u64().unwrap()));
            assert!(["SA", "LT", "DSC"].contains(&l["operation_type"].as_str().unwrap()));
        }
    } else {
        let n = config["n_layer"].as_u64().unwrap() as usize;
        assert!((2..=16).contains(&n), "{config}");
        assert!([64, 128, 256, 512].contains(&config["d_model"].as_u64().unwrap()));
        assert!([128, 256, 512].contains(&config["d_embed"].as_u64().unwrap()));
        assert!([1, 2, 4].contains(&config["div_val"].as_u64().unwrap()));
        let heads = config["n_head"].as_array().unwrap();
        let inner = config["d_inner"].as_array().unwrap();
        assert_eq!((heads.len(), inner.len()), (n, n));
        assert!(heads
            .iter()
            .all(|h| [2, 4, 8].contains(&h.as_u64().unwrap())));
        assert!(inner
            .iter()
            .all(|d| (512..=2048).contains(&d.as_u64().unwrap())));
    }
}

#[test]
fn seeded_sampling_is_deterministic_and_valid() {
    for kind in [flexibert::KIND, gpt2::KIND] {
        let space = space_of(kind);
        let draw = |seed| {
            Sampling {
                n: 40,
                seed,
                opts: SpaceOptions::default(),
            }
            .draw(space)
            .unwrap()
        };
        let (a, b, c) = (draw(7), draw(7), draw(8));
        let archs = |bench: &Benchmark| -> Vec<(String, crate::bench::Arch)> {
            let e = &bench.entries;
            e.iter().map(|e| (e.key.clone(), e.arch.clone())).collect()
        };
        assert!(archs(&a) == archs(&b), "{kind}: same seed, same draw");
        assert!(archs(&a) != archs(&c), "{kind}: another seed, another draw");
        assert!(a.entries.iter().all(|e| e.truth.is_nan()));
        assert_eq!(a.entries[0].key, "s00");
        assert_eq!(a.entries[39].key, "s39");
        for (i, e) in a.entries.iter().enumerate() {
            let config = space.config(&e.arch).unwrap();
            in_space(kind, &config);
            // The family's own reader (the checks of a shipped record) gives it back.
            let again = validated(kind, &config, i, &e.key).unwrap();
            assert_eq!(again, e.arch, "{kind} {}", e.key);
        }
        // Both published depths occur.
        let depths: HashSet<usize> = a
            .entries
            .iter()
            .map(|e| {
                let c = space.config(&e.arch).unwrap();
                c.get("n_layer").and_then(Value::as_u64).map_or_else(
                    || c["encoder_layers"].as_array().unwrap().len(),
                    |n| n as usize,
                )
            })
            .collect();
        assert!(depths.len() > 1, "{kind}: {depths:?}");
    }
}

#[test]
fn mutation_stays_in_the_space_and_changes_something() {
    for kind in [flexibert::KIND, gpt2::KIND] {
        let space = space_of(kind);
        let opts = SpaceOptions::default();
        let mut rng = Rng::new(3);
        let mut arch = space.sample(&mut rng, &opts, 0, "a").unwrap();
        for step in 1..200 {
            let child = space.mutate(&arch, &mut rng, &opts, step, "m").unwrap();
            let (before, after) = (space.config(&arch).unwrap(), space.config(&child).unwrap());
            assert_ne!(before, after, "{kind}: step {step} changed nothing");
            in_space(kind, &after);
            arch = child;
        }
    }
}

#[test]
fn a_depth_override_is_respected_by_sampling_and_mutation() {
    let space = space_of(gpt2::KIND);
    let opts = SpaceOptions { depth: Some(3..=4) };
    let mut rng = Rng::new(1);
    let mut arch = space.sample(&mut rng, &opts, 0, "a").unwrap();
    for step in 0..100 {
        let n = space.config(&arch).unwrap()["n_layer"].as_u64().unwrap();
        assert!((3..=4).contains(&n), "step {step}: {n} layers");
        arch = space.mutate(&arch, &mut rng, &opts, step, "m").unwrap();
    }
}

fn candidate(index: usize, params: usize, score: f64, latency: Option<f64>) -> Candidate {
    Candidate {
        key: format!("c{index}"),
        index,
        generation: 0,
        params,
        latency_ms: latency,
        value: Some(score),
        score,
        truth: None,
    }
}

#[test]
fn budgets_filter_candidates() {
    let opts = NasOptions {
        max_params: Some(100),
        max_latency_ms: Some(5.0),
        ..NasOptions::default()
    };
    assert!(candidate(0, 100, 1.0, Some(5.0)).eligible(&opts));
    assert!(!candidate(0, 101, 1.0, Some(1.0)).eligible(&opts));
    assert!(!candidate(0, 50, 1.0, Some(5.5)).eligible(&opts));
    // Not measured: not known to be within a latency budget.
    assert!(!candidate(0, 50, 1.0, None).eligible(&opts));
    assert!(!candidate(0, 50, f64::NAN, Some(1.0)).eligible(&opts));
    let open = NasOptions::default();
    assert!(candidate(0, usize::MAX, 1.0, None).eligible(&open));
}

#[test]
fn the_pool_scores_only_what_fits_the_parameter_budget() {
    let base = Sampling {
        n: 12,
        seed: 2,
        opts: SpaceOptions::default(),
    }
    .draw(space_of(flexibert::KIND))
    .unwrap();
    let proxy = Proxy::parse("params").unwrap();
    let probe = models::family(flexibert::KIND).probe_options();
    let all = NasOptions::default();
    let (pool, selection) = pool_of(base.clone(), None, proxy.orientation(), &probe, &all).unwrap();
    assert_eq!(selection, (0..12).collect::<Vec<_>>());
    let median = param_quantile(
        &pool.candidates.iter().map(|c| c.params).collect::<Vec<_>>(),
        0.5,
    );
    let opts = NasOptions {
        max_params: Some(median),
        ..NasOptions::default()
    };
    let (mut pool, selection) = pool_of(base, None, proxy.orientation(), &probe, &opts).unwrap();
    assert!(!selection.is_empty() && selection.len() < 12);
    assert!(selection
        .iter()
        .all(|&i| pool.candidates[i].params <= median));
    // A score table keyed by id supplies the values; the ranking keeps to the budget.
    let column = ScoreColumn {
        file: "t.csv".into(),
        column: "v".into(),
        values: pool
            .candidates
            .iter()
            .map(|c| (c.key.clone(), c.params as f64))
            .collect(),
    };
    pool.score(&selection, &Scorer::Table(&column), || {})
        .unwrap();
    let ranked = pool.ranked(&opts);
    assert_eq!(ranked.len(), selection.len());
    let scores: Vec<f64> = ranked.iter().map(|&i| pool.candidates[i].score).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
}

#[test]
fn pareto_front_of_a_hand_example() {
    // (cost, score): 0 and 1 are on the front; 2 is dominated by 1 (costlier, worse); 3 ties
    // 1 exactly (kept); 4 is dominated by 0 at equal cost; 5 is the best and costliest; 6 has
    // no score.
    let points = [
        (1.0, 1.0),
        (2.0, 3.0),
        (3.0, 2.0),
        (2.0, 3.0),
        (1.0, 0.5),
        (5.0, 4.0),
        (0.5, f64::NAN),
    ];
    assert_eq!(pareto_front(&points), vec![0, 1, 3, 5]);
    assert!(pareto_front(&[]).is_empty());
    assert_eq!(pareto_front(&[(1.0, 1.0)]), vec![0]);
    // Brute force on a seeded cloud agrees with the definition.
    let mut rng = Rng::new(9);
    let cloud: Vec<(f64, f64)> = (0..60)
        .map(|_| (rng.range(0, 20) as f64, rng.range(0, 20) as f64))
        .collect();
    let front: HashSet<usize> = pareto_front(&cloud).into_iter().collect();
    for (i, p) in cloud.iter().enumerate() {
        let dominated = cloud
            .iter()
            .any(|q| q.0 <= p.0 && q.1 >= p.1 && (q.0 < p.0 || q.1 > p.1));
        assert_eq!(front.contains(&i), !dominated, "point {i} {p:?}");
    }
}

#[test]
fn validation_compares_with_the_best_and_with_parameters() {
    // Eight architectures; params 1..=8, truth peaks at params 3 within the lower half.
    let params: Vec<usize> = (1..=8).collect();
    let truth = [1.0, 2.0, 9.0, 3.0, 4.0, 5.0, 6.0, 10.0];
    let oracle: Vec<f64> = truth.to_vec();
    let backwards: Vec<f64> = truth.iter().map(|t| -t).collect();
    let names = ["oracle".to_string(), "backwards".to_string()];
    let rows = validate(&names, &[oracle, backwards], &truth, &params).unwrap();
    assert_eq!(rows.len(), 6);
    let half = &rows[1];
    assert_eq!((half.quantile, half.max_params, half.within), (0.5, 4, 4));
    assert_eq!(half.best, 9.0);
    assert_eq!((half.proxy_top1, half.regret_top1()), (9.0, 0.0));
    // Picking by parameters takes params 4 (truth 3); its top 5 holds all four.
    assert_eq!((half.params_top1, half.params_top5), (3.0, 9.0));
    let worst = &rows[4];
    assert_eq!((worst.proxy.as_str(), worst.proxy_top1), ("backwards", 1.0));
    assert_eq!(worst.regret_top1(), 8.0);
    let md = validation_markdown(&rows, "glue", 1.0);
    assert!(
        md.contains("| oracle | 50%: 0.00 M | 4 | 9.00 | 9.00 (0.00) |"),
        "{md}"
    );
    assert!(validate(&names[..1], &[vec![0.0]], &[f64::NAN], &[1]).is_err());
    assert_eq!(param_quantile(&[5, 1, 3, 2], 0.25), 1);
    assert_eq!(param_quantile(&[5, 1, 3, 2], 0.75), 3);
}

#[test]
fn space_choices_parse_and_print() {
    assert_eq!(
        "benchmark".parse::<SpaceChoice>().unwrap(),
        SpaceChoice::Benchmark
    );
    assert_eq!(
        " sample:3".parse::<SpaceChoice>().unwrap(),
        SpaceChoice::Sample(3)
    );
    assert_eq!(SpaceChoice::Sample(3).to_string(), "sample:3");
    for bad in ["sample:0", "sample:", "sample:x", "bench", ""] {
        let e = bad.parse::<SpaceChoice>().unwrap_err().to_string();
        assert!(e.contains("expected `benchmark` or `sample:N`"), "{e}");
    }
    let opts = NasOptions::default();
    let text = serde_json::to_string(&opts).unwrap();
    assert_eq!(serde_json::from_str::<NasOptions>(&text).unwrap(), opts);
    assert!(NasOptions {
        top: 0,
        ..NasOptions::default()
    }
    .check()
    .is_err());
    assert!(NasOptions {
        max_latency_ms: Some(-1.0),
        ..NasOptions::default()
    }
    .check()
    .is_err());
}
