//! Search options: what the GP loop does, with the reference values as defaults.
//!
//! [`SearchOptions::reference`] is the reference BERT search (spec §4.5–4.6): population 80,
//! 1 000 iterations, parents drawn uniformly from the top half, crossover and mutation each with
//! probability ½, the worst member replaced, the tree structure with two unary ops per branch,
//! Spearman fitness. The defaults ([`Default`]) keep that loop and change what the ranking study
//! showed to matter on held-out architectures: the `extended` structure, the Kendall τ fitness,
//! 3 restarts of 300 iterations each. Unlike the reference, `n_unary` is respected by offspring (the reference rebuilt
//! children with the default 2) and the seed is really used (the reference never seeded its
//! RNG).
//!
//! The whole struct is serde (de)serialisable; missing fields take their defaults, unknown
//! fields are an error (typos should not silently fall back to a default).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::genome::GenomeSpec;
use super::rps::RpsOptions;
pub use super::structure::Structure;
use super::variation::MutationWeights;

/// How a candidate's values on the fitness set become its fitness (higher is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitnessMeasure {
    /// Spearman ρ over the whole fitness set (the reference).
    #[default]
    Spearman,
    /// Kendall τ-b over the whole fitness set (counts discordant pairs, less swayed by a few
    /// large rank errors).
    Kendall,
    /// Mean Spearman ρ over [`ROBUST_SUBSETS`] fixed random halves of the fitness set minus
    /// their standard deviation: a proxy that ranks well only thanks to a few architectures
    /// scores lower.
    Robust,
}

/// Number of random halves the `robust` fitness averages over.
pub const ROBUST_SUBSETS: usize = 20;

impl FitnessMeasure {
    /// All measures, in documentation order.
    pub const ALL: [FitnessMeasure; 3] = [
        FitnessMeasure::Spearman,
        FitnessMeasure::Kendall,
        FitnessMeasure::Robust,
    ];

    /// The lower-case name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            FitnessMeasure::Spearman => "spearman",
            FitnessMeasure::Kendall => "kendall",
            FitnessMeasure::Robust => "robust",
        }
    }
}

impl fmt::Display for FitnessMeasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FitnessMeasure {
    type Err = String;

    /// Accepts `spearman`, `kendall` or `robust` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::report::find_named(s, &Self::ALL, Self::name, "fitness measure")
    }
}

