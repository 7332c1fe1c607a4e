//! Scoring: probe each selected architecture once, compute every requested proxy from that
//! probe, and correlate each proxy with the ground truth.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::bench::{BenchKind, Benchmark};
use crate::models;
use crate::probe::memory::MemoryLimit;
use crate::probe::{Probe, ProbeOptions};
use crate::proxy::builtin::{self, Builtin, Orientation};
use crate::proxy::eval::eval;
use crate::proxy::expr::Expr;
use crate::proxy::genotype::{builtin_genotype, BUILTIN_GENOTYPES};
use crate::report::clip;
use crate::stats;

/// A proxy the scorer can compute from a probe.
pub enum Proxy {
    /// A human-designed proxy.
    Builtin(&'static Builtin),
    /// A symbolic expression (a published LPZero genotype or any expression text).
    Expr {
        /// The name it was requested by (the genotype name or the expression text).
        name: String,
        /// The expression.
        expr: Expr,
        /// What a higher value means (published genotypes carry theirs; searched
        /// expressions are higher-is-better by construction of the fitness).
        orientation: Orientation,
    },
}

impl Proxy {
    /// Resolves a proxy: a built-in name, a published genotype name (`lpzero_bert`,
    /// `lpzero_csv_bert`, `lpzero_gpt2`) or an expression in text form.
    pub fn parse(name: &str) -> Result<Self> {
        if let Some(b) = builtin::find(name) {
            return Ok(Proxy::Builtin(b));
        }
        if let Some(expr) = builtin_genotype(name) {
            // The published GPT-2 proxy is inversely oriented (spec §4.8).
            let orientation = if name == "lpzero_gpt2" {
                Orientation::LowerIsBetter
            } else {
                Orientation::HigherIsBetter
            };
            return Ok(Proxy::Expr {
                name: name.to_string(),
                expr,
                orientation,
            });
        }
        if name.contains('(') {
            let expr = Expr::parse(name).map_err(|e| anyhow::anyhow!("`{}`: {e}", clip(name)))?;
            return Ok(Proxy::Expr {
                name: name.to_string(),
                expr,
                orientation: Orientation::HigherIsBetter,
            });
        }
        let mut names: Vec<&str> = builtin::BUILTINS.iter().map(|b| b.name).collect();
        names.extend(BUILTIN_GENOTYPES);
        bail!(
            "unknown proxy `{}`; expected one of: {}, or an expression such as \
             `add(mean(pow2(head)), mean(abs(act)))`",
            clip(name),
            names.join(", ")
        )
    }

    /// Parses a list of proxies separated by `,` or `;` outside parentheses (so expressions, which
    /// hold commas inside their calls, mix freely with names). The item `all` stands for every
    /// built-in proxy of the family computed from the probe's single pass and the family's
    /// published LPZero genotypes (`lpzero baselines` adds the extra-pass baselines); a proxy
    /// named twice is kept once, at its first place.
    pub fn parse_list(text: &str, kind: BenchKind) -> Result<Vec<Self>> {
        if text.trim().is_empty() {
            bail!("no proxy given: expected a name, an expression, a list of them, or `all`");
        }
        let mut out: Vec<Self> = Vec::new();
        for (i, item) in split_top_level(text).into_iter().enumerate() {
            let found = match item.trim() {
                "" => bail!(
                    "item {} of the proxy list `{}` is empty (two separators in a row, or one at \
                     an end)",
                    i + 1,
                    clip(text)
                ),
                "all" => Self::all(kind)?,
                name => vec![Self::parse(name)?],
            };
            for proxy in found {
                if !out.iter().any(|p| p.name() == proxy.name()) {
                    out.push(proxy);
                }
            }
        }
        Ok(out)
    }

