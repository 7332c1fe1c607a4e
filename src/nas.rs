//! Architecture search with a proxy (`lpzero nas`): rank a benchmark's architectures, or new
//! ones drawn from the family's design space ([`crate::bench::space`]), by one proxy under a
//! parameter and latency budget; optionally evolve the best for some generations; report the
//! top K (in the benchmark's own format, ready to train) and the Pareto front of proxy score
//! against parameters or latency.
//!
//! The steps, each usable on its own (a sharded run scores between [`prepare`] and
//! [`finish`] on other processes, and `lpzero merge` finishes it):
//!
//! 1. [`prepare`]: the pool of candidates (the benchmark, or a seeded [`Sampling`]), their
//!    parameter counts (from the built models' shapes) and the selection to score: those
//!    within `max_params` (the others are never probed).
//! 2. Values: [`Pool::score`] probes the selection with the proxy, or
//!    [`Pool::apply_values`] takes them from a score table (`--scores`) or a merged shard run.
//! 3. [`Pool::evolve`]: per generation, mutants of the best candidates
//!    ([`crate::bench::space::DesignSpace::mutate`]), new ones only, counted and scored.
//! 4. [`finish`]: latency measured (CPU inference, median of repeats; for every candidate in
//!    budget when `max_latency_ms` or the latency axis needs it, else for the top K and the
//!    front), ranking of the eligible candidates, the top K and the front.
//!
//! [`validate`] measures, where the ground truth is known, what picking by a proxy under a
//! parameter budget costs against the best architecture within it and against picking by
//! parameters.
//!
//! Everything is deterministic given the seed: sampling and mutation streams derive from it,
//! and a candidate's probe depends only on its position in the pool. Latency is a measurement
//! and varies from run to run; it decides eligibility only under `max_latency_ms`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bench::space::{Chosen, Sampling, SpaceOptions};
use crate::bench::{Benchmark, Entry};
use crate::models;
use crate::probe::ProbeOptions;
use crate::proxy::builtin::Orientation;
use crate::report::{self, clip, csv_number, json_number};
use crate::rng::Rng;
use crate::scoring::{self, Proxy};
use crate::stats;

/// Timed forward passes per latency measurement (after one warm-up pass).
pub const LATENCY_REPEATS: usize = 5;
/// Mutants made per generation of `--evolve`.
pub const CHILDREN: usize = 16;
/// Architectures reported as the top.
pub const TOP: usize = 10;
/// Tries per child to find a mutant that is new and within the parameter budget.
const MUTATION_TRIES: usize = 20;
/// Label of the mutation stream (derived from the seed and the generation).
const EVOLVE_STREAM: u64 = 0x6e61_735f_6576_6f6c;

/// Which architectures `lpzero nas` starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceChoice {
    /// The benchmark's own architectures.
    Benchmark,
    /// This many new architectures drawn from the family's design space.
    Sample(usize),
}

impl fmt::Display for SpaceChoice {
    /// `benchmark` or `sample:N`, the form [`SpaceChoice::from_str`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpaceChoice::Benchmark => f.write_str("benchmark"),
            SpaceChoice::Sample(n) => write!(f, "sample:{n}"),
        }
    }
}

impl FromStr for SpaceChoice {
    type Err = anyhow::Error;

    /// Reads `benchmark` or `sample:N` (N ≥ 1).
    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        if text == "benchmark" {
            return Ok(SpaceChoice::Benchmark);
        }
        let n = text
            .strip_prefix("sample:")
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|&n| n >= 1);
        match n {
            Some(n) => Ok(SpaceChoice::Sample(n)),
            None => bail!(
                "`{}`: expected `benchmark` or `sample:N` with N ≥ 1 (e.g. sample:200)",
                clip(text)
            ),
        }
    }
}

impl Serialize for SpaceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SpaceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The cost axis of the Pareto front.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostAxis {
    /// Total parameters.
    #[default]
    Params,
    /// Measured CPU inference latency (measured for every candidate within budget).
    Latency,
}

impl CostAxis {
    /// The cost of a candidate on this axis (NaN for a latency not measured).
    pub fn cost(self, c: &Candidate) -> f64 {
        match self {
            CostAxis::Params => c.params as f64,
            CostAxis::Latency => c.latency_ms.unwrap_or(f64::NAN),
        }
    }
}