/// Everything that controls one search run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchOptions {
    /// Population size (reference 80).
    pub population: usize,
    /// Number of GP iterations after the initial population (reference 1 000).
    pub iterations: usize,
    /// Share of the population, best first, that parents are drawn from uniformly
    /// (reference ½: `int(0.5 · 80) = 40`).
    pub parent_fraction: f64,
    /// Probability that a child is the crossover of its two parents (reference ½).
    pub p_crossover: f64,
    /// Probability that a child is then mutated (reference ½).
    pub p_mutation: f64,
    /// The proxy structure searched.
    pub structure: Structure,
    /// Unary ops per branch in the tree structure (reference 2), respected in offspring.
    pub n_unary: usize,
    /// Length of the unary chain in the linear structure (reference 4).
    pub linear_length: usize,
    /// Maximum depth (nodes on the longest root-to-leaf path) in the free structure.
    pub max_depth: usize,
    /// Extended structure: probability that a freshly drawn branch starts from an element-wise
    /// pair of inputs, `op(x, y)` before its chain and reduction (e.g. `mul(weight, grad)`,
    /// the W⊙∇W of SNIP and synaptic saliency). 0 (the default, left out of files) keeps the
    /// extended template as it was, draw for draw.
    #[serde(skip_serializing_if = "super::variation::is_zero")]
    pub pairs: f64,
    /// Extended structure: probability that a freshly drawn join of the two branches is the
    /// rank join `rank_add` (the sum of the branches' ranks across the scored architectures,
    /// [`crate::proxy::set`]) instead of a value-level `add`, `sub` or `mul`. 0 (left out of
    /// files) keeps the extended template as it was, draw for draw.
    #[serde(skip_serializing_if = "super::variation::is_zero")]
    pub rank_join: f64,
    /// Complement search: the fitness of a candidate is the fitness of the rank sum of its
    /// values and the companion columns the fitness set comes with
    /// ([`crate::search::FitnessData::companion`]; in a benchmark search, the two baselines of
    /// the pair ensemble chosen on the same fitness set). The search then looks for what the
    /// best simple combination of hand-designed proxies misses, instead of for a proxy that
    /// beats it alone. false (left out of files) is the plain search.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub complement: bool,
    /// Seed of the one RNG that drives sampling, selection and variation.
    pub seed: u64,
    /// Number of best distinct proxies (by canonical key) kept in the hall of fame.
    pub hall_of_fame: usize,
    /// Write `checkpoint.json` every this many iterations (0: only at the end). Needs an output
    /// folder.
    pub checkpoint_every: usize,
    /// Attempts allowed per member when building the initial population: the search fails
    /// after `population × init_attempts_per_member` candidates without a full population.
    pub init_attempts_per_member: usize,
    /// Byte budget of the sub-expression memo for non-scalar lists (a cache: results never
    /// depend on it).
    pub memo_budget_bytes: u64,
    /// Worker threads that evaluate a candidate on the fitness architectures (each owns the
    /// memo of a fixed share of them; results never depend on it).
    pub threads: usize,
    /// The rule-based pruning strategy.
    pub rps: RpsOptions,
    /// Fitness is |ρ| instead of ρ: a proxy that ranks architectures backwards counts as well
    /// as one that ranks them forwards, and enters the hall of fame as `neg(…)` (so every
    /// reported proxy is higher-is-better). The tree template cannot negate a whole proxy, so
    /// this doubles what it can express; the reference's GPT-2 proxy is such a backward one.
    pub either_sign: bool,
    /// How the values on the fitness set become a fitness.
    pub fitness: FitnessMeasure,
    /// Parsimony pressure: the fitness is lowered by this much per node of the candidate's
    /// canonical expression (0: none, the reference).
    pub parsimony: f64,
    /// The weights of the named mutation operators (the default is the reference's mutation).
    pub mutation: MutationWeights,
    /// Independent GP runs on the same fitness set (restart 0 with `seed`, the others with
    /// seeds derived from it); the search reports the run with the best fitness and a hall of
    /// fame merged over all of them. One run's outcome swings with tiny numeric changes (a
    /// run can settle on a poor basin), so several restarts make the reported proxy depend
    /// less on one trajectory (results/README.md, "Restarts"). The reference is one run.
    pub restarts: usize,
}

impl Default for SearchOptions {
    /// lpzero's defaults: the reference loop (population, selection, variation rates) with the
    /// `extended` structure, the Kendall τ fitness and [`DEFAULT_RESTARTS`] runs of
    /// [`DEFAULT_ITERATIONS`] iterations, which rank held-out architectures best in the ranking
    /// study (results/README.md). [`SearchOptions::reference`] is the reference search itself.
    fn default() -> Self {
        Self {
            structure: Structure::Extended,
            fitness: FitnessMeasure::Kendall,
            restarts: DEFAULT_RESTARTS,
            iterations: DEFAULT_ITERATIONS,
            ..Self::reference()
        }
    }
}

