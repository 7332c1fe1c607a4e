//! LPZero's proxy search: genetic programming over proxy expressions (spec §4.5–4.7).
//!
//! The pieces, each readable alone:
//! * [`options`]: [`SearchOptions`] (defaults = the reference BERT search);
//! * [`structure`]: the proxy shapes ([`Structure`]), named by the options and the genomes;
//! * [`genome`]: representations per structure and their conversion to [`Expr`];
//! * [`variation`]: crossover and mutation;
//! * [`rps`]: the rule-based pruning strategy (named, counted, switchable rules);
//! * [`fitness`]: Spearman fitness over a set of probes, through the memo
//!   ([`crate::proxy::eval::Memo`]);
//! * [`hall_of_fame`]: the best distinct proxies;
//! * [`checkpoint`]: save/restore of the full state;
//! * [`restarts`]: several independent runs on one fitness set, the fittest reported;
//! * [`rundir`]: the run folder (config, log, curve, plots, hall of fame).
//!
//! # The loop ([`run`])
//!
//! 1. **Initial population**: random genomes until `population` of them are valid (the
//!    reference's admission rule); every candidate goes through the static rules (including
//!    `duplicate`, so the population starts without equivalent members) and the numeric rules.
//!    At most `population × init_attempts_per_member` candidates are tried; a configuration
//!    that cannot produce a population is an error, not an endless loop.
//! 2. **Iterations** `1 ..= iterations`, each:
//!    sort the population by fitness (best first; stable, so ties keep population order);
//!    draw two parents uniformly from the best `parent_pool()` (reference: the top half);
//!    the child is a copy of the first parent, crossed with the second with probability
//!    `p_crossover`, then mutated with probability `p_mutation` (by one operator picked by the
//!    mutation weights, [`variation::MutationWeights`]; if neither fires the child is a
//!    copy, as in the reference; the `duplicate` rule then rejects it without evaluation);
//!    the RPS filters it (static rules, then numeric and predictive rules during evaluation);
//!    a valid child replaces the worst member (unconditionally, as in the reference), a
//!    rejected child is discarded (the reference inserted it with fitness −1, which selection
//!    removed again; discarding keeps the population full of valid members);
//!    the best and median fitness are recorded (the curve), and a line is logged.
//! 3. The result is the best member of the final population ([`SearchOutcome`]).
//!
//! All randomness comes from one [`Rng`] seeded with `seed`, and nothing that affects results
//! depends on hash-map order, timing or the memo, so a run is a pure function of its options and
//! fitness set, and a run resumed from a checkpoint ends exactly like an uninterrupted one.
//!
//! Deviation from the reference: the GPT-2 reference drew a fresh random subset of
//! architectures for every fitness call; here the fitness set is fixed (and values are cached),
//! which is what makes fitness deterministic.

pub mod budget;
pub mod checkpoint;
pub mod fitness;
pub mod genome;
pub mod hall_of_fame;
pub mod options;
pub mod pipeline;
pub mod restarts;
pub mod rps;
pub mod rundir;
pub mod structure;
pub mod summary;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
pub mod variation;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::proxy::canonical::canonical;
use crate::proxy::eval::InputSource;
use crate::proxy::eval::{Memo, MemoStats};
use crate::proxy::expr::Expr;
use crate::proxy::ops::UnaryOp;
use crate::rng::Rng;
use crate::stats::median;

pub use fitness::{Evaluation, FitnessSet};
pub use genome::{Genome, GenomeSpec};
pub use hall_of_fame::{HallEntry, HallOfFame};
pub use options::{FitnessMeasure, SearchOptions, Structure};
pub use restarts::run_restarts;
pub use rps::{PredictiveThreshold, RpsOptions, Rule, RuleCounts, StaticContext};
pub use rundir::{curve_svg, IterationLog, RunDir};

