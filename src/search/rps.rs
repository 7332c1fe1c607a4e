//! The Rule-based Pruning Strategy (RPS): named rules that discard a candidate proxy before or
//! during its evaluation, so the search spends its time on promising ones.
//!
//! Every rule has a snake_case name ([`Rule::name`]), is counted (rejections and the
//! architecture evaluations it avoided, [`RuleCounts`]), is logged per iteration by the search,
//! and can be switched off on its own ([`RpsOptions::disabled_rules`]) or together with all
//! others ([`RpsOptions::enabled`]).
//!
//! **Static rules** (checked on the canonical expression, before any evaluation; extensions over
//! the reference code, spec §4.7 "optional static rules"). Only the part of the expression that
//! is evaluated counts: the canonical form has already dropped disconnected branches.
//! * `both_disconnected`: the expression has no value because of `disconnect`: a binary op with
//!   two disconnected operands, or a disconnected root.
//! * `ill_typed_matmul`: a `matmul` with an operand that is not provably a 0-d scalar or a 2-D
//!   matrix. Ranks are inferred statically: reductions give 0-d items, element-wise ops keep the
//!   rank, binary ops broadcast scalars, and input ranks come from [`StaticContext`] (taken from
//!   the first fitness architecture: an input whose items all have the same rank has that rank,
//!   otherwise it is unknown). Unknown ranks are not provable and reject. A matmul of scalars is
//!   valid here (it multiplies), unlike the reference where it always raised.
//! * `constant_on_scalar`: `softmax`, `logsoftmax`, `normalize`, `min_max`, `std` or `size`
//!   applied to a scalar-valued sub-expression ([`Expr::is_scalar`]); the result is a constant
//!   (1, 0, 0, 0, NaN, 1) whatever the architecture (unless a `total` above sums it over the
//!   items: `total(size(mean(x)))` counts the layers), so that branch carries no information. (This rejects the
//!   published BERT genotype, whose second branch is `logsoftmax(frobenius_norm(act))` = 0; the
//!   search still reaches its value through `disconnect`.)
//! * `self_subtraction`: `sub(x, y)` with identical canonical operands: identically 0.
//! * `duplicate`: the canonical key was already evaluated (or rejected) in this search, which
//!   includes every current population member and any copy of a parent when neither crossover
//!   nor mutation fired.
//!
//! **Numeric rules** (spec §4.7, the rules of the reference fitness function; checked per
//! architecture, in order, stopping at the first violation):
//! * `eval_error`: no value on an architecture (shape mismatch, empty input, ...; the reference's
//!   exception ⇒ −1). Mandatory: without a value there is no fitness.
//! * `non_finite`: NaN or ±inf on an architecture.
//! * `zero_value`: exactly 0 on an architecture.
//! * `constant_output`: all values identical after more than 3 architectures.
//! * `degenerate_correlation`: Spearman over the whole set is undefined (NaN, e.g. a constant
//!   proxy) or there are fewer than two values. Mandatory: a NaN fitness cannot be ranked.
//!
//! **Predictive rule** `predictive` (an extension): the candidate is first evaluated on the first
//! `predictive_k` (10) fitness architectures; when its Spearman there is below a threshold it is
//! dropped without evaluating the rest. The threshold ([`PredictiveThreshold`]) is by default
//! relative to the population: the fitness of its worst member (the one the child would replace)
//! minus a margin of 0.3 (`Population { quantile: 0.0, margin: 0.3 }`), so only children that
//! very probably cannot improve the population are dropped; the margin absorbs the noise of a
//! Spearman over 10 points (standard error ≈ 1/3). A NaN partial Spearman (constant on the
//! subset) also drops. A fixed threshold is available (`Fixed { value }`). The rule is not used
//! while building the initial population (there is no population to compare with yet), nor when
//! the fitness set has no more than `predictive_k` architectures.
//!
//! With `enabled: false` no rule prunes: no static rule, no predictive rule, no early exit.
//! Every candidate is evaluated on every architecture, and only the mandatory validity
//! conditions remain (a value on every architecture, a defined Spearman); NaN, ±inf and 0 are
//! then ordinary values ranked by Spearman (NaN anywhere makes the Spearman undefined).
//! Disabling a single numeric rule likewise turns its condition into an ordinary value.
//!
//! **Time saved** is estimated per rule as the number of architecture evaluations it avoided
//! (all of them for a static rule, the rest of the set for a numeric or predictive rejection),
//! converted to seconds with the mean time of a complete evaluation measured in the same run.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::proxy::eval::InputSource;
use crate::proxy::expr::{Expr, Input};
use crate::proxy::ops::{BinaryOp, UnaryOp};

