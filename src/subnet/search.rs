//! NSGA-II over the sub-network space: maximise a proxy, minimise parameters, under a
//! parameter budget (LoNAS's search, with the proxy in place of validation accuracy).
//!
//! A genome is one choice index per gene ([`SubnetSpace::decode`]). Constraint handling is
//! Deb's: a sub-network within the budget dominates one over it, and of two over it the
//! smaller excess wins. Selection is the binary tournament on (front rank, crowding distance),
//! variation uniform crossover and per-gene mutation to another choice. Every sub-network is
//! evaluated once (a cache keyed by its genome); the first population holds the maximal,
//! heuristic and minimal sub-networks and random ones. Deterministic given the seed.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::models::llama::{Named, Subnet, SubnetSpace};
use crate::rng::Rng;

/// Settings of [`nsga2`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchOptions {
    /// Individuals per generation.
    pub population: usize,
    /// Generations after the first population.
    pub generations: usize,
    /// Largest parameter count allowed.
    pub max_params: u64,
    /// Probability that two parents are crossed.
    pub crossover: f64,
    /// Probability that a gene mutates (`None`: 1 / genes).
    pub mutation: Option<f64>,
    /// Seed.
    pub seed: u64,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            population: 16,
            generations: 8,
            max_params: u64::MAX,
            crossover: 0.9,
            mutation: None,
            seed: 0,
        }
    }
}

/// One evaluated sub-network.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluated {
    /// Evaluation order (0 = first).
    pub index: usize,
    /// Choice index per gene.
    pub genome: Vec<usize>,
    /// The sub-network.
    pub subnet: Subnet,
    /// Its parameter count.
    pub params: u64,
    /// Its proxy value, oriented so that higher is better (NaN counts as the worst).
    pub fitness: f64,
}

/// What the search found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchResult {
    /// Every evaluated sub-network, in evaluation order.
    pub evaluated: Vec<Evaluated>,
    /// Indices (into `evaluated`) of the non-dominated sub-networks within the budget,
    /// fewest parameters first.
    pub front: Vec<usize>,
    /// Index of the best fitness within the budget, if any sub-network fits.
    pub best: Option<usize>,
}

/// Objective values of one individual: fitness (max), params (min), excess over the budget.
#[derive(Clone, Copy)]
struct Point {
    fitness: f64,
    params: u64,
    excess: u64,
}

impl Point {
    fn fit(&self) -> f64 {
        if self.fitness.is_nan() {
            f64::NEG_INFINITY
        } else {
            self.fitness
        }
    }

    /// Constrained domination.
    fn dominates(&self, o: &Point) -> bool {
        match (self.excess, o.excess) {
            (0, 0) => {
                (self.fit() >= o.fit() && self.params <= o.params)
                    && (self.fit() > o.fit() || self.params < o.params)
            }
            (0, _) => true,
            (_, 0) => false,
            (a, b) => a < b,
        }
    }
}

/// Fronts of `points` (indices), best first (fast non-dominated sort).
fn fronts(points: &[Point]) -> Vec<Vec<usize>> {
    let n = points.len();
    let mut dominated_by = vec![0usize; n];
    let mut dominates: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in 0..n {
            if i != j && points[i].dominates(&points[j]) {
                dominates[i].push(j);
            } else if i != j && points[j].dominates(&points[i]) {
                dominated_by[i] += 1;
            }
        }
    }
    let mut out = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dominates[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        out.push(std::mem::take(&mut current));
        current = next;
    }
    out
}

/// Crowding distance of each member of `front` (same order).
fn crowding(points: &[Point], front: &[usize]) -> Vec<f64> {
    let n = front.len();
    let mut d = vec![0f64; n];
    if n <= 2 {
        return vec![f64::INFINITY; n];
    }
    let objectives: [&dyn Fn(&Point) -> f64; 2] = [&|p| p.fit(), &|p| p.params as f64];
    for obj in objectives {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| obj(&points[front[a]]).total_cmp(&obj(&points[front[b]])));
        let lo = obj(&points[front[order[0]]]);
        let hi = obj(&points[front[order[n - 1]]]);
        d[order[0]] = f64::INFINITY;
        d[order[n - 1]] = f64::INFINITY;
        if !(hi - lo).is_finite() || hi <= lo {
            continue;
        }
        for k in 1..n - 1 {
            let gap = obj(&points[front[order[k + 1]]]) - obj(&points[front[order[k - 1]]]);
            d[order[k]] += gap / (hi - lo);
        }
    }
    d
}