/// A member of the population: a valid proxy with its fitness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Its genome.
    pub genome: Genome,
    /// Its expression as reported: the genome's expression, or `neg(…)` of it when
    /// `negated` (serialised as its text).
    pub expr: Expr,
    /// Its canonical key.
    pub key: String,
    /// Its fitness (over the fitness set, under the search's measure).
    pub fitness: f64,
    /// The iteration that produced it (0: the initial population).
    pub born: usize,
    /// The genome's expression ranks backwards and is reported negated (only with
    /// `either_sign`).
    #[serde(default)]
    pub negated: bool,
}

/// Best and median population fitness after one iteration (iteration 0: initial population).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The iteration.
    pub iteration: usize,
    /// Best fitness in the population.
    pub best: f64,
    /// Median fitness of the population.
    pub median: f64,
}

/// Work counters of a search (all deterministic except the timing pair).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Candidates generated (initial population attempts and children).
    pub candidates: u64,
    /// Candidates that passed the static rules and were evaluated on at least one architecture.
    pub evaluated: u64,
    /// Candidates evaluated on every architecture of the fitness set.
    pub fully_evaluated: u64,
    /// Candidates that got a fitness.
    pub valid: u64,
    /// (candidate, architecture) evaluations performed.
    pub arch_evaluations: u64,
    /// Rejections and avoided architecture evaluations per rule.
    pub rules: RuleCounts,
    /// Complete evaluations whose time was measured (for the time-saved estimate).
    pub timed_full_evaluations: u64,
    /// Their total wall-clock seconds (not deterministic).
    pub timed_full_seconds: f64,
}

impl Counters {
    /// Mean seconds of one complete evaluation (0 when none was timed).
    pub fn mean_full_seconds(&self) -> f64 {
        if self.timed_full_evaluations == 0 {
            0.0
        } else {
            self.timed_full_seconds / self.timed_full_evaluations as f64
        }
    }
}

/// Everything a search needs to continue: what a checkpoint holds.
#[derive(Debug, Clone)]
pub struct SearchState {
    /// Iterations completed (0 after the initial population).
    pub iteration: usize,
    /// The RNG, positioned after the last completed iteration.
    pub rng: Rng,
    /// The population (valid members only).
    pub population: Vec<Member>,
    /// The best distinct proxies so far.
    pub hall_of_fame: HallOfFame,
    /// Canonical keys evaluated or rejected so far (the `duplicate` rule).
    pub seen: BTreeSet<String>,
    /// Work counters.
    pub counters: Counters,
    /// Best and median fitness per iteration so far.
    pub curve: Vec<CurvePoint>,
    /// Wall-clock seconds spent by this run and the runs it was resumed from.
    pub elapsed_seconds: f64,
}

/// The result of a search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchOutcome {
    /// The best proxy of the final population.
    pub best: Expr,
    /// Its canonical key.
    pub best_key: String,
    /// Its genome.
    pub best_genome: Genome,
    /// Its fitness: the Spearman correlation with the ground truth on the fitness set.
    pub fitness_spearman: f64,
    /// The best distinct proxies seen, best first.
    pub hall_of_fame: Vec<HallEntry>,
    /// Best and median fitness per iteration (iteration 0: the initial population).
    pub curve: Vec<CurvePoint>,
    /// The final population, best first.
    pub population: Vec<Member>,
    /// Iterations completed.
    pub iterations: usize,
    /// Number of fitness architectures.
    pub fitness_archs: usize,
    /// Candidates generated.
    pub candidates: u64,
    /// Candidates evaluated on at least one architecture (passed the static rules).
    pub evaluated: u64,
    /// Candidates evaluated on every fitness architecture.
    pub fully_evaluated: u64,
    /// Candidates that got a fitness.
    pub valid: u64,
    /// (candidate, architecture) evaluations performed.
    pub arch_evaluations: u64,
    /// Candidates rejected (sum over rules).
    pub rejected: u64,
    /// Rejections per rule name (every rule listed).
    pub rejected_by_rule: BTreeMap<String, u64>,
    /// Avoided work per rule, in complete evaluations of a candidate.
    pub saved_evaluations_by_rule: BTreeMap<String, f64>,
    /// Estimated seconds saved per rule (avoided evaluations × mean complete-evaluation time).
    pub seconds_saved_by_rule: BTreeMap<String, f64>,
    /// Mean seconds of one complete evaluation measured in this run.
    pub mean_evaluation_seconds: f64,
    /// Wall-clock seconds of the search (including the runs it was resumed from).
    pub seconds: f64,
    /// The iteration this run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Memo counters of this process (a resumed run starts with an empty memo).
    pub memo: MemoStats,
    /// Every restart's seed, fitness and best proxy ([`SearchOptions::restarts`]; one entry
    /// for a single run).
    pub restarts: Vec<restarts::RestartResult>,
    /// The restart whose best proxy is reported (the best fitness; the first on ties).
    pub chosen_restart: usize,
}