    /// Every built-in single-pass proxy of the family, then its published genotypes.
    fn all(kind: BenchKind) -> Result<Vec<Self>> {
        let mut all: Vec<Self> = builtin::for_family(kind)
            .filter(|b| !b.extra_passes())
            .map(Proxy::Builtin)
            .collect();
        for name in models::family(kind).genotypes() {
            all.push(Self::parse(name)?);
        }
        Ok(all)
    }

    /// The proxy's name.
    pub fn name(&self) -> String {
        match self {
            Proxy::Builtin(b) => b.name.to_string(),
            Proxy::Expr { name, .. } => name.clone(),
        }
    }

    /// What a higher value means.
    pub fn orientation(&self) -> Orientation {
        match self {
            Proxy::Builtin(b) => b.orientation,
            Proxy::Expr { orientation, .. } => *orientation,
        }
    }

    /// The operands of a rank join (`rank_add(a, b)`, [`crate::proxy::set`]): a proxy whose
    /// values are ranks across the scored set, not a function of one probe.
    pub fn rank_join(&self) -> Option<[&Expr; 2]> {
        match self {
            Proxy::Expr { expr, .. } => crate::proxy::set::rank_join(expr),
            Proxy::Builtin(_) => None,
        }
    }

    /// True when the proxy needs the probe's extra passes.
    pub fn needs_extra_passes(&self) -> bool {
        matches!(self, Proxy::Builtin(b) if b.extra_passes())
    }

    /// True when the proxy sums `synaptic_diversity`'s terms ([`Builtin::reads_diversity_terms`]).
    pub fn reads_diversity_terms(&self) -> bool {
        matches!(self, Proxy::Builtin(b) if b.reads_diversity_terms())
    }

    /// The proxy's value on a probe (may be NaN or infinite: a handled outcome).
    pub fn compute(&self, probe: &Probe) -> f64 {
        match self {
            Proxy::Builtin(b) => (b.compute)(probe),
            // No value (empty input, invalid shapes) is a NaN: ranked last, never a crash.
            Proxy::Expr { expr, .. } => eval(expr, probe).unwrap_or(f64::NAN),
        }
    }
}

/// Every proxy's value on one probe, in order, each with the seconds it took (with the CPU
/// seconds of work the probe did for it ahead, [`Probe::diversity_seconds_ahead`]): what
/// [`Proxy::compute`] gives for each, bit for bit, except that a built-in that is another
/// listed built-in's value divided by a count ([`builtin::derived_from`]) is derived from that
/// value once it is known instead of being computed again.
pub fn compute_all_timed(proxies: &[Proxy], probe: &Probe) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(proxies.len());
    for p in proxies {
        let start = Instant::now();
        let known = match p {
            Proxy::Builtin(b) => builtin::derived_from(b.name).and_then(|(base, divisor)| {
                proxies
                    .iter()
                    .zip(&out)
                    .find(|(q, _)| matches!(q, Proxy::Builtin(c) if c.name == base))
                    .map(|(_, (v, _))| v / divisor(probe))
            }),
            // A rank join has no value on one probe: its scorer joins its operands over the
            // set ([`Job::score`]); nothing is computed for it here.
            Proxy::Expr { .. } if p.rank_join().is_some() => Some(f64::NAN),
            Proxy::Expr { .. } => None,
        };
        let computed = known.is_none();
        let v = known.unwrap_or_else(|| p.compute(probe));
        let mut seconds = start.elapsed().as_secs_f64();
        if computed && p.reads_diversity_terms() {
            // The part of the work done ahead, during the probe, counts too.
            seconds += probe.diversity_seconds_ahead();
        }
        out.push((v, seconds));
    }
    out
}

/// Fails, naming the proxy and `job`, when a proxy of `proxies` is a rank join: for jobs that
/// score architectures one at a time or in changing groups, where ranks across "the scored
/// set" would mean nothing.
pub fn refuse_rank_joins(proxies: &[Proxy], job: &str) -> Result<()> {
    if let Some(p) = proxies.iter().find(|p| p.rank_join().is_some()) {
        bail!(
            "`{}` is a rank join (a sum of ranks across the architectures scored together), which \
             {job} cannot score: score it over the whole set with `lpzero score`, which joins it \
             there (`lpzero nas --scores` reads that table)",
            clip(&p.name())
        );
    }
    Ok(())
}