impl SearchOptions {
    /// The reference BERT search (spec §4.5–4.6): the `tree` structure and the Spearman
    /// fitness, with everything else as in [`Default`].
    pub fn reference() -> Self {
        Self {
            population: 80,
            iterations: 1000,
            parent_fraction: 0.5,
            p_crossover: 0.5,
            p_mutation: 0.5,
            structure: Structure::Tree,
            n_unary: 2,
            linear_length: 4,
            max_depth: 5,
            pairs: 0.0,
            rank_join: 0.0,
            complement: false,
            seed: 0,
            hall_of_fame: 10,
            checkpoint_every: 50,
            init_attempts_per_member: 500,
            memo_budget_bytes: crate::proxy::eval::DEFAULT_BUDGET_BYTES,
            threads: 1,
            rps: RpsOptions::default(),
            either_sign: false,
            fitness: FitnessMeasure::Spearman,
            parsimony: 0.0,
            mutation: MutationWeights::default(),
            restarts: 1,
        }
    }
}

/// lpzero's default number of GP restarts ([`SearchOptions::restarts`]).
pub const DEFAULT_RESTARTS: usize = 3;
/// lpzero's default number of GP iterations per run ([`SearchOptions::iterations`]; the
/// reference runs 1 000). On 50 fitness architectures the iterations after the first few
/// hundred raise the fitness without raising the held-out correlation (results/README.md,
/// "Iterations"), so they cost time and buy over-fitting.
pub const DEFAULT_ITERATIONS: usize = 300;
/// Most restarts accepted.
pub const MAX_RESTARTS: usize = 1000;

/// Largest population accepted: a thousand times the reference's 80, far beyond any useful
/// search (each member costs an evaluation on every fitness architecture).
pub const MAX_POPULATION: usize = 100_000;
/// Most iterations accepted (every iteration adds a log line, a curve point and a key).
pub const MAX_ITERATIONS: usize = 10_000_000;
/// Most unary ops per tree branch: each op is a `disconnect` with probability about 1/21, so
/// longer chains are mostly cut, and the reference uses 2.
pub const MAX_N_UNARY: usize = 16;
/// Most unary ops in a linear chain and most nodes on a free tree's longest path.
pub const MAX_CHAIN: usize = 64;

/// Options that do not change a run's results: they may differ between a run and its resume.
pub(crate) const RESULT_NEUTRAL_OPTIONS: [&str; 5] = [
    "iterations",
    "checkpoint_every",
    "init_attempts_per_member",
    "memo_budget_bytes",
    "threads",
];