impl SearchOutcome {
    /// The part of the outcome that is a pure function of the options and the fitness set (no
    /// timing, no memo counters, no resume marker): equal for equal seeds, and for a resumed
    /// and an uninterrupted run.
    pub fn reproducible_summary(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("outcome serialises");
        if let Some(map) = v.as_object_mut() {
            for k in [
                "seconds_saved_by_rule",
                "mean_evaluation_seconds",
                "seconds",
                "resumed_from",
                "memo",
            ] {
                map.remove(k);
            }
        }
        v
    }
}

/// A candidate after the RPS and evaluation.
struct Considered {
    expr: Expr,
    key: String,
    genome: Genome,
    evaluation: Option<Evaluation>,
    rule: Option<Rule>,
}

impl Considered {
    fn fitness(&self) -> Option<f64> {
        self.evaluation.as_ref().and_then(|e| e.fitness)
    }

    fn negated(&self) -> bool {
        self.evaluation.as_ref().is_some_and(|e| e.negated)
    }
}

/// The running search: options, fitness set, static context, memo and state.
struct Search<'a> {
    opts: &'a SearchOptions,
    set: FitnessSet<'a>,
    ctx: StaticContext,
    /// One memo per evaluation thread (see [`FitnessSet::evaluate`]).
    memos: Vec<Memo>,
    state: SearchState,
}