/// What `lpzero nas` does, besides the proxy and the probe settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NasOptions {
    /// Where the candidates come from.
    pub space: SpaceChoice,
    /// Generations of mutation after the initial pool (0: none).
    pub evolve: usize,
    /// Mutants per generation.
    pub children: usize,
    /// Architectures to report as the top.
    pub top: usize,
    /// Most total parameters a candidate may have.
    pub max_params: Option<usize>,
    /// Most median latency, in milliseconds, a candidate may have.
    pub max_latency_ms: Option<f64>,
    /// The cost axis of the Pareto front.
    pub pareto: CostAxis,
    /// Timed forward passes per latency measurement.
    pub repeats: usize,
    /// Options of the design space (sampling and mutation).
    pub space_opts: SpaceOptions,
}

impl Default for NasOptions {
    fn default() -> Self {
        Self {
            space: SpaceChoice::Benchmark,
            evolve: 0,
            children: CHILDREN,
            top: TOP,
            max_params: None,
            max_latency_ms: None,
            pareto: CostAxis::Params,
            repeats: LATENCY_REPEATS,
            space_opts: SpaceOptions::default(),
        }
    }
}

impl NasOptions {
    /// Checks the options: a top and a repeat count of at least 1, children when evolving, a
    /// positive finite latency budget, and the space options.
    pub fn check(&self) -> Result<()> {
        if self.top == 0 {
            bail!("top 0: expected at least 1 architecture to report");
        }
        if self.repeats == 0 {
            bail!("0 latency repeats: expected at least 1 timed pass");
        }
        if self.evolve > 0 && self.children == 0 {
            bail!("0 children per generation: expected at least 1 to evolve");
        }
        if let Some(ms) = self.max_latency_ms {
            if !(ms.is_finite() && ms > 0.0) {
                bail!("latency budget {ms} ms: expected a positive number of milliseconds");
            }
        }
        self.space_opts.check()
    }

    /// True when every candidate within the parameter budget needs its latency (a latency
    /// budget, or the latency axis).
    pub fn latency_for_all(&self) -> bool {
        self.max_latency_ms.is_some() || self.pareto == CostAxis::Latency
    }
}

/// One architecture the search considered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// Its key: the benchmark's, `s<i>` for a sampled one, `g<gen>_<i>` for a mutant.
    pub key: String,
    /// Its position in the pool (the probe's index).
    pub index: usize,
    /// The generation that made it (0: the initial pool).
    pub generation: usize,
    /// Total parameters.
    pub params: usize,
    /// Median CPU inference latency in milliseconds, when measured.
    pub latency_ms: Option<f64>,
    /// The proxy's value, when scored (candidates over the parameter budget are not).
    pub value: Option<f64>,
    /// The value oriented so that higher is better (NaN when not scored or not finite).
    pub score: f64,
    /// The ground truth (oriented, higher is better), when the benchmark has one.
    pub truth: Option<f64>,
}

impl Candidate {
    /// True when the candidate is within the budgets of `opts` and has a finite score (a
    /// candidate without a latency counts as within a latency budget only when none is set).
    pub fn eligible(&self, opts: &NasOptions) -> bool {
        self.score.is_finite()
            && opts.max_params.is_none_or(|m| self.params <= m)
            && opts
                .max_latency_ms
                .is_none_or(|m| self.latency_ms.is_some_and(|l| l <= m))
    }
}

/// The candidates of a search and the pool of architectures they are (see [`prepare`]).
pub struct Pool {
    /// The architectures, in pool order: the initial ones, then each generation's mutants.
    pub bench: Benchmark,
    /// One candidate per architecture, parallel to `bench.entries`.
    pub candidates: Vec<Candidate>,
    /// The draw that made the initial pool, for `--space sample:N`.
    pub sampling: Option<Sampling>,
    /// The proxy's orientation.
    orientation: Orientation,
    /// Seconds spent probing and computing the proxy.
    pub score_seconds: f64,
}