/// A pruning rule (see the module docs for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Static: no value because of `disconnect`.
    BothDisconnected,
    /// Static: a matmul operand is not provably 0-d or 2-D.
    IllTypedMatmul,
    /// Static: an op that is constant on scalars applied to a scalar.
    ConstantOnScalar,
    /// Static: `sub(x, x)`.
    SelfSubtraction,
    /// Static: canonical key already seen in this search.
    Duplicate,
    /// Numeric (mandatory): no value on an architecture.
    EvalError,
    /// Numeric: NaN or ±inf on an architecture.
    NonFinite,
    /// Numeric: exactly 0 on an architecture.
    ZeroValue,
    /// Numeric: identical values on more than 3 architectures.
    ConstantOutput,
    /// Predictive: Spearman on the first k architectures below the threshold.
    Predictive,
    /// Numeric (mandatory): undefined Spearman over the whole set.
    DegenerateCorrelation,
}

impl Rule {
    /// All rules, in the order they are checked.
    pub const ALL: [Rule; 11] = [
        Rule::BothDisconnected,
        Rule::IllTypedMatmul,
        Rule::ConstantOnScalar,
        Rule::SelfSubtraction,
        Rule::Duplicate,
        Rule::EvalError,
        Rule::NonFinite,
        Rule::ZeroValue,
        Rule::ConstantOutput,
        Rule::Predictive,
        Rule::DegenerateCorrelation,
    ];

    /// The snake_case name used in logs, summaries and options.
    pub fn name(self) -> &'static str {
        match self {
            Rule::BothDisconnected => "both_disconnected",
            Rule::IllTypedMatmul => "ill_typed_matmul",
            Rule::ConstantOnScalar => "constant_on_scalar",
            Rule::SelfSubtraction => "self_subtraction",
            Rule::Duplicate => "duplicate",
            Rule::EvalError => "eval_error",
            Rule::NonFinite => "non_finite",
            Rule::ZeroValue => "zero_value",
            Rule::ConstantOutput => "constant_output",
            Rule::Predictive => "predictive",
            Rule::DegenerateCorrelation => "degenerate_correlation",
        }
    }

    /// True for the rules checked on the expression alone, before any evaluation.
    pub fn is_static(self) -> bool {
        matches!(
            self,
            Rule::BothDisconnected
                | Rule::IllTypedMatmul
                | Rule::ConstantOnScalar
                | Rule::SelfSubtraction
                | Rule::Duplicate
        )
    }

    /// True for the validity conditions that cannot be switched off (no fitness without them).
    pub fn is_mandatory(self) -> bool {
        matches!(self, Rule::EvalError | Rule::DegenerateCorrelation)
    }

    /// One line describing the rule.
    pub fn description(self) -> &'static str {
        match self {
            Rule::BothDisconnected => {
                "no value: both operands of a binary op (or the root) are disconnected"
            }
            Rule::IllTypedMatmul => "matmul operand not provably a scalar or a 2-D matrix",
            Rule::ConstantOnScalar => {
                "softmax/logsoftmax/normalize/min_max/std/size of a scalar is constant"
            }
            Rule::SelfSubtraction => "sub of identical operands is identically 0",
            Rule::Duplicate => "canonical form already evaluated in this search",
            Rule::EvalError => "no value on some architecture",
            Rule::NonFinite => "NaN or infinite value on some architecture",
            Rule::ZeroValue => "exactly zero on some architecture",
            Rule::ConstantOutput => "the same value on more than 3 architectures",
            Rule::Predictive => "rank correlation on the first k architectures below the threshold",
            Rule::DegenerateCorrelation => "Spearman correlation undefined",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Rule {
    type Err = String;

    /// Accepts the snake_case name (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|r| s.eq_ignore_ascii_case(r.name()))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|r| r.name()).collect();
                format!(
                    "unknown rule `{}`: expected one of {}",
                    crate::report::clip(s),
                    names.join(", ")
                )
            })
    }
}

