//! Restarts: several independent GP runs on one fitness set, reported as one search.
//!
//! A single GP run is chaotic: the same fitness set and seed, with probe values that differ
//! only in the sixth digit, can end in a basin that generalises much worse (results/README.md,
//! "Restarts"). Running [`SearchOptions::restarts`] independent runs and keeping the one with
//! the best fitness makes the reported proxy depend less on one trajectory; the hall of fame
//! merges every run's (so the hall-of-fame ensemble draws on all of them).
//!
//! Restart 0 is seeded with the search's seed, so `restarts = 1` is exactly the plain search;
//! restart `r > 0` gets a seed derived from `(seed, r)` ([`restart_seed`]). With a run folder,
//! restart `r` writes its own complete run folder `restart_<r>/` inside it ([`restart_dir`])
//! and resumes from there, so an interrupted search continues restart by restart; the search
//! folder itself gets the merged `hall_of_fame.json` and the reported run's `curve.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use super::{
    checkpoint, run_with_inputs, rundir, FitnessData, HallOfFame, SearchOptions, SearchOutcome,
};
use crate::proxy::expr::Expr;
use crate::rng::Rng;

/// One restart's result, as the summary lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartResult {
    /// The seed its GP ran with.
    pub seed: u64,
    /// The fitness of its best proxy.
    pub fitness: f64,
    /// Its best proxy.
    pub best: Expr,
}

/// Label that separates restart seeds from other seeds derived from the search seed.
const RESTART_LABEL: u64 = 0x7265_7374_6172_7473; // "restarts"

/// The GP seed of restart `r` of a search seeded `seed`: `seed` itself for restart 0.
pub fn restart_seed(seed: u64, r: usize) -> u64 {
    if r == 0 {
        seed
    } else {
        Rng::derive(seed, &[RESTART_LABEL, r as u64]).next_u64()
    }
}

/// The run folder of restart `r` inside a search's folder `dir` (searches with more than one
/// restart).
pub fn restart_dir(dir: &Path, r: usize) -> PathBuf {
    dir.join(format!("restart_{r}"))
}

/// The options one restart runs with: the search's, with the restart's seed and one run.
pub fn restart_options(opts: &SearchOptions, r: usize) -> SearchOptions {
    SearchOptions {
        seed: restart_seed(opts.seed, r),
        restarts: 1,
        ..opts.clone()
    }
}

/// What each restart resumes from: for one restart, `resume` itself; for several, the
/// checkpoint in `resume/restart_<r>/` when it exists (a restart not begun starts afresh).
/// Errors when several restarts are asked and `resume` is not a folder.
pub fn resume_paths(opts: &SearchOptions, resume: Option<&Path>) -> Result<Vec<Option<PathBuf>>> {
    let Some(path) = resume else {
        return Ok(vec![None; opts.restarts]);
    };
    if opts.restarts == 1 {
        return Ok(vec![Some(path.to_path_buf())]);
    }
    if !path.is_dir() {
        bail!(
            "{}: a search with {} restarts resumes from its run folder (which holds \
             restart_0/ … restart_{}/), not from one checkpoint file",
            path.display(),
            opts.restarts,
            opts.restarts - 1
        );
    }
    Ok((0..opts.restarts)
        .map(|r| {
            let dir = restart_dir(path, r);
            checkpoint::resolve(&dir).is_file().then_some(dir)
        })
        .collect())
}