impl Search<'_> {
    /// Runs one candidate through the static rules and, if it passes, the evaluation with the
    /// numeric rules; updates counters, the seen set and the hall of fame.
    fn consider(&mut self, genome: Genome, threshold: Option<f64>, iteration: usize) -> Considered {
        let n = self.set.len() as u64;
        let c = &mut self.state.counters;
        c.candidates += 1;
        let expr = genome.to_expr();
        let canon = canonical(&expr);
        let key = canon.to_string();
        let seen = !self.state.seen.insert(key.clone());
        if let Some(rule) = rps::static_check(&canon, seen, &self.ctx, &self.opts.rps) {
            c.rules.record(rule, n);
            return Considered {
                expr,
                key,
                genome,
                evaluation: None,
                rule: Some(rule),
            };
        }
        c.evaluated += 1;
        let mut ev = self
            .set
            .evaluate(&canon, &mut self.memos, &self.opts.rps, threshold);
        if self.opts.parsimony > 0.0 {
            let penalty = self.opts.parsimony * canon.size() as f64;
            ev.fitness = ev.fitness.map(|f| f - penalty);
        }
        c.arch_evaluations += ev.archs_evaluated as u64;
        if ev.archs_evaluated as u64 == n {
            c.fully_evaluated += 1;
            c.timed_full_evaluations += 1;
            c.timed_full_seconds += ev.seconds;
        }
        // A backward proxy found under `either_sign` is reported as its negation.
        let (expr, key) = if ev.negated {
            let e = Expr::unary(UnaryOp::Neg, expr);
            let k = canonical(&e).to_string();
            (e, k)
        } else {
            (expr, key)
        };
        match ev.rule {
            Some(rule) => c.rules.record(rule, n - ev.archs_evaluated as u64),
            None => {
                c.valid += 1;
                if let Some(f) = ev.fitness {
                    self.state.hall_of_fame.insert(HallEntry {
                        expr: expr.clone(),
                        key: key.clone(),
                        fitness: f,
                        iteration,
                        ranking: ev.ranking,
                        negated: ev.negated,
                        restart: 0,
                    });
                }
            }
        }
        let rule = ev.rule;
        Considered {
            expr,
            key,
            genome,
            evaluation: Some(ev),
            rule,
        }
    }

    /// Fills the population with valid random individuals (see the module docs).
    fn initialize(&mut self) -> Result<()> {
        let spec = self.opts.genome_spec();
        let max_attempts = self
            .opts
            .population
            .saturating_mul(self.opts.init_attempts_per_member);
        let mut attempts = 0usize;
        while self.state.population.len() < self.opts.population {
            if attempts >= max_attempts {
                let rules: Vec<String> = self
                    .state
                    .counters
                    .rules
                    .rejected
                    .iter()
                    .map(|(r, c)| format!("{r}: {c}"))
                    .collect();
                bail!(
                    "could not build an initial population: {} valid of {attempts} candidates \
                     (need {}); rejections: {}",
                    self.state.population.len(),
                    self.opts.population,
                    rules.join(", ")
                );
            }
            attempts += 1;
            let genome = Genome::random(&spec, &mut self.state.rng);
            let c = self.consider(genome, None, 0);
            if let Some(f) = c.fitness() {
                let negated = c.negated();
                self.state.population.push(Member {
                    genome: c.genome,
                    expr: c.expr,
                    key: c.key,
                    fitness: f,
                    born: 0,
                    negated,
                });
            }
        }
        let point = self.curve_point(0);
        self.state.curve.push(point);
        Ok(())
    }

    /// Population indices, best first (stable: ties keep population order).
    fn order(&self) -> Vec<usize> {
        let pop = &self.state.population;
        let mut idx: Vec<usize> = (0..pop.len()).collect();
        idx.sort_by(|&a, &b| pop[b].fitness.total_cmp(&pop[a].fitness));
        idx
    }

    /// Best and median fitness of the current population.
    fn curve_point(&self, iteration: usize) -> CurvePoint {
        let f: Vec<f64> = self.state.population.iter().map(|m| m.fitness).collect();
        CurvePoint {
            iteration,
            best: f.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median: median(&f),
        }
    }

    /// One GP iteration (see the module docs); returns its log line.
    fn step(&mut self) -> Result<IterationLog> {
        let iteration = self.state.iteration + 1;
        let spec = self.opts.genome_spec();
        let order = self.order();
        let pool = self.opts.parent_pool().min(order.len());
        let rng = &mut self.state.rng;
        let a = order[rng.range(0, pool)];
        let b = order[rng.range(0, pool)];
        let pop = &self.state.population;
        let mut child = pop[a].genome.clone();
        let crossover = rng.bernoulli(self.opts.p_crossover);
        if crossover {
            child = variation::crossover(&child, &pop[b].genome, &spec, rng)?;
        }
        let mutation = rng.bernoulli(self.opts.p_mutation);
        if mutation {
            child = variation::mutate(&child, &spec, &self.opts.mutation, rng);
        }
        let fitnesses: Vec<f64> = pop.iter().map(|m| m.fitness).collect();
        let threshold = self.opts.rps.predictive_threshold(&fitnesses);
        let c = self.consider(child, threshold, iteration);
        let child_fitness = c.fitness();
        let archs_evaluated = c.evaluation.as_ref().map_or(0, |e| e.archs_evaluated);
        let (child_text, child_key) = (c.expr.to_string(), c.key.clone());
        if let Some(f) = child_fitness {
            let worst = *order.last().expect("population is not empty");
            let negated = c.negated();
            self.state.population[worst] = Member {
                genome: c.genome,
                expr: c.expr,
                key: c.key,
                fitness: f,
                born: iteration,
                negated,
            };
        }
        self.state.iteration = iteration;
        let point = self.curve_point(iteration);
        self.state.curve.push(point);
        Ok(IterationLog {
            iteration,
            best: point.best,
            median: point.median,
            child: child_text,
            child_key,
            child_fitness,
            rules_fired: c.rule.iter().map(|r| r.name().to_string()).collect(),
            archs_evaluated,
            crossover,
            mutation,
            replaced_worst: child_fitness.is_some(),
        })
    }

    /// The outcome of the search in its current state.
    fn outcome(&self, resumed_from: Option<usize>) -> SearchOutcome {
        let order = self.order();
        let population: Vec<Member> = order
            .iter()
            .map(|&i| self.state.population[i].clone())
            .collect();
        let best = &population[0];
        let c = &self.state.counters;
        let n = self.set.len();
        SearchOutcome {
            // The member's text, which holds the `neg` of a backward proxy (see `consider`).
            best: best.expr.clone(),
            best_key: best.key.clone(),
            best_genome: best.genome.clone(),
            fitness_spearman: best.fitness,
            hall_of_fame: self.state.hall_of_fame.entries().to_vec(),
            curve: self.state.curve.clone(),
            iterations: self.state.iteration,
            fitness_archs: n,
            candidates: c.candidates,
            evaluated: c.evaluated,
            fully_evaluated: c.fully_evaluated,
            valid: c.valid,
            arch_evaluations: c.arch_evaluations,
            rejected: c.rules.total(),
            rejected_by_rule: c.rules.rejected_by_name(),
            saved_evaluations_by_rule: c.rules.saved_evaluations_by_name(n),
            seconds_saved_by_rule: c.rules.seconds_saved_by_name(n, c.mean_full_seconds()),
            mean_evaluation_seconds: c.mean_full_seconds(),
            seconds: self.state.elapsed_seconds,
            resumed_from,
            memo: self
                .memos
                .iter()
                .map(Memo::stats)
                .fold(MemoStats::default(), |a, b| a + b),
            restarts: vec![restarts::RestartResult {
                seed: self.opts.seed,
                fitness: best.fitness,
                best: best.expr.clone(),
            }],
            chosen_restart: 0,
            population,
        }
    }
}