/// [`compute_all_timed`] without the timings.
pub fn compute_all(proxies: &[Proxy], probe: &Probe) -> Vec<f64> {
    compute_all_timed(proxies, probe)
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

/// Correlation of one proxy with the ground truth over the scored architectures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxySummary {
    /// Proxy name.
    pub proxy: String,
    /// What a higher value means.
    pub orientation: Orientation,
    /// Architectures scored.
    pub n: usize,
    /// Number of NaN/±Inf values (ranked last before correlating).
    pub non_finite: usize,
    /// Spearman ρ between ground truth (higher = better) and the raw proxy value.
    pub spearman: f64,
    /// Kendall τ-b, same convention.
    pub kendall: f64,
    /// Overlap of the top-10 % sets by ground truth and by proxy.
    pub top10_overlap: f64,
}

/// Per-architecture values of every requested proxy, with the ground truth.
pub struct ScoreTable {
    /// Keys of the scored architectures, in selection order.
    pub keys: Vec<String>,
    /// Ground truth of each scored architecture.
    pub truth: Vec<f64>,
    /// `values[p][a]`: proxy `p` on architecture `a`.
    pub values: Vec<Vec<f64>>,
    /// Proxy names, parallel to `values`.
    pub names: Vec<String>,
    /// Correlations, parallel to `values`.
    pub summaries: Vec<ProxySummary>,
    /// Seconds spent probing (sum over architectures, all threads), extra passes excluded.
    pub probe_seconds: f64,
    /// Seconds of each architecture's probe (extra passes excluded), parallel to `keys`.
    pub arch_probe_seconds: Vec<f64>,
    /// Seconds spent computing each proxy (sum over architectures), parallel to `values`;
    /// a proxy's extra pass counts here (Synflow's pass is split between `synflow` and
    /// `logsynflow` when both are requested).
    pub proxy_seconds: Vec<f64>,
    /// Wall-clock seconds of the whole scoring.
    pub seconds: f64,
}

impl ScoreTable {
    /// Appends the column [`RANK_SUM`]: for every architecture, the sum over `proxies` (the
    /// table's columns, in order) of its rank by that proxy's orientation, NaN and infinite
    /// values ranked last; higher = better. A rank-sum ensemble, as the search reports one.
    pub fn add_rank_sum(&mut self, proxies: &[Proxy]) -> Result<()> {
        if self.names.iter().any(|n| n == RANK_SUM) {
            bail!("a proxy is already named `{RANK_SUM}`");
        }
        let sum = rank_sum_of(proxies, &self.values)?;
        self.summaries.push(summarize(
            RANK_SUM,
            Orientation::HigherIsBetter,
            &self.truth,
            &sum,
        ));
        self.names.push(RANK_SUM.to_string());
        self.values.push(sum);
        self.proxy_seconds.push(0.0);
        Ok(())
    }
}

/// Name of the rank-sum column (`score --rank-sum`).
pub const RANK_SUM: &str = "rank_sum";

/// The rank-sum ensemble of `proxies` from their values (`values[p][a]`, one row per proxy):
/// per architecture, the sum of its ranks by each proxy's orientation, NaN and infinite values
/// ranked last; higher = better.
pub fn rank_sum_of(proxies: &[Proxy], values: &[Vec<f64>]) -> Result<Vec<f64>> {
    if proxies.len() != values.len() || proxies.len() < 2 {
        bail!(
            "a rank sum needs at least two proxies, one per column (got {} proxies for {} \
             columns)",
            proxies.len(),
            values.len()
        );
    }
    let oriented: Vec<Vec<f64>> = proxies
        .iter()
        .zip(values)
        .map(|(p, v)| crate::compare::oriented(v, p.orientation()))
        .collect();
    let refs: Vec<&[f64]> = oriented.iter().map(Vec::as_slice).collect();
    Ok(crate::stats::rank_sum(&refs))
}