impl SearchOptions {
    /// Checks ranges: population within 2..=[`MAX_POPULATION`], iterations at most
    /// [`MAX_ITERATIONS`], `n_unary` at most [`MAX_N_UNARY`], `linear_length` within
    /// 1..=[`MAX_CHAIN`], max depth within 2..=[`MAX_CHAIN`], threads within
    /// 1..=[`crate::probe::MAX_THREADS`], probabilities and the parent fraction in [0, 1] (the
    /// fraction > 0), hall of fame within 1..=[`MAX_POPULATION`], attempts ≥ 1, and the RPS options.
    /// Each message gives the allowed range.
    pub fn validate(&self) -> Result<()> {
        let max_threads = crate::probe::MAX_THREADS;
        if !(1..=max_threads).contains(&self.threads) {
            bail!(
                "threads must be within 1..={max_threads}, got {}",
                self.threads
            );
        }
        if !(2..=MAX_POPULATION).contains(&self.population) {
            bail!(
                "population must be within 2..={MAX_POPULATION}, got {} (the reference uses 80)",
                self.population
            );
        }
        if !(1..=MAX_RESTARTS).contains(&self.restarts) {
            bail!(
                "restarts must be within 1..={MAX_RESTARTS}, got {}",
                self.restarts
            );
        }
        if self.iterations > MAX_ITERATIONS {
            bail!(
                "iterations must be at most {MAX_ITERATIONS}, got {} (the reference runs 1000)",
                self.iterations
            );
        }
        if self.n_unary > MAX_N_UNARY {
            bail!(
                "n_unary must be within 0..={MAX_N_UNARY}, got {}: it is the number of unary ops \
                 on each branch of the tree and extended templates (the reference uses 2), \
                 and in longer chains a `disconnect` almost always cuts the branch",
                self.n_unary
            );
        }
        if !(1..=MAX_CHAIN).contains(&self.linear_length) {
            bail!(
                "linear_length must be within 1..={MAX_CHAIN}, got {}",
                self.linear_length
            );
        }
        if !(self.parent_fraction > 0.0 && self.parent_fraction <= 1.0) {
            bail!(
                "parent_fraction must be in (0, 1], got {}",
                self.parent_fraction
            );
        }
        for (name, p) in [
            ("p_crossover", self.p_crossover),
            ("p_mutation", self.p_mutation),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} must be in [0, 1], got {p}");
            }
        }
        if !(2..=MAX_CHAIN).contains(&self.max_depth) {
            bail!(
                "max_depth must be within 2..={MAX_CHAIN}, got {}",
                self.max_depth
            );
        }
        if !(1..=MAX_POPULATION).contains(&self.hall_of_fame) {
            bail!(
                "hall_of_fame must be within 1..={MAX_POPULATION}, got {}",
                self.hall_of_fame
            );
        }
        if !(self.parsimony >= 0.0 && self.parsimony.is_finite()) {
            bail!(
                "parsimony must be a finite number ≥ 0, got {}",
                self.parsimony
            );
        }
        if !(0.0..=1.0).contains(&self.pairs) {
            bail!("pairs must be a probability in [0, 1], got {}", self.pairs);
        }
        if self.pairs > 0.0 && self.structure != Structure::Extended {
            bail!(
                "pairs is {} but the structure is {}: element-wise pairs are genes of the \
                 extended structure only (the free structure can write any binary op)",
                self.pairs,
                self.structure
            );
        }
        if !(0.0..=1.0).contains(&self.rank_join) {
            bail!(
                "rank_join must be a probability in [0, 1], got {}",
                self.rank_join
            );
        }
        if self.rank_join > 0.0 && self.structure != Structure::Extended {
            bail!(
                "rank_join is {} but the structure is {}: the rank join is a join of the \
                 extended structure's two branches only",
                self.rank_join,
                self.structure
            );
        }
        if self.rank_join > 0.0 && self.either_sign {
            bail!(
                "rank_join goes with the oriented fitness only: under either_sign a backward \
                 proxy is reported as its negation, and `neg(rank_add(…))` is not an expression \
                 (a rank join is only ever the root)"
            );
        }
        if self.complement && self.either_sign {
            bail!(
                "complement goes with the oriented fitness only: the companion columns rank \
                 higher-is-better, so a backward candidate cannot complement them"
            );
        }
        if self.mutation.pair > 0.0 && self.pairs == 0.0 {
            bail!(
                "mutation weight `pair` is {} but pairs is 0: there are no element-wise pairs \
                 to mutate",
                self.mutation.pair
            );
        }
        if self.init_attempts_per_member == 0 {
            bail!("init_attempts_per_member must be at least 1");
        }
        self.mutation.validate(self.structure)?;
        self.rps.validate()
    }

    /// Number of parents candidates: `int(parent_fraction · population)`, at least 1.
    pub fn parent_pool(&self) -> usize {
        ((self.parent_fraction * self.population as f64) as usize).clamp(1, self.population)
    }

    /// The part of the options that shapes genomes (structure and sizes).
    pub fn genome_spec(&self) -> GenomeSpec {
        GenomeSpec {
            structure: self.structure,
            n_unary: self.n_unary,
            linear_length: self.linear_length,
            max_depth: self.max_depth,
            pairs: self.pairs,
            rank_join: self.rank_join,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_and_defaults() {
        let d = SearchOptions::default();
        assert_eq!(d.structure, Structure::Extended);
        assert_eq!(d.fitness, FitnessMeasure::Kendall);
        assert_eq!(
            SearchOptions {
                structure: Structure::Tree,
                fitness: FitnessMeasure::Spearman,
                restarts: 1,
                iterations: 1000,
                ..d
            },
            SearchOptions::reference()
        );
        assert_eq!(d.restarts, DEFAULT_RESTARTS);
        assert_eq!(d.iterations, DEFAULT_ITERATIONS);
        let o = SearchOptions::reference();
        assert_eq!(o.population, 80);
        assert_eq!(o.iterations, 1000);
        assert_eq!(o.parent_pool(), 40);
        assert_eq!((o.p_crossover, o.p_mutation), (0.5, 0.5));
        assert_eq!(o.structure, Structure::Tree);
        assert_eq!(o.n_unary, 2);
        assert_eq!(o.rps.predictive_k, 10);
        o.validate().unwrap();
    }

    #[test]
    fn serde_round_trip_and_partial() {
        let o = SearchOptions {
            structure: Structure::Graph,
            seed: 7,
            ..SearchOptions::default()
        };
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<SearchOptions>(&json).unwrap(), o);
        let p: SearchOptions =
            serde_json::from_str(r#"{"population": 12, "structure": "free"}"#).unwrap();
        assert_eq!(p.population, 12);
        assert_eq!(p.structure, Structure::Free);
        assert_eq!(p.iterations, DEFAULT_ITERATIONS);
        assert!(serde_json::from_str::<SearchOptions>(r#"{"popul": 3}"#).is_err());
        for s in Structure::ALL {
            assert_eq!(s.name().parse::<Structure>(), Ok(s));
        }
        assert!("bush".parse::<Structure>().is_err());
    }

    #[test]
    fn validation() {
        let bad = [
            SearchOptions {
                population: 1,
                ..Default::default()
            },
            SearchOptions {
                p_mutation: 1.5,
                ..Default::default()
            },
            SearchOptions {
                parent_fraction: 0.0,
                ..Default::default()
            },
            SearchOptions {
                max_depth: 1,
                ..Default::default()
            },
            SearchOptions {
                population: MAX_POPULATION + 1,
                ..Default::default()
            },
            SearchOptions {
                iterations: MAX_ITERATIONS + 1,
                ..Default::default()
            },
            SearchOptions {
                n_unary: 1000,
                ..Default::default()
            },
            SearchOptions {
                threads: 0,
                ..Default::default()
            },
            SearchOptions {
                hall_of_fame: 0,
                ..Default::default()
            },
            SearchOptions {
                pairs: 1.5,
                ..Default::default()
            },
            SearchOptions {
                pairs: f64::NAN,
                ..Default::default()
            },
            SearchOptions {
                pairs: 0.3,
                structure: Structure::Free,
                ..Default::default()
            },
            SearchOptions {
                mutation: MutationWeights {
                    pair: 1.0,
                    ..Default::default()
                },
                ..Default::default()
            },
            SearchOptions {
                rank_join: -0.1,
                ..Default::default()
            },
            SearchOptions {
                rank_join: 0.5,
                structure: Structure::Tree,
                ..Default::default()
            },
            SearchOptions {
                rank_join: 0.5,
                structure: Structure::Extended,
                either_sign: true,
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
        let paired = SearchOptions {
            pairs: 0.3,
            mutation: MutationWeights {
                pair: 1.0,
                ..Default::default()
            },
            ..Default::default()
        };
        paired.validate().unwrap();
        // `pairs` is written only when used, and read back.
        let json = serde_json::to_string(&paired).unwrap();
        assert_eq!(
            serde_json::from_str::<SearchOptions>(&json).unwrap(),
            paired
        );
        let json = serde_json::to_string(&SearchOptions::default()).unwrap();
        assert!(!json.contains("pair"), "{json}");
        assert!(!json.contains("rank_join"), "{json}");
        let joined = SearchOptions {
            rank_join: 0.5,
            structure: Structure::Extended,
            ..Default::default()
        };
        joined.validate().unwrap();
        let json = serde_json::to_string(&joined).unwrap();
        assert_eq!(
            serde_json::from_str::<SearchOptions>(&json).unwrap(),
            joined
        );
    }
}
