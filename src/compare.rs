//! Held-out comparison of a searched proxy with the human-designed baselines.
//!
//! A searched proxy is only worth having if it ranks architectures the search never saw better
//! than what already exists. Every search therefore reports, on its held-out architectures and
//! from the same probes:
//!
//! * every single-pass baseline of the family (ρ and τ against the ground truth);
//! * the **pair ensemble**: the rank sum of the two baselines whose rank sum correlates best
//!   with the ground truth *on the fitness set* (so it is chosen with exactly the information
//!   the search had), evaluated on the held-out set;
//! * the best of all these (`best_baseline`, chosen on the held-out set, which favours the
//!   baselines) and the `margin` of the searched proxy over it.
//!
//! Rank aggregation works on oriented values (negated when lower is better) with NaN and ±Inf
//! ranked last ([`oriented`]); ranks are averaged over ties and summed with equal weights
//! ([`stats::rank_sum`]). A rank sum depends on the set it is computed over, which is fine for
//! ranking: it is always computed within the set being ranked.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::proxy::builtin::Orientation;
use crate::stats::{self, rank_sum};

/// Spearman ρ and Kendall τ-b of a proxy against the ground truth (higher is better).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Corr {
    /// Spearman ρ.
    pub spearman: f64,
    /// Kendall τ-b.
    pub kendall: f64,
}

impl Corr {
    /// The correlations of oriented, sanitised `values` with `truth`.
    pub fn of(truth: &[f64], values: &[f64]) -> Self {
        let c = stats::correlate(truth, values);
        Self {
            spearman: c.spearman,
            kendall: c.kendall,
        }
    }
}

/// `values` made higher-is-better (negated when `orientation` is lower-is-better), with NaN
/// and ±Inf replaced so that they rank last ([`stats::sanitize`]).
pub fn oriented(values: &[f64], orientation: Orientation) -> Vec<f64> {
    let sign = orientation.sign();
    let flipped: Vec<f64> = values.iter().map(|v| sign * v).collect();
    stats::sanitize(&flipped).0
}

/// The two columns whose rank sum has the highest Spearman ρ with `truth`: `(i, j, ρ)` with
/// `i < j`, or `None` for fewer than two columns. Ties keep the first pair in `(i, j)` order,
/// so the choice is deterministic.
pub fn best_pair(truth: &[f64], columns: &[Vec<f64>]) -> Option<(usize, usize, f64)> {
    let mut best: Option<(usize, usize, f64)> = None;
    for i in 0..columns.len() {
        for j in i + 1..columns.len() {
            let rho = stats::spearman(truth, &rank_sum(&[&columns[i], &columns[j]]));
            if rho.is_nan() {
                continue;
            }
            if best.is_none_or(|(_, _, b)| rho > b) {
                best = Some((i, j, rho));
            }
        }
    }
    best
}

/// Greedy forward selection of a rank-sum ensemble: start from the column with the best
/// Spearman ρ against `truth`, then repeatedly add the column that raises the ρ of the rank sum
/// most, while it rises and at most `max_k` columns are taken. Returns the chosen column
/// indices (in the order taken) and the ensemble's ρ; empty for no usable column.
pub fn greedy_ensemble(truth: &[f64], columns: &[Vec<f64>], max_k: usize) -> (Vec<usize>, f64) {
    let mut chosen: Vec<usize> = Vec::new();
    let mut best = f64::NEG_INFINITY;
    while chosen.len() < max_k {
        let mut step: Option<(usize, f64)> = None;
        for c in (0..columns.len()).filter(|c| !chosen.contains(c)) {
            let mut refs: Vec<&[f64]> = chosen.iter().map(|&i| columns[i].as_slice()).collect();
            refs.push(&columns[c]);
            let rho = stats::spearman(truth, &rank_sum(&refs));
            if rho.is_finite() && step.is_none_or(|(_, r)| rho > r) {
                step = Some((c, rho));
            }
        }
        match step {
            Some((c, rho)) if rho > best => {
                chosen.push(c);
                best = rho;
            }
            _ => break,
        }
    }
    (chosen, best)
}

/// One baseline's values on the fitness set and on the held-out set.
pub struct BaselineColumns<'a> {
    /// The proxy's name.
    pub name: &'a str,
    /// What a higher value means.
    pub orientation: Orientation,
    /// Raw values on the fitness architectures.
    pub fitness: &'a [f64],
    /// Raw values on the held-out architectures.
    pub heldout: &'a [f64],
}

/// The pair ensemble: which two baselines, how they ranked the fitness set, and how they rank
/// the held-out set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairEnsemble {
    /// The two baselines, in suite order.
    pub members: [String; 2],
    /// Their positions among the compared columns ([`Comparison::new`]'s `columns`).
    #[serde(skip)]
    pub columns: [usize; 2],
    /// ρ of their rank sum on the fitness set (what chose them).
    pub fitness_spearman: f64,
    /// Held-out ρ and τ of their rank sum.
    #[serde(flatten)]
    pub heldout: Corr,
}