/// Whether and how a written score table has a `truth` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruthColumn {
    /// No `truth` column (`id,<proxy>...`).
    Omit,
    /// A `truth` column with each architecture's ground truth (`id,truth,<proxy>...`).
    Values,
    /// A `truth` column left empty, for architectures without a ground truth.
    Empty,
}

impl TruthColumn {
    /// The `truth` column of `score`'s table: the values, or empty when the benchmark has no
    /// ground truth.
    pub fn for_truth(has_truth: bool) -> Self {
        if has_truth {
            TruthColumn::Values
        } else {
            TruthColumn::Empty
        }
    }
}

impl ScoreTable {
    /// The per-architecture values as CSV cells: the header `id`, `truth` (unless
    /// [`TruthColumn::Omit`]) and one column per proxy, then one row per architecture
    /// (numbers as [`crate::report::csv_number`] writes them).
    pub fn csv_cells(&self, truth: TruthColumn) -> (Vec<String>, Vec<Vec<String>>) {
        let mut header = vec!["id".to_string()];
        if truth != TruthColumn::Omit {
            header.push("truth".to_string());
        }
        header.extend(self.names.iter().cloned());
        let rows = (0..self.keys.len())
            .map(|i| {
                let mut row = vec![self.keys[i].clone()];
                match truth {
                    TruthColumn::Omit => {}
                    TruthColumn::Values => row.push(crate::report::csv_number(self.truth[i])),
                    TruthColumn::Empty => row.push(String::new()),
                }
                row.extend(self.values.iter().map(|v| crate::report::csv_number(v[i])));
                row
            })
            .collect();
        (header, rows)
    }

    /// The per-architecture values as CSV text ([`ScoreTable::csv_cells`]).
    pub fn csv(&self, truth: TruthColumn) -> String {
        let (header, rows) = self.csv_cells(truth);
        let mut text = Vec::new();
        crate::report::write_csv(&mut text, &header, &rows).expect("writing to memory cannot fail");
        String::from_utf8(text).expect("CSV cells are text")
    }

    /// Writes the per-architecture values as a CSV file ([`ScoreTable::csv_cells`]), whole or
    /// not at all ([`crate::report::write_csv_file`]).
    pub fn write_csv(&self, path: &std::path::Path, truth: TruthColumn) -> Result<()> {
        let (header, rows) = self.csv_cells(truth);
        crate::report::write_csv_file(path, &header, &rows)
    }
}

/// One scoring job: the architectures to probe, the proxies to compute from each probe, and
/// how to probe (settings, worker threads, a memory budget to take turns within). Every
/// command that scores architectures (`score`, `baselines`, `bench`, `nas`, a shard of any
/// of them) describes its work as a `Job` and runs it through [`Job::score`] or
/// [`Job::score_each`], so they all compute the same values the same way.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    /// The benchmark.
    pub bench: &'a Benchmark,
    /// The architectures (positions in the benchmark), in output order.
    pub selection: &'a [usize],
    /// The proxies, in output order.
    pub proxies: &'a [Proxy],
    /// The probe settings.
    pub opts: &'a ProbeOptions,
    /// Worker threads (architectures probed at once).
    pub threads: usize,
    /// A memory budget for the whole process the probes take turns within (such as
    /// `baselines --memory-budget`; see [`models::probe_map_within`]); `None`: only probing's
    /// own limit. The turns change no value, only which probes run at the same time.
    pub turns: Option<MemoryLimit>,
}

impl<'a> Job<'a> {
    /// Scoring `proxies` on the `selection` of `bench`, probed with `opts` on `threads`
    /// workers, without a memory budget of its own.
    pub fn new(
        bench: &'a Benchmark,
        selection: &'a [usize],
        proxies: &'a [Proxy],
        opts: &'a ProbeOptions,
        threads: usize,
    ) -> Self {
        Self {
            bench,
            selection,
            proxies,
            opts,
            threads,
            turns: None,
        }
    }