/// The pool's initial architectures for `opts.space` (the benchmark itself, or a draw seeded
/// by `seed` from the family's design space), counted, with the selection to score (the
/// positions within the parameter budget, in pool order). `orientation` is the ranking
/// proxy's (a score table's `rank_sum` column is higher-is-better).
pub fn prepare(
    base: &Benchmark,
    orientation: Orientation,
    probe: &ProbeOptions,
    opts: &NasOptions,
) -> Result<(Pool, Vec<usize>)> {
    opts.check()?;
    // Every pool is written out through the design space, so a family without one stops here.
    models::family(base.kind).design_space()?;
    let (bench, sampling) = match opts.space {
        SpaceChoice::Benchmark => (base.clone(), None),
        SpaceChoice::Sample(n) => {
            let sampling = Sampling {
                n,
                seed: probe.seed,
                opts: opts.space_opts.clone(),
            };
            let family = models::family(base.kind);
            (sampling.draw(family.design_space()?)?, Some(sampling))
        }
    };
    pool_of(bench, sampling, orientation, probe, opts)
}

/// [`prepare`] on a pool already made (a merge loads it again from the shards' header).
pub fn pool_of(
    bench: Benchmark,
    sampling: Option<Sampling>,
    orientation: Orientation,
    probe: &ProbeOptions,
    opts: &NasOptions,
) -> Result<(Pool, Vec<usize>)> {
    let all: Vec<usize> = (0..bench.len()).collect();
    let counts = crate::params::count(&bench, &all, probe.sizes)?;
    let has_truth = bench.has_truth();
    let candidates = bench
        .entries
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(index, (e, (_, params)))| Candidate {
            key: e.key.clone(),
            index,
            generation: 0,
            params,
            latency_ms: None,
            value: None,
            score: f64::NAN,
            truth: has_truth.then_some(e.truth),
        })
        .collect::<Vec<_>>();
    let selection = candidates
        .iter()
        .filter(|c| opts.max_params.is_none_or(|m| c.params <= m))
        .map(|c| c.index)
        .collect();
    let pool = Pool {
        bench,
        candidates,
        sampling,
        orientation,
        score_seconds: 0.0,
    };
    Ok((pool, selection))
}

/// Proxy values read from a score table (`lpzero score --out`, `baselines.csv`): one column,
/// by architecture key.
pub struct ScoreColumn {
    /// The file, for messages.
    pub file: String,
    /// The column.
    pub column: String,
    /// Value by key.
    pub values: HashMap<String, f64>,
}

impl ScoreColumn {
    /// Reads the column `column` of the CSV at `path` (an `id` column keys the rows; numbers
    /// as [`crate::report::csv_number`] writes them).
    pub fn read(path: &Path, column: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let rows = report::parse_csv(&text).with_context(|| format!("{}", path.display()))?;
        let Some((header, rows)) = rows.split_first() else {
            bail!("{}: empty; expected a CSV score table", path.display());
        };
        let find = |name: &str| header.iter().position(|h| h == name);
        let id = find("id").with_context(|| {
            format!("{}: no `id` column; expected a score table", path.display())
        })?;
        let col = find(column).with_context(|| {
            format!(
                "{}: no column `{}`; its columns: {}",
                path.display(),
                clip(column),
                clip(&header.join(", "))
            )
        })?;
        let mut values = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let (Some(key), Some(cell)) = (row.get(id), row.get(col)) else {
                bail!(
                    "{}: line {}: {} field(s), expected {}",
                    path.display(),
                    i + 2,
                    row.len(),
                    header.len()
                );
            };
            let value = cell.trim().parse::<f64>().map_err(|_| {
                anyhow!(
                    "{}: line {}, column `{}`: `{}` is not a number",
                    path.display(),
                    i + 2,
                    clip(column),
                    clip(cell)
                )
            })?;
            values.insert(key.clone(), value);
        }
        Ok(Self {
            file: path.display().to_string(),
            column: column.to_string(),
            values,
        })
    }

    /// The values of `keys`, in order; fails on the first key the table lacks.
    pub fn lookup<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Result<Vec<f64>> {
        keys.map(|k| {
            self.values.get(k).copied().with_context(|| {
                format!(
                    "{}: no row for architecture `{}` (column `{}`)",
                    self.file,
                    clip(k),
                    clip(&self.column)
                )
            })
        })
        .collect()
    }
}