/// How the predictive rule sets its threshold on the partial Spearman.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PredictiveThreshold {
    /// A fixed threshold.
    Fixed {
        /// Drop when the partial Spearman is below this.
        value: f64,
    },
    /// Relative to the current population: its `quantile` (0 = worst member, 0.5 = median,
    /// 1 = best) of the fitness, minus `margin`.
    Population {
        /// Which fitness of the population to compare with, in [0, 1].
        quantile: f64,
        /// Tolerance below it (≥ 0), for the noise of a Spearman over few points.
        margin: f64,
    },
}

impl Default for PredictiveThreshold {
    fn default() -> Self {
        PredictiveThreshold::Population {
            quantile: 0.0,
            margin: 0.3,
        }
    }
}

/// Switches and parameters of the RPS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpsOptions {
    /// Master switch: `false` turns off all pruning (only mandatory validity remains).
    pub enabled: bool,
    /// Rules switched off individually (mandatory rules cannot be).
    pub disabled_rules: Vec<Rule>,
    /// Size of the subset (the first fitness architectures) the predictive rule looks at.
    pub predictive_k: usize,
    /// Threshold of the predictive rule.
    pub predictive_threshold: PredictiveThreshold,
}

impl Default for RpsOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            disabled_rules: Vec::new(),
            predictive_k: 10,
            predictive_threshold: PredictiveThreshold::default(),
        }
    }
}

impl RpsOptions {
    /// All pruning off.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// True when `rule` applies: mandatory rules always, others when the RPS is enabled and the
    /// rule is not disabled.
    pub fn is_on(&self, rule: Rule) -> bool {
        rule.is_mandatory() || (self.enabled && !self.disabled_rules.contains(&rule))
    }

    /// Checks the parameters: mandatory rules cannot be disabled, `predictive_k ≥ 2`, the
    /// quantile in [0, 1], the margin ≥ 0, thresholds finite.
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = self.disabled_rules.iter().find(|r| r.is_mandatory()) {
            bail!("rule `{r}` cannot be disabled: without it a candidate has no fitness");
        }
        if self.predictive_k < 2 {
            bail!("predictive_k must be at least 2, got {}", self.predictive_k);
        }
        match self.predictive_threshold {
            PredictiveThreshold::Fixed { value } if !value.is_finite() => {
                bail!("predictive threshold must be finite, got {value}")
            }
            PredictiveThreshold::Population { quantile, margin }
                if !((0.0..=1.0).contains(&quantile) && margin >= 0.0 && margin.is_finite()) =>
            {
                bail!("predictive threshold needs quantile in [0, 1] and margin >= 0, got {quantile}, {margin}")
            }
            _ => Ok(()),
        }
    }

    /// The predictive threshold for the current population fitness values, or `None` when the
    /// rule does not apply (switched off, or no population yet).
    pub fn predictive_threshold(&self, population_fitness: &[f64]) -> Option<f64> {
        if !self.is_on(Rule::Predictive) {
            return None;
        }
        match self.predictive_threshold {
            PredictiveThreshold::Fixed { value } => Some(value),
            PredictiveThreshold::Population { quantile, margin } => {
                if population_fitness.is_empty() {
                    return None;
                }
                let mut sorted = population_fitness.to_vec();
                sorted.sort_by(f64::total_cmp);
                let pos = (quantile * (sorted.len() - 1) as f64).round() as usize;
                Some(sorted[pos.min(sorted.len() - 1)] - margin)
            }
        }
    }
}

/// What the static rules know about the inputs: the rank of each input's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StaticContext {
    /// Rank (number of dimensions) of the items of each input, indexed like [`Input::ALL`];
    /// `None` when unknown (absent, empty, or mixed ranks).
    pub input_ranks: [Option<usize>; 5],
}