    /// The same job, its probes taking turns within `turns` (see the field).
    pub fn within(self, turns: Option<MemoryLimit>) -> Self {
        Self { turns, ..self }
    }

    /// The same job on other architectures of the same benchmark (a shard's pending share).
    pub fn on<'s>(&self, selection: &'s [usize]) -> Job<'s>
    where
        'a: 's,
    {
        Job { selection, ..*self }
    }

    /// Probes the selected architectures once each and computes every proxy; `on_done` after
    /// each architecture. A rank join (`rank_add(a, b)`) is joined across the selection: its
    /// operands are computed on every probe, then their ranks over the selection are added.
    pub fn score(&self, on_done: impl Fn() + Sync) -> Result<ScoreTable> {
        let start = Instant::now();
        let rows = self.score_each(|_, _| Ok(()), on_done)?;
        let (bench, selection, proxies) = (self.bench, self.selection, self.proxies);
        let truth = bench.truths(selection);
        let mut values = vec![Vec::with_capacity(rows.len()); proxies.len()];
        let mut proxy_seconds = vec![0.0; proxies.len()];
        let mut probe_seconds = 0.0;
        let mut arch_probe_seconds = Vec::with_capacity(rows.len());
        for row in &rows {
            probe_seconds += row.probe_seconds;
            arch_probe_seconds.push(row.probe_seconds);
            for (p, (v, t)) in row.proxies.iter().enumerate() {
                values[p].push(*v);
                proxy_seconds[p] += t;
            }
        }
        let joins = proxies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.rank_join().is_some());
        for (j, (p, _)) in joins.enumerate() {
            let operand = |k: usize| -> Vec<f64> { rows.iter().map(|r| r.operands[k]).collect() };
            values[p] = crate::proxy::set::rank_add(&operand(2 * j), &operand(2 * j + 1));
        }
        let summaries = proxies
            .iter()
            .zip(&values)
            .map(|(proxy, vals)| summarize(&proxy.name(), proxy.orientation(), &truth, vals))
            .collect();
        Ok(ScoreTable {
            keys: selection
                .iter()
                .map(|&i| bench.entries[i].key.clone())
                .collect(),
            truth,
            names: proxies.iter().map(|p| p.name()).collect(),
            values,
            summaries,
            probe_seconds,
            arch_probe_seconds,
            proxy_seconds,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Probes the selected architectures and computes every proxy on each probe, calling
    /// `each(index, scores)` (`index`: the architecture's position in the benchmark) on the
    /// worker as soon as an architecture is done, so a caller can keep it (a shard file)
    /// before the others finish; `on_done` after each architecture. Returns the scores in
    /// selection order (a rank join's value NaN, see [`ArchScores`]); stops at the first
    /// error, of probing or of `each`.
    pub fn score_each(
        &self,
        each: impl Fn(usize, &ArchScores) -> Result<()> + Sync,
        on_done: impl Fn() + Sync,
    ) -> Result<Vec<ArchScores>> {
        let (bench, selection, proxies) = (self.bench, self.selection, self.proxies);
        // Validate the batch options even when no probe runs, so bad input always errors.
        models::family(bench.kind).batch(self.opts)?;
        if proxies
            .iter()
            .all(|p| matches!(p, Proxy::Builtin(b) if b.name == "params"))
        {
            // Parameter counts need the model's tensors but no forward pass.
            let counts = crate::params::count(bench, selection, self.opts.sizes)?;
            return selection
                .iter()
                .zip(counts)
                .map(|(&index, (_, count))| {
                    let scores = ArchScores {
                        probe_seconds: 0.0,
                        proxies: vec![(count as f64, 0.0); proxies.len()],
                        operands: Vec::new(),
                    };
                    each(index, &scores)?;
                    on_done();
                    Ok(scores)
                })
                .collect();
        }
        let opts = &ProbeOptions {
            extra_passes: self.opts.extra_passes || proxies.iter().any(Proxy::needs_extra_passes),
            diversity_ahead: self.opts.diversity_ahead
                || proxies.iter().any(Proxy::reads_diversity_terms),
            ..self.opts.clone()
        };
        models::probe_map_within(
            bench,
            selection,
            opts,
            self.threads,
            self.turns,
            |index, probe| {
                let scores = score_probe(proxies, &probe);
                each(index, &scores)?;
                Ok(scores)
            },
            on_done,
        )
    }
}

/// What one architecture's probe gave [`Job::score_each`].
#[derive(Clone, Debug)]
pub struct ArchScores {
    /// Seconds of probing (building, forward, backward, capture), extra passes excluded.
    pub probe_seconds: f64,
    /// Per proxy, in the order given: its value and the seconds it took (an extra pass it
    /// alone reads counted in; a shared one divided among its readers). A rank join's value
    /// is NaN here: it exists only across architectures ([`Job::score`] joins it).
    pub proxies: Vec<(f64, f64)>,
    /// The operands of the rank joins among the proxies, two per join in proxy order.
    pub operands: Vec<f64>,
}

/// Every proxy of `proxies` on one probe, timed ([`ArchScores`]).
fn score_probe(proxies: &[Proxy], probe: &Probe) -> ArchScores {
    let mut probe_seconds = probe.seconds;
    // The Synflow pass is shared by the requested proxies that read it.
    let synflow_users = proxies
        .iter()
        .filter(|p| matches!(p, Proxy::Builtin(b) if matches!(b.name, "synflow" | "logsynflow")))
        .count()
        .max(1) as f64;
    let mut timed: Vec<(f64, f64)> = proxies
        .iter()
        .zip(compute_all_timed(proxies, probe))
        .map(|(p, (v, mut secs))| {
            if let (Some(ex), Proxy::Builtin(b)) = (&probe.extras, p) {
                let pass = match b.name {
                    "grasp" => ex.grasp_seconds,
                    "synflow" | "logsynflow" => ex.synflow_seconds / synflow_users,
                    _ => 0.0,
                };
                secs += pass;
                probe_seconds -= pass;
            }
            (v, secs)
        })
        .collect();
    // A rank join's operands, two per join in proxy order (joined after every probe).
    let mut operands = Vec::new();
    for (p, proxy) in proxies.iter().enumerate() {
        if let Some(pair) = proxy.rank_join() {
            let start = Instant::now();
            operands.extend(pair.map(|e| eval(e, probe).unwrap_or(f64::NAN)));
            timed[p].1 = start.elapsed().as_secs_f64();
        }
    }
    ArchScores {
        probe_seconds: probe_seconds.max(0.0),
        proxies: timed,
        operands,
    }
}

/// Correlates one proxy's values with the ground truth. Values are first oriented (negated
/// for lower-is-better proxies) so that NaN/Inf rank last, as the worst architectures; the
/// reported correlations are those of the raw values. A NaN in `truth` (architectures without
/// a ground truth) makes every statistic NaN.
pub fn summarize(
    name: &str,
    orientation: Orientation,
    truth: &[f64],
    values: &[f64],
) -> ProxySummary {
    let sign = orientation.sign();
    let oriented: Vec<f64> = values.iter().map(|v| sign * v).collect();
    let (oriented, non_finite) = stats::sanitize(&oriented);
    let clean: Vec<f64> = oriented.iter().map(|v| sign * v).collect();
    let c = stats::correlate(truth, &clean);
    let top10_overlap = if truth.iter().any(|t| t.is_nan()) {
        f64::NAN
    } else {
        stats::top_k(truth, &oriented, 10.0).overlap
    };
    ProxySummary {
        proxy: name.to_string(),
        orientation,
        n: values.len(),
        non_finite,
        spearman: c.spearman,
        kendall: c.kendall,
        top10_overlap,
    }
}

/// Splits a proxy list at every `,` and `;` outside parentheses. Unbalanced parentheses are left
/// to the expression parser, which names the problem.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | ';' if depth <= 0 => {
                items.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_sum_adds_oriented_ranks_with_non_finite_values_last() {
        let proxies = Proxy::parse_list("snip, lpzero_gpt2", crate::bench::gpt2::KIND).unwrap();
        assert_eq!(proxies[1].orientation(), Orientation::LowerIsBetter);
        let summaries = |n| (0..n).map(|_| summarize("x", Orientation::HigherIsBetter, &[], &[]));
        let mut table = ScoreTable {
            keys: vec!["a".into(), "b".into(), "c".into()],
            truth: vec![1.0, 2.0, 3.0],
            // snip: higher is better, NaN last; lpzero_gpt2: lower is better.
            values: vec![vec![5.0, f64::NAN, 7.0], vec![30.0, 20.0, 10.0]],
            names: vec!["snip".into(), "lpzero_gpt2".into()],
            summaries: summaries(2).collect(),
            probe_seconds: 0.0,
            arch_probe_seconds: vec![0.0; 3],
            proxy_seconds: vec![0.0; 2],
            seconds: 0.0,
        };
        table.add_rank_sum(&proxies).unwrap();
        assert_eq!(table.names.last().unwrap(), RANK_SUM);
        // Ranks (1 = worst): snip a 2, b 1, c 3; lpzero_gpt2 a 1, b 2, c 3.
        assert_eq!(table.values[2], vec![3.0, 3.0, 6.0]);
        let s = table.summaries.last().unwrap();
        assert_eq!((s.proxy.as_str(), s.n), (RANK_SUM, 3));
        assert!(s.spearman > 0.8, "{}", s.spearman);
        // A second rank sum, or one proxy, is refused.
        assert!(table.add_rank_sum(&proxies).is_err());
        let mut one = ScoreTable {
            values: vec![vec![1.0, 2.0, 3.0]],
            names: vec!["snip".into()],
            summaries: summaries(1).collect(),
            proxy_seconds: vec![0.0],
            ..table
        };
        let err = one.add_rank_sum(&proxies[..1]).unwrap_err().to_string();
        assert!(err.contains("at least two"), "{err}");
    }

    #[test]
    fn proxy_lists_split_on_commas_and_semicolons_outside_parentheses() {
        let kind = crate::bench::flexibert::KIND;
        let names = |text: &str| -> Vec<String> {
            Proxy::parse_list(text, kind)
                .unwrap()
                .iter()
                .map(Proxy::name)
                .collect()
        };
        assert_eq!(names("eznas,snip"), ["eznas", "snip"]);
        assert_eq!(names("eznas; snip"), ["eznas", "snip"]);
        assert_eq!(
            names("snip;add(mean(head), mean(act))"),
            ["snip", "add(mean(head), mean(act))"]
        );
        assert_eq!(names("add(mean(head), mean(act))").len(), 1);
        assert_eq!(
            names("eznas,snip;add(mean(head), mean(act)), w_pca"),
            ["eznas", "snip", "add(mean(head), mean(act))", "w_pca"]
        );
        // `all` may be one item among others; a proxy named twice is kept once.
        let all = names("all");
        let mixed = names("eznas,all;mean(head)");
        assert_eq!(mixed.len(), all.len() + 1, "{mixed:?}");
        assert_eq!(mixed[0], "eznas");
        assert_eq!(mixed.last().unwrap(), "mean(head)");
        let Err(err) = Proxy::parse_list("eznas;;snip", kind) else {
            panic!("an empty item must be refused");
        };
        let err = err.to_string();
        assert!(err.contains("item 2") && err.contains("empty"), "{err}");
    }
}