/// How a pool gets the proxy's values of new candidates.
pub enum Scorer<'a> {
    /// Probe them.
    Probe {
        /// The proxy.
        proxy: &'a Proxy,
        /// The probe settings.
        probe: &'a ProbeOptions,
        /// Worker threads.
        threads: usize,
        /// A memory budget the probes take turns within (`None`: only probing's own limit;
        /// see [`scoring::Job::turns`]).
        turns: Option<crate::probe::memory::MemoryLimit>,
    },
    /// Read them from a score table.
    Table(&'a ScoreColumn),
}

impl Pool {
    /// Sets the values of the candidates at `selection` (pool positions), parallel to
    /// `values`.
    pub fn apply_values(&mut self, selection: &[usize], values: &[f64]) {
        let sign = self.orientation.sign();
        for (&i, &v) in selection.iter().zip(values) {
            let c = &mut self.candidates[i];
            c.value = Some(v);
            c.score = if v.is_finite() { sign * v } else { f64::NAN };
        }
    }

    /// Scores the candidates at `selection` with `scorer`; `on_done` after each one.
    pub fn score(
        &mut self,
        selection: &[usize],
        scorer: &Scorer,
        on_done: impl Fn() + Sync,
    ) -> Result<()> {
        if selection.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let values = match scorer {
            Scorer::Probe {
                proxy,
                probe,
                threads,
                turns,
            } => {
                let proxies = [Proxy::parse(&proxy.name())?];
                let table = scoring::Job::new(&self.bench, selection, &proxies, probe, *threads)
                    .within(*turns)
                    .score(on_done)?;
                table.values.into_iter().next().unwrap_or_default()
            }
            Scorer::Table(column) => {
                let keys = selection
                    .iter()
                    .map(|&i| self.bench.entries[i].key.as_str());
                column.lookup(keys)?
            }
        };
        self.apply_values(selection, &values);
        self.score_seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    /// Positions of the eligible candidates ([`Candidate::eligible`]), best first (ties in
    /// pool order).
    pub fn ranked(&self, opts: &NasOptions) -> Vec<usize> {
        let mut eligible: Vec<usize> = self
            .candidates
            .iter()
            .filter(|c| c.eligible(opts))
            .map(|c| c.index)
            .collect();
        eligible.sort_by(|&a, &b| {
            let (x, y) = (&self.candidates[a], &self.candidates[b]);
            y.score.total_cmp(&x.score).then(a.cmp(&b))
        });
        eligible
    }

    /// `--evolve`: for each of `opts.evolve` generations, `opts.children` mutants of the best
    /// `opts.top` eligible candidates (parents taken in turn), each new to the pool (compared
    /// by its bench-file config) and within the parameter budget (up to a few tries per
    /// child; a child with none is skipped), then scored with `scorer` (and timed when the
    /// latency budget needs it). The mutation stream of generation `g` derives from `seed`
    /// and `g`. `on_generation` is called after each generation with its number and the
    /// best score so far.
    pub fn evolve(
        &mut self,
        opts: &NasOptions,
        seed: u64,
        scorer: &Scorer,
        probe: &ProbeOptions,
        on_generation: &dyn Fn(usize, f64),
    ) -> Result<()> {
        let space = models::family(self.bench.kind).design_space()?;
        let mut seen: HashSet<String> = HashSet::new();
        for e in &self.bench.entries {
            seen.insert(space.config(&e.arch)?.to_string());
        }
        for generation in 1..=opts.evolve {
            if opts.max_latency_ms.is_some() {
                let all = self.scored_within_params(opts);
                self.measure_latency(&all, probe, opts.repeats, &|_, _| {})?;
            }
            let parents: Vec<usize> = self.ranked(opts).into_iter().take(opts.top).collect();
            if parents.is_empty() {
                bail!(
                    "generation {generation}: no candidate is eligible to mutate (none within \
                     the budgets with a finite proxy value)"
                );
            }
            let mut rng = Rng::derive(seed, &[EVOLVE_STREAM, generation as u64]);
            let mut new = Vec::new();
            for child in 0..opts.children {
                let parent = self.bench.entries[parents[child % parents.len()]]
                    .arch
                    .clone();
                let index = self.bench.len();
                let key = format!("g{generation}_{child}");
                for _ in 0..MUTATION_TRIES {
                    let arch = space.mutate(&parent, &mut rng, &opts.space_opts, index, &key)?;
                    let config = space.config(&arch)?.to_string();
                    if seen.contains(&config) {
                        continue;
                    }
                    let entry = Entry {
                        key: key.clone(),
                        truth: f64::NAN,
                        arch,
                    };
                    let family = models::family(self.bench.kind);
                    let params = family.count_params(&entry.arch, probe)?.total;
                    if opts.max_params.is_some_and(|m| params > m) {
                        continue;
                    }
                    seen.insert(config);
                    self.bench.entries.push(entry);
                    self.candidates.push(Candidate {
                        key,
                        index,
                        generation,
                        params,
                        latency_ms: None,
                        value: None,
                        score: f64::NAN,
                        truth: None,
                    });
                    new.push(index);
                    break;
                }
            }
            self.score(&new, scorer, || {})?;
            let best = self
                .ranked(opts)
                .first()
                .map_or(f64::NAN, |&i| self.candidates[i].score);
            on_generation(generation, best);
        }
        Ok(())
    }

    /// Positions of the scored candidates within the parameter budget with a finite score.
    fn scored_within_params(&self, opts: &NasOptions) -> Vec<usize> {
        self.candidates
            .iter()
            .filter(|c| c.score.is_finite() && opts.max_params.is_none_or(|m| c.params <= m))
            .map(|c| c.index)
            .collect()
    }

    /// Measures the latency of the candidates at `positions` that have none yet: one row of
    /// the probe's tokens, the family's forward pass, median of `repeats` timed passes.
    /// `progress(done, total)` is called before the first and after each measurement.
    pub fn measure_latency(
        &mut self,
        positions: &[usize],
        probe: &ProbeOptions,
        repeats: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<()> {
        let family = models::family(self.bench.kind);
        let opts = ProbeOptions {
            batch: 1,
            dropout: false,
            extra_passes: false,
            ..probe.clone()
        };
        let batch = family.batch(&opts)?;
        let todo: Vec<usize> = positions
            .iter()
            .copied()
            .filter(|&i| self.candidates[i].latency_ms.is_none())
            .collect();
        progress(0, todo.len());
        for (done, &i) in todo.iter().enumerate() {
            let entry = &self.bench.entries[i];
            let times = family
                .latency(&entry.arch, i, &opts, &batch, repeats)
                .with_context(|| format!("measuring the latency of `{}`", entry.key))?;
            self.candidates[i].latency_ms = Some(stats::median(&times));
            progress(done + 1, todo.len());
        }
        Ok(())
    }
}

/// The non-dominated points of `points` (cost, score): no other point has a cost as low or
/// lower and a score as high or higher, one of them strictly. Points with a non-finite cost or
/// score are left out; equal points are all kept. Indices into `points`, by increasing cost
/// (then decreasing score, then index).
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (points[a], points[b]);
        pa.0.total_cmp(&pb.0)
            .then(pb.1.total_cmp(&pa.1))
            .then(a.cmp(&b))
    });
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    let mut at = 0;
    while at < order.len() {
        // One group of equal costs: its highest score is on the front when it beats every
        // cheaper point; the others of the group are dominated unless they tie with it.
        let cost = points[order[at]].0;
        let end = order[at..]
            .iter()
            .position(|&i| points[i].0 != cost)
            .map_or(order.len(), |n| at + n);
        let top = points[order[at]].1;
        if top > best {
            front.extend(order[at..end].iter().filter(|&&i| points[i].1 == top));
            best = top;
        }
        at = end;
    }
    front
}

