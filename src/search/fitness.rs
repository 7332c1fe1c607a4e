//! Fitness: the Spearman rank correlation between a proxy's values and the ground truth over a
//! fixed set of architectures (spec §4.6; or Kendall τ, or a robust Spearman, see
//! [`FitnessMeasure`]), with the numeric and predictive pruning rules applied while the values
//! are computed. The predictive rule always uses Spearman on its first architectures.
//!
//! The set is a slice of probes (anything that is an [`InputSource`]) and the ground truth per
//! probe, oriented so that higher is better. Architecture `i` is `probes[i]`; values are memoised
//! per architecture index in a [`Memo`], so one memo must only ever be used with one set.
//! A fitness is `Some(ρ)` for a valid candidate, `None` for an invalid one (the reference's −1).

use std::time::Instant;

use anyhow::{bail, Result};

use super::options::{FitnessMeasure, ROBUST_SUBSETS};
use super::rps::{RpsOptions, Rule};
use crate::proxy::eval::Memo;
use crate::proxy::eval::{EvalError, InputSource};
use crate::proxy::expr::Expr;
use crate::proxy::set::{join, operands, rank_add, rank_join};
use crate::rng::Rng;
use crate::stats::{kendall_tau_b, spearman};

/// The architectures a search ranks, with their ground truth (higher = better).
#[derive(Clone, Copy)]
pub struct FitnessSet<'a> {
    probes: &'a [&'a dyn InputSource],
    truth: &'a [f64],
    either_sign: bool,
    measure: FitnessMeasure,
    companion: Option<&'a [Vec<f64>]>,
}

/// The result of evaluating one candidate on a [`FitnessSet`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Spearman over the whole set, or `None` when a rule rejected the candidate.
    pub fitness: Option<f64>,
    /// The rule that rejected it (`None` when valid).
    pub rule: Option<Rule>,
    /// Number of architectures it was evaluated on (all of them when valid).
    pub archs_evaluated: usize,
    /// Wall-clock seconds spent (not deterministic; for time-saved estimates only).
    pub seconds: f64,
    /// The fitness is |ρ| of a proxy whose ρ is negative (only with
    /// [`FitnessSet::with_either_sign`]): `neg` of the proxy has this fitness.
    pub negated: bool,
    /// A hash of the ranks the proxy gives the fitness architectures (0 when rejected); two
    /// proxies with equal hashes rank the set alike (e.g. `x` and `sqrt(x)`).
    pub ranking: u64,
}

