//! The typed result of a search on a benchmark: what `summary.json` holds and `--json` prints.
//!
//! Non-finite numbers (an undefined correlation) serialise as JSON `null`; optional parts (the
//! held-out comparison when there is no held-out set) are `null` as well, so every key is always
//! present.

use std::collections::BTreeMap;

use serde::Serialize;

use super::options::FitnessMeasure;
use super::structure::Structure;
use crate::compare::{Comparison, Corr};
use crate::probe::ProbeOptions;
use crate::proxy::expr::Expr;

/// The summary of one search: the proxy found, how it did on the fitness set and on the held-out
/// architectures, the comparison with every baseline there, and the work done.
#[derive(Debug, Clone, Serialize)]
pub struct SearchSummary {
    /// The benchmark family.
    pub bench: String,
    /// The best proxy of the final population.
    pub best: Expr,
    /// Its fitness, under `fitness_measure`.
    pub fitness: f64,
    /// How the fitness was measured.
    pub fitness_measure: FitnessMeasure,
    /// Its Spearman ρ on the fitness set (its fitness when the measure is Spearman).
    pub fitness_spearman: f64,
    /// Its Spearman ρ on the held-out architectures (NaN/null without a held-out set).
    pub heldout_spearman: f64,
    /// Its Kendall τ-b there.
    pub heldout_kendall: f64,
    /// Number of held-out architectures.
    pub heldout_n: usize,
    /// Number of fitness architectures.
    pub fitness_n: usize,
    /// Their keys.
    pub fitness_archs: Vec<String>,
    /// Wall-clock seconds of the whole search (probing, GP, held-out pass).
    pub seconds: f64,
    /// Seconds spent probing the fitness set.
    pub probe_seconds: f64,
    /// Bytes the fitness probes held in memory (0 when they were kept in a spill file).
    pub fitness_probe_bytes: u64,
    /// Bytes the fitness probes took in the spill file (`--spill-dir`, or those beyond the
    /// memory budget's share; 0 when all were in memory).
    #[serde(default)]
    pub fitness_spilled_bytes: u64,
    /// The memory budget the search ran under, in GB (`None`: no budget).
    #[serde(default)]
    pub memory_budget_gb: Option<f64>,
    /// Seconds of the GP loop.
    pub search_seconds: f64,
    /// Seconds of the held-out pass.
    pub heldout_seconds: f64,
    /// Candidates evaluated on at least one architecture.
    pub evaluated: u64,
    /// Candidates generated.
    pub candidates: u64,
    /// Candidates that got a fitness.
    pub valid: u64,
    /// Rejections per pruning rule.
    pub rejected_by_rule: BTreeMap<String, u64>,
    /// Estimated seconds saved per pruning rule.
    pub seconds_saved_by_rule: BTreeMap<String, f64>,
    /// The hall of fame, best first, with held-out results.
    pub hall_of_fame: Vec<HallSummary>,
    /// Held-out ρ and τ of every baseline and of `pair_ensemble` (null without a held-out set).
    pub heldout_baselines: Option<BTreeMap<String, BaselineResult>>,
    /// The best baseline (single or `pair_ensemble`) by held-out ρ.
    pub best_baseline: Option<String>,
    /// Its held-out ρ.
    pub best_baseline_spearman: Option<f64>,
    /// Its held-out τ.
    pub best_baseline_kendall: Option<f64>,
    /// `heldout_spearman − best_baseline_spearman`: positive when the search won.
    pub margin: Option<f64>,
    /// The rank sum of hall-of-fame proxies chosen greedily on the fitness set, held out.
    pub hall_of_fame_ensemble: Option<EnsembleResult>,
    /// The rank sum of the hall-of-fame ensemble's members and the pair ensemble's two
    /// baselines, held out: what the search recommends for ranking (every member chosen on the
    /// fitness set).
    pub combined_ensemble: Option<CombinedEnsemble>,
    /// The rank sum of the searched proxy and the pair ensemble's two baselines, held out:
    /// what a complement search (`--complement`) optimises on the fitness set, reported for
    /// every search.
    pub complement_ensemble: Option<CombinedEnsemble>,
    /// Every GP restart: seed, fitness, best proxy and that proxy's held-out correlations
    /// (one entry for a single run).
    pub restarts: Vec<RestartSummary>,
    /// The restart whose best proxy is `best` (the best fitness).
    pub chosen_restart: usize,
    /// The GP seed.
    pub seed: u64,
    /// The proxy structure searched.
    pub structure: Structure,
    /// Iterations run.
    pub iterations: usize,
    /// Population size.
    pub population: usize,
    /// Whether the rule-based pruning was on.
    pub rps: bool,
    /// How every architecture was probed.
    pub probe: ProbeOptions,
    /// Peak resident memory of the process, in MiB (Linux).
    pub peak_rss_mib: Option<f64>,
}