/// The result of a search: the pool, the top and the front.
pub struct NasResult {
    /// The pool (every candidate considered).
    pub pool: Pool,
    /// Positions of the top candidates, best first.
    pub top: Vec<usize>,
    /// Positions of the Pareto front, by increasing cost.
    pub pareto: Vec<usize>,
    /// The front's cost axis.
    pub axis: CostAxis,
    /// Seconds spent measuring latency.
    pub latency_seconds: f64,
}

/// The last step: latency where needed (see the module docs), the eligible candidates
/// ranked, the top `opts.top` and the Pareto front over the eligible ones.
/// `progress(done, total)` follows the latency measurements.
pub fn finish(
    mut pool: Pool,
    probe: &ProbeOptions,
    opts: &NasOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<NasResult> {
    let start = Instant::now();
    if opts.latency_for_all() {
        let all = pool.scored_within_params(opts);
        pool.measure_latency(&all, probe, opts.repeats, progress)?;
    }
    let ranked = pool.ranked(opts);
    let points: Vec<(f64, f64)> = ranked
        .iter()
        .map(|&i| {
            (
                opts.pareto.cost(&pool.candidates[i]),
                pool.candidates[i].score,
            )
        })
        .collect();
    let pareto: Vec<usize> = pareto_front(&points)
        .into_iter()
        .map(|k| ranked[k])
        .collect();
    let top: Vec<usize> = ranked.iter().copied().take(opts.top).collect();
    let mut timed: Vec<usize> = top.iter().chain(&pareto).copied().collect();
    timed.sort_unstable();
    timed.dedup();
    pool.measure_latency(&timed, probe, opts.repeats, progress)?;
    Ok(NasResult {
        pool,
        top,
        pareto,
        axis: opts.pareto,
        latency_seconds: start.elapsed().as_secs_f64(),
    })
}

impl NasResult {
    /// One candidate as `--json` prints it: `id`, `config` (for a new architecture, its
    /// bench-file config), `params`, `latency_ms`, `score` (oriented proxy value), `value`
    /// (raw), `generation`, and `truth` when known.
    pub fn candidate_json(&self, i: usize) -> Result<Value> {
        let c = &self.pool.candidates[i];
        let mut v = json!({
            "id": c.key,
            "params": c.params,
            "latency_ms": c.latency_ms.map(json_number),
            "score": json_number(c.score),
            "value": c.value.map(json_number),
            "generation": c.generation,
        });
        if self.pool.sampling.is_some() || c.generation > 0 {
            let space = models::family(self.pool.bench.kind).design_space()?;
            v["config"] = space.config(&self.pool.bench.entries[i].arch)?;
        }
        if let Some(t) = c.truth {
            v["truth"] = json_number(t);
        }
        Ok(v)
    }

    /// `{"top": [...], "pareto": [...]}` ([`NasResult::candidate_json`] each) with the run's
    /// settings around them.
    pub fn summary(&self, proxy: &str, opts: &NasOptions, seed: u64) -> Result<Value> {
        let list = |ix: &[usize]| -> Result<Vec<Value>> {
            ix.iter().map(|&i| self.candidate_json(i)).collect()
        };
        let pool = &self.pool;
        Ok(json!({
            "bench": pool.bench.kind.name(),
            "proxy": proxy,
            "space": opts.space,
            "seed": seed,
            "evolve": opts.evolve,
            "max_params": opts.max_params,
            "max_latency_ms": opts.max_latency_ms.map(json_number),
            "pareto_axis": self.axis,
            "candidates": pool.candidates.len(),
            "scored": pool.candidates.iter().filter(|c| c.value.is_some()).count(),
            "eligible": pool.candidates.iter().filter(|c| c.eligible(opts)).count(),
            "score_seconds": json_number(pool.score_seconds),
            "latency_seconds": json_number(self.latency_seconds),
            "top": list(&self.top)?,
            "pareto": list(&self.pareto)?,
        }))
    }

    /// Writes the run into `dir`: `nas.json` ([`NasResult::summary`]), `candidates.csv`
    /// (every candidate), `pareto.csv`, `pareto.svg`, `top_k.jsonl` (the top as a bench file,
    /// ready for `--bench-file`) and the family's native files of the top
    /// ([`crate::bench::space::DesignSpace::native`]). Every file is written atomically.
    pub fn write(&self, dir: &Path, summary: &Value, opts: &NasOptions) -> Result<()> {
        let pool = &self.pool;
        let kind = pool.bench.kind;
        let space = models::family(kind).design_space()?;
        report::write_atomic(
            &dir.join("nas.json"),
            serde_json::to_string_pretty(summary)? + "\n",
        )?;
        let rank: HashMap<usize, usize> = pool
            .ranked(opts)
            .into_iter()
            .enumerate()
            .map(|(r, i)| (i, r + 1))
            .collect();
        let front: HashSet<usize> = self.pareto.iter().copied().collect();
        let header: Vec<String> = [
            "rank",
            "id",
            "generation",
            "params",
            "latency_ms",
            "value",
            "score",
            "eligible",
            "pareto",
            "truth",
        ]
        .map(String::from)
        .to_vec();
        let opt_num = |x: Option<f64>| x.map_or(String::new(), csv_number);
        let row = |c: &Candidate| {
            vec![
                rank.get(&c.index).map_or(String::new(), |r| r.to_string()),
                c.key.clone(),
                c.generation.to_string(),
                c.params.to_string(),
                opt_num(c.latency_ms),
                opt_num(c.value),
                csv_number(c.score),
                c.eligible(opts).to_string(),
                front.contains(&c.index).to_string(),
                opt_num(c.truth),
            ]
        };
        let rows: Vec<Vec<String>> = pool.candidates.iter().map(row).collect();
        report::write_csv_file(&dir.join("candidates.csv"), &header, &rows)?;
        let rows: Vec<Vec<String>> = self
            .pareto
            .iter()
            .map(|&i| row(&pool.candidates[i]))
            .collect();
        report::write_csv_file(&dir.join("pareto.csv"), &header, &rows)?;
        let (x_label, scale) = match self.axis {
            CostAxis::Params => ("parameters (millions)", 1e-6),
            CostAxis::Latency => ("CPU inference latency (ms, median)", 1.0),
        };
        let eligible = pool.ranked(opts);
        let points: Vec<(f64, f64)> = eligible
            .iter()
            .map(|&i| {
                let c = &pool.candidates[i];
                (scale * self.axis.cost(c), c.score)
            })
            .collect();
        let on_front: Vec<usize> = eligible
            .iter()
            .enumerate()
            .filter(|(_, i)| front.contains(i))
            .map(|(k, _)| k)
            .collect();
        let proxy = summary["proxy"].as_str().unwrap_or_default();
        let svg = crate::svg::pareto(
            &points,
            &on_front,
            None,
            &format!("lpzero nas: {} on {kind}", clip(proxy)),
            &format!(
                "{} eligible of {} candidates, {} on the front",
                eligible.len(),
                pool.candidates.len(),
                self.pareto.len()
            ),
            (x_label, "proxy score (higher = better)"),
        );
        report::write_atomic(&dir.join("pareto.svg"), svg)?;
        let mut lines = String::new();
        for &i in &self.top {
            let record = json!({
                "id": pool.candidates[i].key,
                "family": kind.name(),
                "config": space.config(&pool.bench.entries[i].arch)?,
            });
            lines.push_str(&serde_json::to_string(&record)?);
            lines.push('\n');
        }
        report::write_atomic(&dir.join("top_k.jsonl"), lines)?;
        let chosen: Vec<Chosen> = self
            .top
            .iter()
            .enumerate()
            .map(|(r, &i)| {
                let c = &pool.candidates[i];
                Chosen {
                    key: &c.key,
                    arch: &pool.bench.entries[i].arch,
                    notes: json!({
                        "rank": r + 1, "id": c.key, "proxy": proxy,
                        "score": json_number(c.score), "params": c.params,
                        "latency_ms": c.latency_ms.map(json_number),
                    }),
                }
            })
            .collect();
        for file in space.native(&chosen)? {
            report::write_atomic(&dir.join(&file.path), file.text)?;
        }
        Ok(())
    }
}

/// Parameter quantiles at which [`validate`] sets its budgets.
pub const VALIDATION_QUANTILES: [f64; 3] = [0.25, 0.5, 0.75];

/// How picking under one parameter budget went, for one proxy (truth oriented: higher is
/// better; regrets are best minus picked, in the truth's own units, so 0 is the best).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValidationRow {
    /// The proxy.
    pub proxy: String,
    /// The parameter quantile of the budget.
    pub quantile: f64,
    /// The budget: the benchmark's parameter count at that quantile.
    pub max_params: usize,
    /// Architectures within it.
    pub within: usize,
    /// The best truth within it.
    pub best: f64,
    /// Truth of the proxy's top-1.
    pub proxy_top1: f64,
    /// Best truth among the proxy's top 5.
    pub proxy_top5: f64,
    /// Truth of the largest architecture within the budget (picking by parameters).
    pub params_top1: f64,
    /// Best truth among the 5 largest within the budget.
    pub params_top5: f64,
}