impl<'a> FitnessSet<'a> {
    /// A set of probes and their ground truth; fails when the lengths differ, there are fewer
    /// than two architectures, or a truth value is not finite.
    pub fn new(probes: &'a [&'a dyn InputSource], truth: &'a [f64]) -> Result<Self> {
        if probes.len() != truth.len() {
            bail!(
                "fitness set: {} probes but {} ground-truth values",
                probes.len(),
                truth.len()
            );
        }
        if probes.len() < 2 {
            bail!(
                "fitness set: need at least 2 architectures, got {}",
                probes.len()
            );
        }
        if let Some(i) = truth.iter().position(|t| !t.is_finite()) {
            bail!(
                "fitness set: ground truth of architecture {i} is {}",
                truth[i]
            );
        }
        Ok(Self {
            probes,
            truth,
            either_sign: false,
            measure: FitnessMeasure::Spearman,
            companion: None,
        })
    }

    /// The same set scoring candidates with `measure` (default: Spearman ρ).
    pub fn with_measure(self, measure: FitnessMeasure) -> Self {
        Self { measure, ..self }
    }

    /// The same set scoring a candidate together with `columns` (complement search,
    /// [`crate::search::SearchOptions::complement`]): the fitness is the measure of the rank sum
    /// of the candidate's values and every column (each higher-is-better, one value per
    /// architecture). Fails when a column's length is not the set's.
    pub fn with_companion(self, columns: &'a [Vec<f64>]) -> Result<Self> {
        if let Some(c) = columns.iter().find(|c| c.len() != self.len()) {
            bail!(
                "fitness set: a companion column has {} values for {} architectures",
                c.len(),
                self.len()
            );
        }
        Ok(Self {
            companion: Some(columns),
            ..self
        })
    }

    /// The fitness of a candidate's values (one per architecture, all finite or not): the
    /// set's measure against the ground truth, NaN when undefined (e.g. constant values).
    /// With companion columns, the measure of their rank sum with the values (NaN when the
    /// values alone are degenerate, so a constant candidate does not ride on the companion).
    pub fn score(&self, values: &[f64]) -> f64 {
        self.prefix_score(values, |t, v| measure(self.measure, t, v))
    }

    /// `correlate` of the ground truth with the values of the first `values.len()`
    /// architectures, or with their rank sum with the companion columns over those
    /// architectures.
    fn prefix_score(&self, values: &[f64], correlate: impl Fn(&[f64], &[f64]) -> f64) -> f64 {
        let n = values.len();
        let truth = &self.truth[..n];
        let own = correlate(truth, values);
        match self.companion {
            None => own,
            Some(_) if own.is_nan() => own,
            Some(columns) => {
                let mut refs: Vec<&[f64]> = vec![values];
                refs.extend(columns.iter().map(|c| &c[..n]));
                correlate(truth, &crate::stats::rank_sum(&refs))
            }
        }
    }

    /// The same set scoring |ρ| when `on` (see [`crate::search::SearchOptions::either_sign`]);
    /// the predictive rule then compares |ρ| too.
    pub fn with_either_sign(self, on: bool) -> Self {
        Self {
            either_sign: on,
            ..self
        }
    }

    /// Number of architectures.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// Always false (a set has at least two architectures).
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// The ground truth.
    pub fn truth(&self) -> &'a [f64] {
        self.truth
    }

    /// The probes.
    pub fn probes(&self) -> &'a [&'a dyn InputSource] {
        self.probes
    }

    /// The proxy's value on every architecture, through the memo (no pruning). A rank join
    /// ([`crate::proxy::set`]) is joined across the set, NaN where an operand has no value.
    pub fn values(&self, expr: &Expr, memo: &mut Memo) -> Vec<Result<f64, EvalError>> {
        let mut part = |e: &Expr| -> Vec<Result<f64, EvalError>> {
            self.probes
                .iter()
                .enumerate()
                .map(|(i, p)| memo.value(i, e, *p))
                .collect()
        };
        match rank_join(expr) {
            None => part(expr),
            Some([a, b]) => {
                let finite = |v: Vec<Result<f64, EvalError>>| -> Vec<f64> {
                    v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect()
                };
                let (a, b) = (finite(part(a)), finite(part(b)));
                rank_add(&a, &b).into_iter().map(Ok).collect()
            }
        }
    }

    /// The fitness with the mandatory rules only: `Some(ρ)` when the proxy has a value on every
    /// architecture and the Spearman is defined.
    pub fn fitness(&self, expr: &Expr, memo: &mut Memo) -> Option<f64> {
        self.evaluate(expr, std::slice::from_mut(memo), &RpsOptions::off(), None)
            .fitness
    }

    /// Values of `expr` on the architectures `range`, computed by one thread per memo: memo `w`
    /// serves the architectures `i` with `i % memos.len() == w` (always the same ones, so each
    /// memo sees one consistent indexing).
    fn block_values(
        &self,
        expr: &Expr,
        memos: &mut [Memo],
        range: std::ops::Range<usize>,
    ) -> Vec<Result<f64, EvalError>> {
        let workers = memos.len();
        if workers <= 1 {
            let memo = &mut memos[0];
            return range
                .map(|i| memo.value_as_given(i, expr, self.probes[i]))
                .collect();
        }
        let mut out: Vec<Option<Result<f64, EvalError>>> = vec![None; range.len()];
        let start = range.start;
        std::thread::scope(|scope| {
            let handles: Vec<_> = memos
                .iter_mut()
                .enumerate()
                .map(|(w, memo)| {
                    let range = range.clone();
                    scope.spawn(move || {
                        range
                            .filter(|i| i % workers == w)
                            .map(|i| (i, memo.value_as_given(i, expr, self.probes[i])))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for (i, v) in h.join().expect("an evaluation thread panicked") {
                    out[i - start] = Some(v);
                }
            }
        });
        out.into_iter()
            .map(|v| v.expect("every architecture of the block is evaluated"))
            .collect()
    }

    /// Evaluates a candidate architecture by architecture (in set order), applying the numeric
    /// rules that `rps` switches on and, when `predictive_threshold` is given and the set is
    /// larger than `rps.predictive_k`, the predictive rule after the first `predictive_k`
    /// architectures. `expr` should be canonical (it is evaluated as given; see
    /// [`Memo::value_as_given`]).
    ///
    /// With several memos the values of a block (the first `predictive_k` architectures, then
    /// the rest) are computed in parallel, one thread per memo, and the rules are then applied
    /// in set order: the outcome is the same as with one memo (only the time differs).
    pub fn evaluate(
        &self,
        expr: &Expr,
        memos: &mut [Memo],
        rps: &RpsOptions,
        predictive_threshold: Option<f64>,
    ) -> Evaluation {
        let start = Instant::now();
        let n = self.len();
        let k = rps.predictive_k;
        let predictive = predictive_threshold.filter(|_| rps.is_on(Rule::Predictive) && k < n);
        let reject = |rule: Rule, done: usize| Evaluation {
            fitness: None,
            rule: Some(rule),
            archs_evaluated: done,
            seconds: start.elapsed().as_secs_f64(),
            negated: false,
            ranking: 0,
        };
        // A rank join is held to the rules operand by operand (each is a proxy of its own);
        // its values are the join of the operands' values over the architectures so far.
        let parts = operands(expr);
        let mut part_values: Vec<Vec<f64>> = vec![Vec::with_capacity(n); parts.len()];
        // The predictive rule needs the first k values before the rest are worth computing.
        let split = if predictive.is_some() { k } else { n };
        for block in [0..split, split..n].into_iter().filter(|b| !b.is_empty()) {
            let first = block.start;
            let columns: Vec<Vec<Result<f64, EvalError>>> = parts
                .iter()
                .map(|e| self.block_values(e, memos, block.clone()))
                .collect();
            for j in 0..block.len() {
                let i = first + j;
                for (values, column) in part_values.iter_mut().zip(&columns) {
                    let v = match column[j] {
                        Ok(v) => v,
                        Err(_) => return reject(Rule::EvalError, i + 1),
                    };
                    if !v.is_finite() && rps.is_on(Rule::NonFinite) {
                        return reject(Rule::NonFinite, i + 1);
                    }
                    if v == 0.0 && rps.is_on(Rule::ZeroValue) {
                        return reject(Rule::ZeroValue, i + 1);
                    }
                    values.push(v);
                    if values.len() > 3
                        && rps.is_on(Rule::ConstantOutput)
                        && values.iter().all(|x| x.to_bits() == values[0].to_bits())
                    {
                        return reject(Rule::ConstantOutput, i + 1);
                    }
                }
                if let Some(threshold) = predictive {
                    if i + 1 == k {
                        let rho = self.prefix_score(&join(&part_values), spearman);
                        let rho = if self.either_sign { rho.abs() } else { rho };
                        if rho.is_nan() || rho < threshold {
                            return reject(Rule::Predictive, k);
                        }
                    }
                }
            }
        }
        let values = join(&part_values);
        let rho = self.score(&values);
        if rho.is_nan() {
            return reject(Rule::DegenerateCorrelation, n);
        }
        let negated = self.either_sign && rho < 0.0;
        let ranks: Vec<u8> = crate::stats::ranks(&values)
            .iter()
            .flat_map(|r| r.to_bits().to_le_bytes())
            .collect();
        Evaluation {
            ranking: crate::report::fnv1a64(&ranks).max(1),
            fitness: Some(if negated { -rho } else { rho }),
            rule: None,
            archs_evaluated: n,
            seconds: start.elapsed().as_secs_f64(),
            negated,
        }
    }
}

/// `measure` of `values` against `truth` (see [`FitnessMeasure`]).
pub fn measure(measure: FitnessMeasure, truth: &[f64], values: &[f64]) -> f64 {
    match measure {
        FitnessMeasure::Spearman => spearman(truth, values),
        FitnessMeasure::Kendall => kendall_tau_b(truth, values),
        FitnessMeasure::Robust => {
            let n = truth.len();
            let half = n / 2;
            if half < 3 {
                return spearman(truth, values);
            }
            // Fixed halves: the same for every candidate of every search on `n` architectures.
            let mut rng = Rng::derive(ROBUST_SEED, &[n as u64]);
            let mut rhos = Vec::with_capacity(ROBUST_SUBSETS);
            for _ in 0..ROBUST_SUBSETS {
                let pick = rng.sample_indices(n, half);
                let t: Vec<f64> = pick.iter().map(|&i| truth[i]).collect();
                let v: Vec<f64> = pick.iter().map(|&i| values[i]).collect();
                rhos.push(spearman(&t, &v));
            }
            if rhos.iter().any(|r| r.is_nan()) {
                return f64::NAN;
            }
            let mean = rhos.iter().sum::<f64>() / rhos.len() as f64;
            let var = rhos.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rhos.len() as f64;
            mean - var.sqrt()
        }
    }
}

/// Seed of the fixed halves of the `robust` measure.
const ROBUST_SEED: u64 = 0x005e_ed0f_4a1f;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::canonical::canonical;
    use crate::proxy::parse::parse;
    use crate::search::testutil::Synthetic;

    fn c(t: &str) -> Expr {
        canonical(&parse(t).unwrap())
    }

    #[test]
    fn numeric_rules() {
        let s = Synthetic::new(30, 1);
        let probes = s.sources();
        let set = FitnessSet::new(&probes, &s.truth).unwrap();
        let mut memo = Memo::new();
        let on = RpsOptions::default();
        let good = set.evaluate(
            &c("mean(pow2(head))"),
            std::slice::from_mut(&mut memo),
            &on,
            None,
        );
        assert!(good.fitness.unwrap() > 0.8, "{good:?}");
        assert_eq!(good.archs_evaluated, 30);
        let cases = [
            ("mean(softmax)", Rule::EvalError),
            ("mean(add(head, weight))", Rule::EvalError),
            ("std(mean(head))", Rule::NonFinite),
            ("mean(sub(mean(head), mean(head)))", Rule::ZeroValue),
            ("mean(softmax(mean(head)))", Rule::ConstantOutput),
        ];
        for (t, rule) in cases {
            let e = set.evaluate(&c(t), std::slice::from_mut(&mut memo), &on, None);
            assert_eq!(e.rule, Some(rule), "{t}: {e:?}");
            assert_eq!(e.fitness, None);
        }
        // Constant on more than three architectures: stops at the fourth.
        let e = set.evaluate(
            &c("mean(softmax(mean(head)))"),
            std::slice::from_mut(&mut memo),
            &on,
            None,
        );
        assert_eq!(e.archs_evaluated, 4);
        // With pruning off the constant proxy is evaluated everywhere and then has no Spearman.
        let off = RpsOptions::off();
        let e = set.evaluate(
            &c("mean(softmax(mean(head)))"),
            std::slice::from_mut(&mut memo),
            &off,
            None,
        );
        assert_eq!(
            (e.rule, e.archs_evaluated),
            (Some(Rule::DegenerateCorrelation), 30)
        );
        // Predictive: a good proxy passes a fixed threshold, an anti-correlated one does not.
        let pass = set.evaluate(
            &c("mean(pow2(head))"),
            std::slice::from_mut(&mut memo),
            &on,
            Some(0.0),
        );
        assert!(pass.fitness.is_some());
        let fail = set.evaluate(
            &c("neg(mean(pow2(head)))"),
            std::slice::from_mut(&mut memo),
            &on,
            Some(0.0),
        );
        assert_eq!(
            (fail.rule, fail.archs_evaluated),
            (Some(Rule::Predictive), 10)
        );
        let neg = set.fitness(&c("neg(mean(pow2(head)))"), &mut memo).unwrap();
        assert!((neg + good.fitness.unwrap()).abs() < 1e-12);
        assert!(FitnessSet::new(&probes[..1], &s.truth[..1]).is_err());
        // Other measures: Kendall τ and the robust Spearman (below ρ for a noisy proxy, equal
        // to 1 for a perfect one).
        let vals: Vec<f64> = set
            .values(&c("mean(pow2(head))"), &mut memo)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let rho = good.fitness.unwrap();
        let tau = set.with_measure(FitnessMeasure::Kendall).score(&vals);
        assert_eq!(tau, kendall_tau_b(&s.truth, &vals));
        let robust = set.with_measure(FitnessMeasure::Robust).score(&vals);
        assert!(robust < rho && robust > rho - 0.5, "{robust} vs {rho}");
        assert_eq!(
            robust,
            set.with_measure(FitnessMeasure::Robust).score(&vals)
        );
        let perfect = set.with_measure(FitnessMeasure::Robust).score(&s.truth);
        assert!((perfect - 1.0).abs() < 1e-12, "{perfect}");
        assert!(FitnessSet::new(&probes, &s.truth[..3]).is_err());
    }

    #[test]
    fn a_companion_is_ranked_with_the_candidate() {
        let s = Synthetic::new(30, 5);
        let probes = s.sources();
        let mut memo = Memo::new();
        // A weak companion column: the truth with large noise.
        let mut rng = Rng::new(9);
        let weak: Vec<f64> = s.truth.iter().map(|t| t + 2.0 * rng.normal()).collect();
        let columns = vec![weak.clone()];
        let plain = FitnessSet::new(&probes, &s.truth)
            .unwrap()
            .with_measure(FitnessMeasure::Kendall);
        let set = plain.with_companion(&columns).unwrap();
        let expr = c("mean(pow2(head))");
        let vals: Vec<f64> = set
            .values(&expr, &mut memo)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let joined = crate::stats::rank_sum(&[&vals, &weak]);
        let want = kendall_tau_b(&s.truth, &joined);
        assert_eq!(set.score(&vals), want);
        assert_ne!(want, plain.score(&vals));
        let on = RpsOptions::default();
        let e = set.evaluate(&expr, std::slice::from_mut(&mut memo), &on, None);
        assert_eq!(e.fitness, Some(want));
        // The ranking hash is the candidate's own: the same as without the companion.
        let p = plain.evaluate(&expr, std::slice::from_mut(&mut memo), &on, None);
        assert_eq!(e.ranking, p.ranking);
        // The predictive rule reads the joined prefix: the anti-correlated candidate joined
        // with the companion.
        let anti = c("neg(mean(pow2(head)))");
        let k = on.predictive_k;
        let anti_vals: Vec<f64> = vals.iter().map(|v| -v).collect();
        let prefix = spearman(
            &s.truth[..k],
            &crate::stats::rank_sum(&[&anti_vals[..k], &weak[..k]]),
        );
        let mut at = |threshold: f64| {
            set.evaluate(&anti, std::slice::from_mut(&mut memo), &on, Some(threshold))
                .rule
        };
        assert_eq!(at(prefix - 1e-9), None);
        assert_eq!(at(prefix + 1e-9), Some(Rule::Predictive));
        // A constant candidate has no fitness, companion or not.
        assert!(set.score(&vec![1.0; 30]).is_nan());
        // Columns must have one value per architecture.
        let short = vec![weak[..29].to_vec()];
        assert!(plain.with_companion(&short).is_err());
    }

    #[test]
    fn a_rank_join_is_ranked_across_the_set_and_ruled_operand_by_operand() {
        let s = Synthetic::new(30, 2);
        let probes = s.sources();
        let set = FitnessSet::new(&probes, &s.truth).unwrap();
        let mut memo = Memo::new();
        let on = RpsOptions::default();
        let value = |t: &str, memo: &mut Memo| -> Vec<f64> {
            set.values(&c(t), memo)
                .into_iter()
                .map(Result::unwrap)
                .collect()
        };
        let a = value("mean(pow2(head))", &mut memo);
        let b = value("mean(abs(weight))", &mut memo);
        let joined = c("rank_add(mean(pow2(head)), mean(abs(weight)))");
        assert_eq!(value(&joined.to_string(), &mut memo), rank_add(&a, &b));
        let e = set.evaluate(&joined, std::slice::from_mut(&mut memo), &on, Some(-1.0));
        let rho = spearman(&s.truth, &rank_add(&a, &b));
        assert_eq!(e.fitness, Some(rho));
        assert_eq!(e.archs_evaluated, 30);
        // The same with two memos (the operands' blocks are computed in parallel).
        let mut memos = [Memo::new(), Memo::new()];
        assert_eq!(
            set.evaluate(&joined, &mut memos, &on, Some(-1.0)).fitness,
            Some(rho)
        );
        // An operand without a value, or constant, rejects the join like a proxy of its own.
        let cases = [
            ("rank_add(mean(softmax), mean(head))", Rule::EvalError),
            (
                "rank_add(mean(softmax(mean(head))), mean(head))",
                Rule::ConstantOutput,
            ),
        ];
        for (t, rule) in cases {
            let e = set.evaluate(&c(t), std::slice::from_mut(&mut memo), &on, None);
            assert_eq!(e.rule, Some(rule), "{t}: {e:?}");
        }
        // The predictive rule ranks within the first k architectures.
        let fail = set.evaluate(
            &c("rank_add(neg(mean(pow2(head))), neg(mean(abs(head))))"),
            std::slice::from_mut(&mut memo),
            &on,
            Some(0.0),
        );
        assert_eq!(
            (fail.rule, fail.archs_evaluated),
            (Some(Rule::Predictive), 10)
        );
    }
}