impl StaticContext {
    /// Ranks read from one architecture's inputs (all architectures of a benchmark have the same
    /// ranks; only the sizes vary).
    pub fn from_source(src: &dyn InputSource) -> Self {
        let mut input_ranks = [None; 5];
        for input in Input::ALL {
            if let Some(list) = src.input(input) {
                if let Some(first) = list.first() {
                    if list.iter().all(|a| a.ndim() == first.ndim()) {
                        input_ranks[input.index()] = Some(first.ndim());
                    }
                }
            }
        }
        Self { input_ranks }
    }

    /// The statically known rank of the items of `e` (`None`: unknown or no value).
    pub fn rank(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Input(i) => self.input_ranks[i.index()],
            Expr::Unary(UnaryOp::Disconnect, _) => None,
            Expr::Unary(op, x) => {
                if op.is_reduction() {
                    Some(0)
                } else {
                    self.rank(x)
                }
            }
            Expr::Binary(op, a, b) => {
                if a.is_disconnected() {
                    return self.rank(b);
                }
                if b.is_disconnected() {
                    return self.rank(a);
                }
                match (self.rank(a), self.rank(b), op) {
                    (Some(0), r, _) | (r, Some(0), _) => r,
                    (Some(2), Some(2), BinaryOp::Matmul) => Some(2),
                    (Some(x), Some(y), op) if x == y && *op != BinaryOp::Matmul => Some(x),
                    _ => None,
                }
            }
        }
    }
}

/// Visits the evaluated part of `e` (disconnected operands of binary ops are skipped).
fn any_connected(e: &Expr, f: &mut dyn FnMut(&Expr) -> bool) -> bool {
    if f(e) {
        return true;
    }
    match e {
        Expr::Input(_) => false,
        Expr::Unary(_, x) => any_connected(x, f),
        Expr::Binary(_, a, b) => {
            (!a.is_disconnected() && any_connected(a, f))
                || (!b.is_disconnected() && any_connected(b, f))
        }
    }
}

/// True when `rule` (a static rule other than `duplicate`) fires on `e`, whatever the switches.
/// `e` should be canonical (so `sub(x, y)` with equivalent operands is seen as such).
pub fn static_rule_fires(rule: Rule, e: &Expr, ctx: &StaticContext) -> bool {
    match rule {
        Rule::BothDisconnected => {
            e.is_disconnected()
                || any_connected(
                    e,
                    &mut |n| matches!(n, Expr::Binary(_, a, b) if a.is_disconnected() && b.is_disconnected()),
                )
        }
        Rule::IllTypedMatmul => any_connected(e, &mut |n| match n {
            Expr::Binary(BinaryOp::Matmul, a, b)
                if !a.is_disconnected() && !b.is_disconnected() =>
            {
                let ok = |r: Option<usize>| matches!(r, Some(0) | Some(2));
                !(ok(ctx.rank(a)) && ok(ctx.rank(b)))
            }
            _ => false,
        }),
        Rule::ConstantOnScalar => constant_on_scalar(e, false),
        Rule::SelfSubtraction => any_connected(
            e,
            &mut |n| matches!(n, Expr::Binary(BinaryOp::Sub, a, b) if a == b),
        ),
        _ => false,
    }
}

/// True when the evaluated part of `e` applies an op that is constant on a scalar (`softmax`,
/// `logsoftmax`, `normalize`, `min_max`, `std`, `size`) to a scalar, outside a `total`: under
/// a `total` the constant is summed over the items, which counts them (the depth of the
/// network), so it is kept.
fn constant_on_scalar(e: &Expr, summed: bool) -> bool {
    match e {
        Expr::Input(_) => false,
        Expr::Unary(UnaryOp::Total, x) => constant_on_scalar(x, true),
        Expr::Unary(op, x) => {
            let constant = matches!(
                op,
                UnaryOp::Softmax
                    | UnaryOp::LogSoftmax
                    | UnaryOp::Normalize
                    | UnaryOp::MinMax
                    | UnaryOp::Std
                    | UnaryOp::Size
            );
            (constant && !summed && x.is_scalar()) || constant_on_scalar(x, summed)
        }
        Expr::Binary(_, a, b) => {
            (!a.is_disconnected() && constant_on_scalar(a, summed))
                || (!b.is_disconnected() && constant_on_scalar(b, summed))
        }
    }
}