/// One hall-of-fame proxy in a summary.
#[derive(Debug, Clone, Serialize)]
pub struct HallSummary {
    /// The proxy.
    pub expr: Expr,
    /// Its canonical key.
    pub key: String,
    /// Its fitness (under the search's measure).
    pub fitness: f64,
    /// The iteration that found it.
    pub iteration: usize,
    /// The restart that found it.
    pub restart: usize,
    /// Held-out ρ (absent without a held-out set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_spearman: Option<f64>,
    /// Held-out τ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_kendall: Option<f64>,
    /// Held-out architectures where it was NaN or infinite (ranked last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_non_finite: Option<usize>,
}

/// One GP restart in a summary.
#[derive(Debug, Clone, Serialize)]
pub struct RestartSummary {
    /// The seed it ran with.
    pub seed: u64,
    /// The fitness of its best proxy.
    pub fitness: f64,
    /// Its best proxy.
    pub best: Expr,
    /// That proxy's held-out ρ (absent without a held-out set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_spearman: Option<f64>,
    /// Its held-out τ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_kendall: Option<f64>,
}

/// A baseline's (or the pair ensemble's) held-out correlations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineResult {
    /// Held-out Spearman ρ.
    pub spearman: f64,
    /// Held-out Kendall τ-b.
    pub kendall: f64,
    /// For the pair ensemble: its two baselines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<[String; 2]>,
    /// For the pair ensemble: the ρ of its rank sum on the fitness set (what chose it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fitness_spearman: Option<f64>,
}

impl BaselineResult {
    /// A single baseline's correlations.
    pub fn single(c: Corr) -> Self {
        Self {
            spearman: c.spearman,
            kendall: c.kendall,
            members: None,
            fitness_spearman: None,
        }
    }
}

/// The hall-of-fame ensemble in a summary.
#[derive(Debug, Clone, Serialize)]
pub struct EnsembleResult {
    /// Held-out Spearman ρ of the rank sum.
    pub spearman: f64,
    /// Held-out Kendall τ-b.
    pub kendall: f64,
    /// The proxies summed, in the order chosen.
    pub members: Vec<Expr>,
    /// The ensemble's ρ on the fitness set.
    pub fitness_spearman: f64,
}

/// The combined ensemble in a summary: the searched proxies of the hall-of-fame ensemble and the
/// two baselines of the pair ensemble, their ranks summed with equal weight per member.
///
/// Searched and hand-designed proxies read different things (the search's favourites are
/// structural, the baselines' gradients and attention), so their errors partly cancel; on the
/// fitness set alone the search cannot tell which of its proxies will carry over, and the pair
/// is the best simple combination of baselines there. Every member is chosen on the fitness set.
#[derive(Debug, Clone, Serialize)]
pub struct CombinedEnsemble {
    /// Held-out Spearman ρ of the rank sum.
    pub spearman: f64,
    /// Held-out Kendall τ-b.
    pub kendall: f64,
    /// The ρ of the rank sum on the fitness set.
    pub fitness_spearman: f64,
    /// The searched members (the hall-of-fame ensemble's).
    pub searched: Vec<Expr>,
    /// The baseline members (the pair ensemble's).
    pub baselines: Vec<String>,
    /// Held-out ρ minus the best baseline's (single or pair).
    pub margin: f64,
    /// The members as one `--proxy` list: `lpzero score --proxy LIST --rank-sum` (with the same
    /// probe options) scores the ensemble on any architectures.
    pub proxy_list: String,
}

impl CombinedEnsemble {
    /// Whether it beat the best baseline (single or pair) held out.
    pub fn won(&self) -> bool {
        self.margin > 0.0
    }

    /// The `--proxy` list of `searched` then `baselines`, `;`-separated.
    pub fn list_of(searched: &[Expr], baselines: &[String]) -> String {
        let mut items: Vec<String> = searched.iter().map(Expr::to_string).collect();
        items.extend(baselines.iter().cloned());
        items.join("; ")
    }
}

/// The `heldout_baselines` map of a comparison: every baseline by name, plus `pair_ensemble`.
pub fn heldout_baselines(c: &Comparison) -> BTreeMap<String, BaselineResult> {
    let mut map: BTreeMap<String, BaselineResult> = c
        .baselines
        .iter()
        .map(|(name, corr)| (name.clone(), BaselineResult::single(*corr)))
        .collect();
    if let Some(p) = &c.pair_ensemble {
        map.insert(
            "pair_ensemble".into(),
            BaselineResult {
                spearman: p.heldout.spearman,
                kendall: p.heldout.kendall,
                members: Some(p.members.clone()),
                fitness_spearman: Some(p.fitness_spearman),
            },
        );
    }
    map
}

impl SearchSummary {
    /// Whether the searched proxy beat the best baseline on the held-out set (false without a
    /// held-out set).
    pub fn won(&self) -> bool {
        self.margin.is_some_and(|m| m > 0.0)
    }

    /// The held-out ρ of the pair ensemble, if there is one.
    pub fn pair_spearman(&self) -> Option<f64> {
        self.heldout_baselines
            .as_ref()
            .and_then(|b| b.get("pair_ensemble"))
            .map(|p| p.spearman)
    }
}