/// Runs a proxy search (see the module docs for the loop).
///
/// * `opts`: the options (validated first).
/// * `fitness_probes`, `fitness_truth`: the fitness set: one input source per architecture and
///   its ground truth, higher = better (negate lower-is-better quantities such as perplexity).
///   The static rules read input ranks from `fitness_probes[0]`.
/// * `out_dir`: when given, the run folder to write ([`rundir`]): config, per-iteration log,
///   hall of fame, curve (CSV and SVG), and `checkpoint.json` every `checkpoint_every`
///   iterations and at the end.
/// * `resume`: a checkpoint file or a run folder holding one; the search continues from it up to
///   `opts.iterations`. Its options must equal `opts` except for the result-neutral ones
///   (`iterations`, `checkpoint_every`, `init_attempts_per_member`, `memo_budget_bytes`), and its
///   ground truth must equal `fitness_truth`.
/// * `on_iteration`: called after every completed iteration with its number (1-based), e.g. to
///   advance a progress bar.
///
/// Errors: invalid options or fitness set, an incompatible, inconsistent or unreadable
/// checkpoint, an initial population that cannot be filled, or a file that cannot be written.
pub fn run(
    opts: &SearchOptions,
    fitness_probes: &[&dyn InputSource],
    fitness_truth: &[f64],
    out_dir: Option<&Path>,
    resume: Option<&Path>,
    on_iteration: &dyn Fn(usize),
) -> Result<SearchOutcome> {
    let fitness = FitnessData {
        probes: fitness_probes,
        truth: fitness_truth,
        settings: &serde_json::Value::Null,
        companion: None,
    };
    run_with_inputs(opts, &fitness, out_dir, resume, on_iteration)
}