/// The whole held-out comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Held-out ρ and τ of every baseline, by name.
    pub baselines: BTreeMap<String, Corr>,
    /// The pair ensemble (absent with fewer than two baselines).
    pub pair_ensemble: Option<PairEnsemble>,
    /// The best baseline or `pair_ensemble` by held-out ρ.
    pub best_baseline: String,
    /// Its held-out correlations.
    pub best: Corr,
}

impl Comparison {
    /// Compares on held-out architectures with ground truth `heldout_truth`; the pair ensemble
    /// is chosen on the fitness set (`fitness_truth`).
    pub fn new(
        fitness_truth: &[f64],
        heldout_truth: &[f64],
        columns: &[BaselineColumns<'_>],
    ) -> Self {
        let mut baselines = BTreeMap::new();
        let mut best_baseline = String::new();
        let mut best = Corr {
            spearman: f64::NAN,
            kendall: f64::NAN,
        };
        let mut consider = |name: &str, c: Corr| {
            if best.spearman.is_nan() || c.spearman > best.spearman {
                best_baseline = name.to_string();
                best = c;
            }
        };
        let held: Vec<Vec<f64>> = columns
            .iter()
            .map(|c| oriented(c.heldout, c.orientation))
            .collect();
        for (c, values) in columns.iter().zip(&held) {
            let corr = Corr::of(heldout_truth, values);
            consider(c.name, corr);
            baselines.insert(c.name.to_string(), corr);
        }
        let fit: Vec<Vec<f64>> = columns
            .iter()
            .map(|c| oriented(c.fitness, c.orientation))
            .collect();
        let pair_ensemble = best_pair(fitness_truth, &fit).map(|(i, j, rho)| {
            let heldout = Corr::of(heldout_truth, &rank_sum(&[&held[i], &held[j]]));
            consider("pair_ensemble", heldout);
            PairEnsemble {
                members: [columns[i].name.to_string(), columns[j].name.to_string()],
                columns: [i, j],
                fitness_spearman: rho,
                heldout,
            }
        });
        Self {
            baselines,
            pair_ensemble,
            best_baseline,
            best,
        }
    }

    /// The held-out ρ of `ours` minus the best baseline's.
    pub fn margin(&self, ours: f64) -> f64 {
        ours - self.best.spearman
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_sum_and_orientation() {
        let a = [1.0, 2.0, 3.0, f64::NAN];
        let o = oriented(&a, Orientation::LowerIsBetter);
        // Lower is better: 1 is best; NaN ranks last.
        assert!(o[0] > o[1] && o[1] > o[2] && o[2] > o[3]);
        let r = rank_sum(&[&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]]);
        assert_eq!(r, vec![4.0, 4.0, 4.0]);
    }

    #[test]
    fn greedy_ensemble_adds_only_what_helps() {
        let n = 30;
        let x: Vec<f64> = (0..n).map(|i| ((i * 7) % n) as f64).collect();
        let y: Vec<f64> = (0..n).map(|i| ((i * 13) % n) as f64).collect();
        let truth: Vec<f64> = (0..n).map(|i| 2.0 * x[i] + y[i]).collect();
        // Columns: y, x, and a copy of x (adding it changes nothing).
        let (chosen, rho) = greedy_ensemble(&truth, &[y.clone(), x.clone(), x.clone()], 3);
        assert_eq!(chosen[0], 1, "x alone is the best start");
        assert!(chosen.contains(&0), "{chosen:?}");
        assert!(rho > stats::spearman(&truth, &x));
        assert_eq!(greedy_ensemble(&truth, &[], 3).0, Vec::<usize>::new());
        assert_eq!(
            greedy_ensemble(&truth, std::slice::from_ref(&x), 3).0,
            vec![0]
        );
    }

    #[test]
    fn pair_is_chosen_on_the_fitness_set_and_scored_held_out() {
        // Truth = x + y; baselines: x, y, and noise. The best pair is (x, y).
        let n = 40;
        let x: Vec<f64> = (0..n).map(|i| ((i * 7) % n) as f64).collect();
        let y: Vec<f64> = (0..n).map(|i| ((i * 13) % n) as f64).collect();
        let z: Vec<f64> = (0..n).map(|i| ((i * 29 + 3) % n) as f64).collect();
        let truth: Vec<f64> = (0..n).map(|i| x[i] + y[i]).collect();
        let (fit, held) = (0..20, 20..40);
        let cols: Vec<BaselineColumns<'_>> = [("x", &x), ("y", &y), ("z", &z)]
            .into_iter()
            .map(|(name, v)| BaselineColumns {
                name,
                orientation: Orientation::HigherIsBetter,
                fitness: &v[fit.clone()],
                heldout: &v[held.clone()],
            })
            .collect();
        let c = Comparison::new(&truth[fit.clone()], &truth[held.clone()], &cols);
        let p = c.pair_ensemble.as_ref().unwrap();
        assert_eq!(p.members, ["x".to_string(), "y".to_string()]);
        assert_eq!(p.columns, [0, 1]);
        assert!(p.heldout.spearman > c.baselines["x"].spearman);
        assert_eq!(c.best_baseline, "pair_ensemble");
        assert_eq!(c.margin(1.0), 1.0 - p.heldout.spearman);
    }
}