/// Runs NSGA-II over `space`. `fitness` gives a sub-network's oriented proxy value (higher is
/// better), `params` its parameter count; `on_eval` is called after each new evaluation.
pub fn nsga2(
    space: &SubnetSpace,
    opts: &SearchOptions,
    mut fitness: impl FnMut(&Subnet) -> Result<f64>,
    params: impl Fn(&Subnet) -> Result<u64>,
    mut on_eval: impl FnMut(&Evaluated),
) -> Result<SearchResult> {
    if opts.population < 2 {
        bail!(
            "the population needs at least 2 individuals, got {}",
            opts.population
        );
    }
    let genes = space.genes();
    let mutation = opts.mutation.unwrap_or(1.0 / genes.max(1) as f64);
    let mut rng = Rng::derive(opts.seed, &[0x75_6e]);
    let mut cache: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut evaluated: Vec<Evaluated> = Vec::new();
    let mut evaluate = |genome: Vec<usize>, evaluated: &mut Vec<Evaluated>| -> Result<usize> {
        if let Some(&i) = cache.get(&genome) {
            return Ok(i);
        }
        let subnet = space.decode(&genome);
        let e = Evaluated {
            index: evaluated.len(),
            params: params(&subnet)?,
            fitness: fitness(&subnet)?,
            genome: genome.clone(),
            subnet,
        };
        on_eval(&e);
        cache.insert(genome, e.index);
        evaluated.push(e);
        Ok(evaluated.len() - 1)
    };
    let named = |which: Named| -> Vec<usize> {
        let subnet = space.named(which);
        let mut g: Vec<usize> = subnet
            .ffn_widths
            .iter()
            .map(|w| space.ffn_choices.iter().position(|c| c == w).unwrap_or(0))
            .collect();
        if let (Some(h), Some(choices)) = (&subnet.heads, &space.head_choices) {
            g.extend(
                h.iter()
                    .map(|x| choices.iter().position(|c| c == x).unwrap_or(0)),
            );
        }
        g
    };
    let mut pop: Vec<usize> = Vec::new();
    for which in [Named::Maximal, Named::Heuristic, Named::Minimal] {
        if pop.len() < opts.population {
            pop.push(evaluate(named(which), &mut evaluated)?);
        }
    }
    let mut tries = 0;
    while pop.len() < opts.population && tries < 100 * opts.population {
        tries += 1;
        let g: Vec<usize> = (0..genes)
            .map(|k| rng.range(0, space.gene_choices(k).len()))
            .collect();
        let i = evaluate(g, &mut evaluated)?;
        if !pop.contains(&i) {
            pop.push(i);
        }
    }
    let point = |e: &Evaluated| Point {
        fitness: e.fitness,
        params: e.params,
        excess: e.params.saturating_sub(opts.max_params),
    };
    for _ in 0..opts.generations {
        // Rank and crowding of the current population.
        let pts: Vec<Point> = pop.iter().map(|&i| point(&evaluated[i])).collect();
        let fr = fronts(&pts);
        let mut rank = vec![0usize; pop.len()];
        let mut crowd = vec![0f64; pop.len()];
        for (r, f) in fr.iter().enumerate() {
            for (&m, c) in f.iter().zip(crowding(&pts, f)) {
                rank[m] = r;
                crowd[m] = c;
            }
        }
        let tournament = |rng: &mut Rng| {
            let (a, b) = (rng.range(0, pop.len()), rng.range(0, pop.len()));
            if rank[a] < rank[b] || (rank[a] == rank[b] && crowd[a] >= crowd[b]) {
                a
            } else {
                b
            }
        };
        let mut children = Vec::new();
        while children.len() < opts.population {
            let (pa, pb) = (tournament(&mut rng), tournament(&mut rng));
            let (ga, gb) = (&evaluated[pop[pa]].genome, &evaluated[pop[pb]].genome);
            let cross = rng.uniform() < opts.crossover;
            let mut child: Vec<usize> = (0..genes)
                .map(|k| {
                    if cross && rng.bernoulli(0.5) {
                        gb[k]
                    } else {
                        ga[k]
                    }
                })
                .collect();
            for (k, gene) in child.iter_mut().enumerate() {
                let n = space.gene_choices(k).len();
                if n > 1 && rng.uniform() < mutation {
                    let other = rng.range(0, n - 1);
                    *gene = if other >= *gene { other + 1 } else { other };
                }
            }
            children.push(evaluate(child, &mut evaluated)?);
        }
        // Environmental selection over parents and children (each sub-network once).
        let mut union = pop.clone();
        for c in children {
            if !union.contains(&c) {
                union.push(c);
            }
        }
        let pts: Vec<Point> = union.iter().map(|&i| point(&evaluated[i])).collect();
        let mut next = Vec::new();
        for f in fronts(&pts) {
            if next.len() + f.len() <= opts.population {
                next.extend(f.iter().map(|&m| union[m]));
                continue;
            }
            let c = crowding(&pts, &f);
            let mut order: Vec<usize> = (0..f.len()).collect();
            order.sort_by(|&a, &b| c[b].total_cmp(&c[a]).then(a.cmp(&b)));
            for k in order.into_iter().take(opts.population - next.len()) {
                next.push(union[f[k]]);
            }
            break;
        }
        pop = next;
    }
    // The front over every evaluated sub-network within the budget.
    let feasible: Vec<usize> = (0..evaluated.len())
        .filter(|&i| evaluated[i].params <= opts.max_params)
        .collect();
    let pts: Vec<Point> = feasible.iter().map(|&i| point(&evaluated[i])).collect();
    let mut front: Vec<usize> = fronts(&pts)
        .into_iter()
        .next()
        .unwrap_or_default()
        .into_iter()
        .map(|m| feasible[m])
        .collect();
    front.sort_by_key(|&i| (evaluated[i].params, i));
    let best = feasible.iter().copied().max_by(|&a, &b| {
        point(&evaluated[a])
            .fit()
            .total_cmp(&point(&evaluated[b]).fit())
            .then(b.cmp(&a))
    });
    Ok(SearchResult {
        evaluated,
        front,
        best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::llama::LlamaConfig;

    #[test]
    fn nsga2_finds_the_budgeted_optimum_of_a_known_objective() {
        let mut c = LlamaConfig::llama_7b();
        c.num_hidden_layers = 4;
        let space = SubnetSpace::lonas(&c);
        // Fitness rewards width in layer 0 only: the best sub-network under a budget keeps
        // layer 0 wide and the others narrow.
        let fitness = |s: &Subnet| {
            Ok(s.ffn_widths[0] as f64 - 1e-3 * s.ffn_widths[1..].iter().sum::<usize>() as f64)
        };
        let params = |s: &Subnet| Ok(s.count(&c)?.total);
        let budget = space.named(Named::Heuristic).count(&c).unwrap().total;
        let opts = SearchOptions {
            population: 12,
            generations: 15,
            max_params: budget,
            seed: 1,
            ..SearchOptions::default()
        };
        let r = nsga2(&space, &opts, fitness, params, |_| {}).unwrap();
        let best = &r.evaluated[r.best.unwrap()];
        assert!(best.params <= budget);
        assert_eq!(best.subnet.ffn_widths, vec![11008, 5504, 5504, 5504]);
        // The front is non-dominated and within the budget.
        for &i in &r.front {
            assert!(r.evaluated[i].params <= budget);
            for &j in &r.front {
                let (a, b) = (&r.evaluated[i], &r.evaluated[j]);
                assert!(!(a.fitness > b.fitness && a.params < b.params));
            }
        }
        // Deterministic.
        let again = nsga2(&space, &opts, fitness, params, |_| {}).unwrap();
        assert_eq!(again.evaluated.len(), r.evaluated.len());
        assert_eq!(again.best, r.best);
    }
}