/// The fitness set of a search with a description of how its inputs were made.
pub struct FitnessData<'a> {
    /// One input source per fitness architecture.
    pub probes: &'a [&'a dyn InputSource],
    /// Their ground truth, higher = better.
    pub truth: &'a [f64],
    /// How the inputs were made (for a benchmark, the probe settings of
    /// [`crate::models::Family::settings`]; `null` when unknown): checkpoints record it
    /// and a resume must match it, so a run never mixes inputs made in different ways.
    pub settings: &'a serde_json::Value,
    /// Companion columns for a complement search ([`SearchOptions::complement`]): per column
    /// one higher-is-better value per fitness architecture. Ignored by a plain search.
    pub companion: Option<&'a [Vec<f64>]>,
}

/// [`run`] on a fitness set whose inputs are described ([`FitnessData::settings`]): a resume
/// is refused when the checkpoint's inputs were made with other settings.
pub fn run_with_inputs(
    opts: &SearchOptions,
    fitness: &FitnessData<'_>,
    out_dir: Option<&Path>,
    resume: Option<&Path>,
    on_iteration: &dyn Fn(usize),
) -> Result<SearchOutcome> {
    let (fitness_probes, fitness_truth, inputs) = (fitness.probes, fitness.truth, fitness.settings);
    let started = Instant::now();
    opts.validate()?;
    let mut set = FitnessSet::new(fitness_probes, fitness_truth)?
        .with_either_sign(opts.either_sign)
        .with_measure(opts.fitness);
    if opts.complement {
        match fitness.companion {
            Some(columns) if !columns.is_empty() => set = set.with_companion(columns)?,
            _ => bail!(
                "a complement search needs companion columns on its fitness set (a benchmark \
                 search uses the pair ensemble's two baselines)"
            ),
        }
    }
    let ctx = StaticContext::from_source(fitness_probes[0]);
    let (state, resumed_from) = match resume {
        Some(path) => {
            let ck = checkpoint::load(path)?;
            ck.check_compatible(opts, inputs, fitness_truth)?;
            let at = ck.state.iteration;
            (ck.state, Some(at))
        }
        None => (
            SearchState {
                iteration: 0,
                rng: Rng::new(opts.seed),
                population: Vec::new(),
                hall_of_fame: HallOfFame::new(opts.hall_of_fame),
                seen: BTreeSet::new(),
                counters: Counters::default(),
                curve: Vec::new(),
                elapsed_seconds: 0.0,
            },
            None,
        ),
    };
    let previous_seconds = state.elapsed_seconds;
    let mut search = Search {
        opts,
        set,
        ctx,
        memos: (0..opts.threads)
            .map(|_| Memo::with_budget(opts.memo_budget_bytes / opts.threads as u64))
            .collect(),
        state,
    };
    let mut dir = match out_dir {
        Some(d) => Some(RunDir::create(d, opts, inputs, resumed_from)?),
        None => None,
    };
    if search.state.population.len() < opts.population {
        search.initialize()?;
    }
    while search.state.iteration < opts.iterations {
        let record = search.step()?;
        if let Some(d) = dir.as_mut() {
            d.log(&record)?;
            if opts.checkpoint_every > 0 && record.iteration.is_multiple_of(opts.checkpoint_every) {
                search.state.elapsed_seconds = previous_seconds + started.elapsed().as_secs_f64();
                d.save(opts, fitness_truth, &search.state, true)?;
            }
        }
        on_iteration(record.iteration);
    }
    search.state.elapsed_seconds = previous_seconds + started.elapsed().as_secs_f64();
    if let Some(d) = dir.as_mut() {
        d.save(opts, fitness_truth, &search.state, true)?;
    }
    Ok(search.outcome(resumed_from))
}