impl ValidationRow {
    /// Regret of the proxy's top-1.
    pub fn regret_top1(&self) -> f64 {
        self.best - self.proxy_top1
    }

    /// Regret of the proxy's top-5.
    pub fn regret_top5(&self) -> f64 {
        self.best - self.proxy_top5
    }
}

/// The parameter count at quantile `q` of `params` (nearest rank: the smallest count with at
/// least a fraction `q` of the architectures at or below it).
pub fn param_quantile(params: &[usize], q: f64) -> usize {
    let mut sorted = params.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Where the ground truth is known: for budgets at the parameter quantiles
/// [`VALIDATION_QUANTILES`], the truth of the proxy's top-1 and top-5 within the budget
/// against the best within it and against picking by parameters. `scores[p]` are the oriented
/// scores of proxy `names[p]`, parallel to `truth` and `params`.
pub fn validate(
    names: &[String],
    scores: &[Vec<f64>],
    truth: &[f64],
    params: &[usize],
) -> Result<Vec<ValidationRow>> {
    if truth.iter().any(|t| !t.is_finite()) {
        bail!("validation needs a finite ground truth for every architecture");
    }
    let best_of = |ix: &[usize]| ix.iter().map(|&i| truth[i]).fold(f64::NAN, f64::max);
    let by = |values: &dyn Fn(usize) -> f64, within: &[usize]| -> Vec<usize> {
        let mut v = within.to_vec();
        v.sort_by(|&a, &b| {
            let (x, y) = (values(a), values(b));
            let key = |s: f64| if s.is_finite() { s } else { f64::NEG_INFINITY };
            key(y).total_cmp(&key(x)).then(a.cmp(&b))
        });
        v
    };
    let mut rows = Vec::new();
    for (name, score) in names.iter().zip(scores) {
        for q in VALIDATION_QUANTILES {
            let budget = param_quantile(params, q);
            let within: Vec<usize> = (0..params.len()).filter(|&i| params[i] <= budget).collect();
            let by_proxy = by(&|i| score[i], &within);
            let by_params = by(&|i| params[i] as f64, &within);
            rows.push(ValidationRow {
                proxy: name.clone(),
                quantile: q,
                max_params: budget,
                within: within.len(),
                best: best_of(&within),
                proxy_top1: best_of(&by_proxy[..1.min(by_proxy.len())]),
                proxy_top5: best_of(&by_proxy[..5.min(by_proxy.len())]),
                params_top1: best_of(&by_params[..1.min(by_params.len())]),
                params_top5: best_of(&by_params[..5.min(by_params.len())]),
            });
        }
    }
    Ok(rows)
}

/// The validation rows as a Markdown table; `sign` turns the oriented truth back into the
/// benchmark's own column (`truth_name`), regrets are in its units (0 = the best).
pub fn validation_markdown(rows: &[ValidationRow], truth_name: &str, sign: f64) -> String {
    let mut s = format!(
        "| proxy | budget (quantile: params) | within | best {truth_name} | proxy top-1 \
         (regret) | proxy top-5 (regret) | params top-1 (regret) | params top-5 (regret) |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let cell = |v: f64| format!("{:.2} ({:.2})", sign * v, r.best - v);
        s.push_str(&format!(
            "| {} | {:.0}%: {:.2} M | {} | {:.2} | {} | {} | {} | {} |\n",
            r.proxy.replace('|', "\\|"),
            r.quantile * 100.0,
            r.max_params as f64 / 1e6,
            r.within,
            sign * r.best,
            cell(r.proxy_top1),
            cell(r.proxy_top5),
            cell(r.params_top1),
            cell(r.params_top5),
        ));
    }
    s
}

#[cfg(test)]
mod tests;