/// The static rules other than `duplicate` that fire on `e`, whatever the switches (for
/// diagnostics and tests).
pub fn static_rules_fired(e: &Expr, ctx: &StaticContext) -> Vec<Rule> {
    Rule::ALL
        .into_iter()
        .filter(|r| r.is_static() && *r != Rule::Duplicate && static_rule_fires(*r, e, ctx))
        .collect()
}

/// The first enabled static rule that rejects the canonical expression `canon`, in
/// [`Rule::ALL`] order; `seen` tells whether its key was already evaluated in this search.
pub fn static_check(
    canon: &Expr,
    seen: bool,
    ctx: &StaticContext,
    opts: &RpsOptions,
) -> Option<Rule> {
    Rule::ALL.into_iter().find(|&r| {
        r.is_static()
            && opts.is_on(r)
            && if r == Rule::Duplicate {
                seen
            } else {
                static_rule_fires(r, canon, ctx)
            }
    })
}

/// Per-rule rejection counts and avoided architecture evaluations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounts {
    /// Candidates rejected by each rule.
    pub rejected: BTreeMap<Rule, u64>,
    /// Architecture evaluations avoided by each rule's rejections.
    pub skipped: BTreeMap<Rule, u64>,
}

impl RuleCounts {
    /// Records one rejection by `rule` that avoided `skipped` architecture evaluations.
    pub fn record(&mut self, rule: Rule, skipped: u64) {
        *self.rejected.entry(rule).or_default() += 1;
        *self.skipped.entry(rule).or_default() += skipped;
    }