/// Runs `opts.restarts` GP runs on `fitness` (see the module docs) and returns the outcome
/// of the run with the best fitness (the first on ties), with the hall of fame merged over all
/// runs, the work counters summed, and every run's result in
/// [`SearchOutcome::restarts`]. `on_iteration` counts iterations across the runs
/// (`1 ..= restarts × iterations`). Arguments and errors as [`run_with_inputs`].
pub fn run_restarts(
    opts: &SearchOptions,
    fitness: &FitnessData<'_>,
    out_dir: Option<&Path>,
    resume: Option<&Path>,
    on_iteration: &dyn Fn(usize),
) -> Result<SearchOutcome> {
    opts.validate()?;
    if opts.restarts == 1 {
        return run_with_inputs(opts, fitness, out_dir, resume, on_iteration);
    }
    let resumes = resume_paths(opts, resume)?;
    let mut outcomes = Vec::with_capacity(opts.restarts);
    for (r, resume) in resumes.iter().enumerate() {
        let dir = out_dir.map(|d| restart_dir(d, r));
        let before = r * opts.iterations;
        let outcome = run_with_inputs(
            &restart_options(opts, r),
            fitness,
            dir.as_deref(),
            resume.as_deref(),
            &|i| on_iteration(before + i),
        )?;
        outcomes.push(outcome);
    }
    let merged = merge(outcomes, opts.hall_of_fame);
    if let Some(dir) = out_dir {
        // The search folder's own view: the merged hall of fame and the reported run's curve.
        rundir::write_hall_of_fame(&dir.join("hall_of_fame.json"), &merged.hall_of_fame)?;
        crate::report::write_atomic(&dir.join("curve.svg"), rundir::curve_svg(&merged.curve))?;
    }
    Ok(merged)
}

/// One outcome from several restarts' (in restart order, at least one): the best run's, with
/// the merged hall of fame (`capacity` entries), the counters summed and the restart list.
pub fn merge(outcomes: Vec<SearchOutcome>, capacity: usize) -> SearchOutcome {
    let chosen = outcomes.iter().enumerate().fold(0, |best, (r, o)| {
        if o.fitness_spearman > outcomes[best].fitness_spearman {
            r
        } else {
            best
        }
    });
    let mut hall = HallOfFame::new(capacity);
    for (r, o) in outcomes.iter().enumerate() {
        for e in &o.hall_of_fame {
            let mut e = e.clone();
            e.restart = r;
            hall.insert(e);
        }
    }
    let restarts: Vec<RestartResult> = outcomes
        .iter()
        .flat_map(|o| o.restarts.iter().cloned())
        .collect();
    let sum = |f: fn(&SearchOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let (candidates, evaluated, fully_evaluated, valid, arch_evaluations, rejected) = (
        sum(|o| o.candidates),
        sum(|o| o.evaluated),
        sum(|o| o.fully_evaluated),
        sum(|o| o.valid),
        sum(|o| o.arch_evaluations),
        sum(|o| o.rejected),
    );
    let saved = summed(outcomes.iter().map(|o| &o.saved_evaluations_by_rule));
    let seconds_saved = summed(outcomes.iter().map(|o| &o.seconds_saved_by_rule));
    let rejected_by_rule = summed(outcomes.iter().map(|o| &o.rejected_by_rule));
    let seconds = outcomes.iter().map(|o| o.seconds).sum();
    let resumed_from = outcomes.iter().find_map(|o| o.resumed_from);
    let memo = outcomes
        .iter()
        .fold(super::MemoStats::default(), |a, o| a + o.memo);
    let best = outcomes
        .into_iter()
        .nth(chosen)
        .expect("at least one restart");
    SearchOutcome {
        hall_of_fame: hall.entries().to_vec(),
        candidates,
        evaluated,
        fully_evaluated,
        valid,
        arch_evaluations,
        rejected,
        rejected_by_rule,
        saved_evaluations_by_rule: saved,
        seconds_saved_by_rule: seconds_saved,
        seconds,
        resumed_from,
        memo,
        restarts,
        chosen_restart: chosen,
        ..best
    }
}

/// The per-key sums of `maps` (a key missing from one map counts as zero there).
fn summed<'a, V: Copy + Default + std::ops::AddAssign + 'a>(
    maps: impl Iterator<Item = &'a BTreeMap<String, V>>,
) -> BTreeMap<String, V> {
    let mut total = BTreeMap::new();
    for map in maps {
        for (k, &v) in map {
            *total.entry(k.clone()).or_default() += v;
        }
    }
    total
}