    /// Total rejections.
    pub fn total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Rejections by rule name, every rule listed (0 when it never fired).
    pub fn rejected_by_name(&self) -> BTreeMap<String, u64> {
        Rule::ALL
            .iter()
            .map(|r| {
                (
                    r.name().to_string(),
                    self.rejected.get(r).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Avoided work by rule name in units of complete evaluations (`skipped / n_archs`).
    pub fn saved_evaluations_by_name(&self, n_archs: usize) -> BTreeMap<String, f64> {
        let n = n_archs.max(1) as f64;
        Rule::ALL
            .iter()
            .map(|r| {
                let s = self.skipped.get(r).copied().unwrap_or(0);
                (r.name().to_string(), s as f64 / n)
            })
            .collect()
    }

    /// Estimated seconds saved by rule: avoided complete evaluations × `mean_full_seconds`.
    pub fn seconds_saved_by_name(
        &self,
        n_archs: usize,
        mean_full_seconds: f64,
    ) -> BTreeMap<String, f64> {
        self.saved_evaluations_by_name(n_archs)
            .into_iter()
            .map(|(k, v)| (k, v * mean_full_seconds))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::canonical::canonical;
    use crate::proxy::parse::parse;

    /// Ranks like a BERT probe: act/head/softmax 3-D or 4-D, grad/weight 2-D.
    fn ctx() -> StaticContext {
        StaticContext {
            input_ranks: [Some(3), Some(3), Some(4), Some(2), Some(2)],
        }
    }

    fn fires(text: &str) -> Vec<Rule> {
        static_rules_fired(&canonical(&parse(text).unwrap()), &ctx())
    }

    #[test]
    fn each_static_rule_fires_on_its_violation_only() {
        let valid = [
            "add(mean(pow2(neg(head))), mean(frobenius_norm(act)))",
            "matmul(weight, grad)",
            "mean(matmul(mean(head), mean(act)))",
            "matmul(mean(head), weight)",
            "sub(mean(head), mean(act))",
            "softmax(head)",
            "add(mean(disconnect(head)), mean(act))",
            "std(act)",
            // Under `total` a per-item constant counts the items.
            "total(size(mean(head)))",
            "add(log(total(softmax(l1_norm(head)))), total(sum(act)))",
        ];
        for t in valid {
            assert!(fires(t).is_empty(), "{t}: {:?}", fires(t));
        }
        let cases = [
            (
                "add(mean(disconnect(head)), mean(disconnect(act)))",
                Rule::BothDisconnected,
            ),
            ("disconnect(act)", Rule::BothDisconnected),
            ("matmul(head, weight)", Rule::IllTypedMatmul),
            ("mean(matmul(softmax, mean(act)))", Rule::IllTypedMatmul),
            (
                "add(mean(head), mean(logsoftmax(frobenius_norm(act))))",
                Rule::ConstantOnScalar,
            ),
            ("softmax(mean(head))", Rule::ConstantOnScalar),
            ("add(mean(act), std(l1_norm(head)))", Rule::ConstantOnScalar),
            (
                "normalize(add(mean(act), mean(head)))",
                Rule::ConstantOnScalar,
            ),
            ("min_max(frobenius_norm(grad))", Rule::ConstantOnScalar),
            ("size(total(head))", Rule::ConstantOnScalar),
            ("softmax(total(size(mean(head))))", Rule::ConstantOnScalar),
            (
                "sub(mean(pow2(head)), mean(pow2(neg(head))))",
                Rule::SelfSubtraction,
            ),
        ];
        for (t, rule) in cases {
            assert_eq!(fires(t), vec![rule], "{t}");
        }
        // Unknown ranks are not provable.
        let none = StaticContext::default();
        let e = canonical(&parse("matmul(weight, grad)").unwrap());
        assert!(static_rule_fires(Rule::IllTypedMatmul, &e, &none));
        // A violation inside a dropped (disconnected) branch does not count.
        assert!(fires("add(softmax(mean(disconnect(head))), mean(act))").is_empty());
    }

    #[test]
    fn switches() {
        let e = canonical(&parse("softmax(mean(head))").unwrap());
        let on = RpsOptions::default();
        assert_eq!(
            static_check(&e, false, &ctx(), &on),
            Some(Rule::ConstantOnScalar)
        );
        let ok = canonical(&parse("mean(head)").unwrap());
        assert_eq!(static_check(&ok, false, &ctx(), &on), None);
        assert_eq!(static_check(&ok, true, &ctx(), &on), Some(Rule::Duplicate));
        let mut one_off = RpsOptions::default();
        one_off.disabled_rules.push(Rule::ConstantOnScalar);
        assert_eq!(static_check(&e, false, &ctx(), &one_off), None);
        assert_eq!(
            static_check(&e, true, &ctx(), &one_off),
            Some(Rule::Duplicate)
        );
        let off = RpsOptions::off();
        assert_eq!(static_check(&e, true, &ctx(), &off), None);
        assert!(off.is_on(Rule::EvalError) && off.is_on(Rule::DegenerateCorrelation));
        assert!(!off.is_on(Rule::NonFinite));
        let mut bad = RpsOptions::default();
        bad.disabled_rules.push(Rule::EvalError);
        assert!(bad.validate().is_err());
        RpsOptions::default().validate().unwrap();
    }

    #[test]
    fn names_and_thresholds() {
        for r in Rule::ALL {
            assert_eq!(r.name().parse::<Rule>(), Ok(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.name()));
        }
        let o = RpsOptions::default();
        assert_eq!(o.predictive_threshold(&[]), None);
        let t = o.predictive_threshold(&[0.9, 0.2, 0.5]).unwrap();
        assert!((t - (0.2 - 0.3)).abs() < 1e-12);
        let fixed = RpsOptions {
            predictive_threshold: PredictiveThreshold::Fixed { value: 0.0 },
            ..RpsOptions::default()
        };
        assert_eq!(fixed.predictive_threshold(&[]), Some(0.0));
        assert_eq!(RpsOptions::off().predictive_threshold(&[0.5]), None);
        let mut c = RuleCounts::default();
        c.record(Rule::Duplicate, 30);
        c.record(Rule::Predictive, 20);
        c.record(Rule::Duplicate, 30);
        assert_eq!(c.total(), 3);
        assert_eq!(c.rejected_by_name()["duplicate"], 2);
        assert_eq!(c.rejected_by_name()["zero_value"], 0);
        assert_eq!(c.saved_evaluations_by_name(30)["duplicate"], 2.0);
        assert_eq!(
            c.seconds_saved_by_name(30, 0.5)["predictive"],
            20.0 / 30.0 * 0.5
        );
    }
}
