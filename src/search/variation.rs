//! Crossover and mutation (spec §4.5) for every structure.
//!
//! * **Tree** (reference): crossover takes each input position and each unary-op position
//!   independently from either parent with probability ½, and the binary op from the *first*
//!   parent (`self`) with probability [`TREE_BINARY_FROM_SELF`] = 0.2, else from the second. The
//!   asymmetry is the reference's as written; it is kept so the search dynamics match. Mutation
//!   keeps each gene with probability ½ and otherwise redraws it with the sampling weights
//!   (which can redraw the same value). Offspring always have `n_unary` ops per branch (the
//!   reference rebuilt them with 2 whatever the setting, a bug not reproduced); a position a
//!   parent lacks is taken from the other parent or, if neither has it, sampled.
//! * **Linear** and **Graph**: the same gene-wise rules (each input and each op from either
//!   parent with ½; mutation keeps each gene with ½ else redraws it). There is no binary op.
//! * **Free**: subtree crossover (a uniformly chosen node of the first parent is replaced by a
//!   uniformly chosen subtree of the second that fits the depth limit) and, with probability ½
//!   each, point mutation (one uniformly chosen node gets a new input / unary op / binary op of
//!   the same arity) or subtree mutation (one uniformly chosen node is replaced by a freshly
//!   grown subtree that fits the depth limit). Offspring never exceed `max_depth`.
//!
//! * **Extended**: gene-wise like the tree (each input, chain op, reduction, `total` flag, post
//!   op and the binary op from either parent with ½; mutation keeps each gene with ½ else
//!   redraws it from its table in [`super::genome`]). A branch's element-wise pair is one
//!   more gene, crossed and mutated the same way, except that nothing is drawn for it when
//!   both parents agree (crossover) or when the search has no pairs (mutation), so searches
//!   without pairs keep their draws.
//!
//! Mutation operators are named and weighted ([`MutationWeights`], in the manner of
//! SymbolicRegression.jl's `MutationWeights`): a mutation first picks one operator of the
//! genome's structure with probability proportional to its weight ([`Mutation`]). For the free
//! structure the operators are `point`, `subtree` and `hoist` (the whole tree replaced by one of
//! its inner subtrees: it shrinks a tree). For the gene-wise structures the reference's rule
//! "each gene kept with probability ½, else redrawn" is itself one operator, `genes`, and the
//! others apply the same rule to one kind of gene only: `input`, `unary`, `binary` and, for the
//! extended structure, `reduce`, `total`, `post` and `pair`. The defaults (`point` and `subtree` 1,
//! `genes` 1, every other 0) are the mutation described above, draw for draw; when one
//! operator alone has a weight, picking it draws nothing.
//!
//! Crossing genomes of different structures is not meaningful: it is an error.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::genome::{
    grow_expr, sample_binary, sample_free_unary, sample_from, sample_input, sample_join,
    sample_unary, ElementwisePair, ExtendedGenotype, Genome, GenomeSpec, EXTENDED_POST_OPS,
    EXTENDED_REDUCTIONS, EXTENDED_TOTAL_P, GRAPH_EDGES,
};
use crate::proxy::expr::Expr;
use crate::proxy::genotype::TreeGenotype;
use crate::proxy::ops::UnaryOp;
use crate::rng::Rng;
use crate::search::structure::Structure;

/// Probability that a tree crossover takes the binary op from the first parent (reference 0.2).
pub const TREE_BINARY_FROM_SELF: f64 = 0.2;

/// A mutation operator (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Free: one node gets a new label of the same arity.
    Point,
    /// Free: one node is replaced by a freshly grown subtree.
    Subtree,
    /// Free: the tree is replaced by one of its inner subtrees.
    Hoist,
    /// Gene-wise: every gene kept with ½, else redrawn (the reference).
    Genes,
    /// Gene-wise: the inputs only.
    Input,
    /// Gene-wise: the unary chains only.
    Unary,
    /// Gene-wise: the binary op only (tree and extended).
    Binary,
    /// Extended: the per-branch reductions only.
    Reduce,
    /// Extended: the `total` flags only.
    Total,
    /// Extended: the post-reduction ops only.
    Post,
    /// Extended: the element-wise pairs only (with the search option `pairs` above 0).
    Pair,
}

impl Mutation {
    /// Every operator, in [`MutationWeights`] field order.
    pub const ALL: [Mutation; 11] = [
        Mutation::Point,
        Mutation::Subtree,
        Mutation::Hoist,
        Mutation::Genes,
        Mutation::Input,
        Mutation::Unary,
        Mutation::Binary,
        Mutation::Reduce,
        Mutation::Total,
        Mutation::Post,
        Mutation::Pair,
    ];

    /// The operator's name (its [`MutationWeights`] field).
    pub fn name(self) -> &'static str {
        match self {
            Mutation::Point => "point",
            Mutation::Subtree => "subtree",
            Mutation::Hoist => "hoist",
            Mutation::Genes => "genes",
            Mutation::Input => "input",
            Mutation::Unary => "unary",
            Mutation::Binary => "binary",
            Mutation::Reduce => "reduce",
            Mutation::Total => "total",
            Mutation::Post => "post",
            Mutation::Pair => "pair",
        }
    }

    /// True when the operator applies to genomes of `structure`.
    pub fn applies_to(self, structure: Structure) -> bool {
        use Mutation::*;
        match structure {
            Structure::Free => matches!(self, Point | Subtree | Hoist),
            Structure::Tree => matches!(self, Genes | Input | Unary | Binary),
            Structure::Linear | Structure::Graph => matches!(self, Genes | Input | Unary),
            Structure::Extended => !matches!(self, Point | Subtree | Hoist),
        }
    }
}

/// The weight of each mutation operator (see the module docs); a mutation picks one of the
/// operators of its genome's structure with probability proportional to its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MutationWeights {
    /// [`Mutation::Point`] (free; default 1).
    pub point: f64,
    /// [`Mutation::Subtree`] (free; default 1).
    pub subtree: f64,
    /// [`Mutation::Hoist`] (free; default 0).
    pub hoist: f64,
    /// [`Mutation::Genes`] (gene-wise; default 1).
    pub genes: f64,
    /// [`Mutation::Input`] (gene-wise; default 0).
    pub input: f64,
    /// [`Mutation::Unary`] (gene-wise; default 0).
    pub unary: f64,
    /// [`Mutation::Binary`] (tree and extended; default 0).
    pub binary: f64,
    /// [`Mutation::Reduce`] (extended; default 0).
    pub reduce: f64,
    /// [`Mutation::Total`] (extended; default 0).
    pub total: f64,
    /// [`Mutation::Post`] (extended; default 0).
    pub post: f64,
    /// [`Mutation::Pair`] (extended; default 0; left out of files when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub pair: f64,
}

/// True for exactly 0 (serde: an option or weight added later is left out of files while
/// unused, so files written before it existed and after are the same).
pub(crate) fn is_zero(w: &f64) -> bool {
    *w == 0.0
}

impl Default for MutationWeights {
    /// The mutation of the reference (gene-wise) and of lpzero's free structure so far:
    /// `point` 1, `subtree` 1, `genes` 1, every other 0.
    fn default() -> Self {
        Self {
            point: 1.0,
            subtree: 1.0,
            hoist: 0.0,
            genes: 1.0,
            input: 0.0,
            unary: 0.0,
            binary: 0.0,
            reduce: 0.0,
            total: 0.0,
            post: 0.0,
            pair: 0.0,
        }
    }
}

impl MutationWeights {
    /// The weight of `op`.
    pub fn weight(&self, op: Mutation) -> f64 {
        match op {
            Mutation::Point => self.point,
            Mutation::Subtree => self.subtree,
            Mutation::Hoist => self.hoist,
            Mutation::Genes => self.genes,
            Mutation::Input => self.input,
            Mutation::Unary => self.unary,
            Mutation::Binary => self.binary,
            Mutation::Reduce => self.reduce,
            Mutation::Total => self.total,
            Mutation::Post => self.post,
            Mutation::Pair => self.pair,
        }
    }

    /// Checks that every weight is finite and non-negative and that some operator of
    /// `structure` has a positive weight.
    pub fn validate(&self, structure: Structure) -> Result<()> {
        for op in Mutation::ALL {
            let w = self.weight(op);
            if !(w.is_finite() && w >= 0.0) {
                bail!(
                    "mutation weight `{}` must be a finite number ≥ 0, got {w}",
                    op.name()
                );
            }
        }
        if self.operators(structure).iter().all(|&(_, w)| w == 0.0) {
            let names: Vec<&str> = self
                .operators(structure)
                .iter()
                .map(|(op, _)| op.name())
                .collect();
            bail!(
                "mutation weights: every operator of the {structure} structure ({}) has weight 0",
                names.join(", ")
            );
        }
        Ok(())
    }

    /// The operators of `structure` with their weights, in [`Mutation::ALL`] order.
    fn operators(&self, structure: Structure) -> Vec<(Mutation, f64)> {
        Mutation::ALL
            .into_iter()
            .filter(|op| op.applies_to(structure))
            .map(|op| (op, self.weight(op)))
            .collect()
    }

    /// Picks the operator of a mutation of a `structure` genome, with probability proportional
    /// to its weight; draws nothing when one operator alone has a positive weight. Expects
    /// [`MutationWeights::validate`] to have passed.
    pub fn choose(&self, structure: Structure, rng: &mut Rng) -> Mutation {
        let ops = self.operators(structure);
        let mut positive = ops.iter().filter(|(_, w)| *w > 0.0);
        if let (Some(&(op, _)), None) = (positive.next(), positive.next()) {
            return op;
        }
        let weights: Vec<f64> = ops.iter().map(|(_, w)| *w).collect();
        ops[rng.weighted(&weights)].0
    }
}

/// Which kinds of gene a gene-wise mutation redraws.
#[derive(Clone, Copy)]
struct Redraw {
    input: bool,
    unary: bool,
    binary: bool,
    reduce: bool,
    total: bool,
    post: bool,
    pair: bool,
}

impl Redraw {
    /// The genes the gene-wise operator `op` redraws.
    fn of(op: Mutation) -> Self {
        let only = |kind: Mutation| op == Mutation::Genes || op == kind;
        Redraw {
            input: only(Mutation::Input),
            unary: only(Mutation::Unary),
            binary: only(Mutation::Binary),
            reduce: only(Mutation::Reduce),
            total: only(Mutation::Total),
            post: only(Mutation::Post),
            pair: only(Mutation::Pair),
        }
    }
}

/// Gene-wise choice between two parents' op chains, producing exactly `len` genes.
fn cross_chain(a: &[UnaryOp], b: &[UnaryOp], len: usize, rng: &mut Rng) -> Vec<UnaryOp> {
    (0..len)
        .map(|i| match (a.get(i), b.get(i)) {
            (Some(&x), Some(&y)) => {
                if rng.bernoulli(0.5) {
                    x
                } else {
                    y
                }
            }
            (Some(&x), None) | (None, Some(&x)) => x,
            (None, None) => sample_unary(rng),
        })
        .collect()
}

/// Gene-wise mutation of an op chain (`redraw`), or the chain kept, producing exactly `len`
/// genes (a position the chain lacks is sampled).
fn mutate_chain(a: &[UnaryOp], len: usize, redraw: bool, rng: &mut Rng) -> Vec<UnaryOp> {
    (0..len)
        .map(|i| match a.get(i) {
            Some(&x) if !redraw || rng.bernoulli(0.5) => x,
            _ => sample_unary(rng),
        })
        .collect()
}

/// `x` with probability ½, else `draw()`; `x` itself when not `redraw`.
fn keep_or<T>(x: T, redraw: bool, rng: &mut Rng, draw: impl FnOnce(&mut Rng) -> T) -> T {
    if !redraw || rng.bernoulli(0.5) {
        x
    } else {
        draw(rng)
    }
}

/// One of two values with probability ½ each.
fn pick<T: Copy>(x: T, y: T, rng: &mut Rng) -> T {
    if rng.bernoulli(0.5) {
        x
    } else {
        y
    }
}

/// Like [`pick`], but drawing nothing when the two values are equal (for genes added after
/// the search's draws were fixed: parents without them keep the old sequence of draws).
fn pick_if_different<T: Copy + PartialEq>(x: T, y: T, rng: &mut Rng) -> T {
    if x == y {
        x
    } else {
        pick(x, y, rng)
    }
}

/// The child of `a` (the reference's `self`) and `b` (see the module docs); an error when the
/// two parents have different structures.
pub fn crossover(a: &Genome, b: &Genome, spec: &GenomeSpec, rng: &mut Rng) -> Result<Genome> {
    Ok(match (a, b) {
        (Genome::Tree(x), Genome::Tree(y)) => {
            let inputs = [
                pick(x.inputs[0], y.inputs[0], rng),
                pick(x.inputs[1], y.inputs[1], rng),
            ];
            let first = cross_chain(&x.unary[0], &y.unary[0], spec.n_unary, rng);
            let second = cross_chain(&x.unary[1], &y.unary[1], spec.n_unary, rng);
            let binary = if rng.bernoulli(TREE_BINARY_FROM_SELF) {
                x.binary
            } else {
                y.binary
            };
            Genome::Tree(TreeGenotype {
                inputs,
                unary: [first, second],
                binary,
            })
        }
        (Genome::Linear { input: ia, ops: oa }, Genome::Linear { input: ib, ops: ob }) => {
            Genome::Linear {
                input: pick(*ia, *ib, rng),
                ops: cross_chain(oa, ob, spec.linear_length, rng),
            }
        }
        (
            Genome::Graph {
                inputs: ia,
                edges: ea,
            },
            Genome::Graph {
                inputs: ib,
                edges: eb,
            },
        ) => Genome::Graph {
            inputs: [pick(ia[0], ib[0], rng), pick(ia[1], ib[1], rng)],
            edges: cross_chain(ea, eb, GRAPH_EDGES, rng),
        },
        (Genome::Free { expr: x }, Genome::Free { expr: y }) => Genome::Free {
            expr: subtree_crossover(x, y, spec.max_depth, rng),
        },
        (Genome::Extended(x), Genome::Extended(y)) => {
            let both = |k: usize, rng: &mut Rng| {
                (
                    pick(x.inputs[k], y.inputs[k], rng),
                    cross_chain(&x.unary[k], &y.unary[k], spec.n_unary, rng),
                    pick(x.reduce[k], y.reduce[k], rng),
                    pick(x.total[k], y.total[k], rng),
                    pick(x.post[k], y.post[k], rng),
                )
            };
            let (i0, u0, r0, t0, p0) = both(0, rng);
            let (i1, u1, r1, t1, p1) = both(1, rng);
            let binary = pick(x.binary, y.binary, rng);
            let pair = [
                pick_if_different(x.pair[0], y.pair[0], rng),
                pick_if_different(x.pair[1], y.pair[1], rng),
            ];
            Genome::Extended(ExtendedGenotype {
                inputs: [i0, i1],
                unary: [u0, u1],
                reduce: [r0, r1],
                total: [t0, t1],
                post: [p0, p1],
                binary,
                pair,
            })
        }
        _ => bail!(
            "cannot cross a {} genome with a {} genome: both parents must have the search's \
             structure",
            a.structure(),
            b.structure()
        ),
    })
}

/// A mutated copy of `g`: one operator picked by `weights` for its structure (see the module
/// docs), applied.
pub fn mutate(g: &Genome, spec: &GenomeSpec, weights: &MutationWeights, rng: &mut Rng) -> Genome {
    let op = weights.choose(g.structure(), rng);
    let redraw = Redraw::of(op);
    match g {
        Genome::Tree(x) => {
            let input = |i, rng: &mut Rng| keep_or(i, redraw.input, rng, sample_input);
            let inputs = [input(x.inputs[0], rng), input(x.inputs[1], rng)];
            let first = mutate_chain(&x.unary[0], spec.n_unary, redraw.unary, rng);
            let second = mutate_chain(&x.unary[1], spec.n_unary, redraw.unary, rng);
            let binary = keep_or(x.binary, redraw.binary, rng, sample_binary);
            Genome::Tree(TreeGenotype {
                inputs,
                unary: [first, second],
                binary,
            })
        }
        Genome::Linear { input, ops } => Genome::Linear {
            input: keep_or(*input, redraw.input, rng, sample_input),
            ops: mutate_chain(ops, spec.linear_length, redraw.unary, rng),
        },
        Genome::Graph { inputs, edges } => {
            let mut new_inputs = *inputs;
            for i in new_inputs.iter_mut() {
                *i = keep_or(*i, redraw.input, rng, sample_input);
            }
            Genome::Graph {
                inputs: new_inputs,
                edges: mutate_chain(edges, GRAPH_EDGES, redraw.unary, rng),
            }
        }
        Genome::Free { expr } => Genome::Free {
            expr: match op {
                Mutation::Point => point_mutation(expr, rng),
                Mutation::Hoist => hoist_mutation(expr, rng),
                _ => subtree_mutation(expr, spec.max_depth, rng),
            },
        },
        Genome::Extended(x) => {
            let branch = |k: usize, rng: &mut Rng| {
                let input = keep_or(x.inputs[k], redraw.input, rng, sample_input);
                let chain = mutate_chain(&x.unary[k], spec.n_unary, redraw.unary, rng);
                let reduce = keep_or(x.reduce[k], redraw.reduce, rng, |rng| {
                    sample_from(&EXTENDED_REDUCTIONS, rng)
                });
                let total = keep_or(x.total[k], redraw.total, rng, |rng| {
                    rng.bernoulli(EXTENDED_TOTAL_P)
                });
                let post = keep_or(x.post[k], redraw.post, rng, |rng| {
                    sample_from(&EXTENDED_POST_OPS, rng)
                });
                (input, chain, reduce, total, post)
            };
            let (i0, u0, r0, t0, p0) = branch(0, rng);
            let (i1, u1, r1, t1, p1) = branch(1, rng);
            let binary = keep_or(x.binary, redraw.binary, rng, |rng| {
                sample_join(spec.rank_join, rng)
            });
            // Without pairs in the search nothing is drawn (a pair read from a file is kept).
            let pair_redraw = redraw.pair && spec.pairs > 0.0;
            let mut pair = x.pair;
            for (p, input) in pair.iter_mut().zip([i0, i1]) {
                *p = keep_or(*p, pair_redraw, rng, |rng| {
                    ElementwisePair::maybe_random(spec.pairs, input, rng)
                });
            }
            Genome::Extended(ExtendedGenotype {
                inputs: [i0, i1],
                unary: [u0, u1],
                reduce: [r0, r1],
                total: [t0, t1],
                post: [p0, p1],
                binary,
                pair,
            })
        }
    }
}

/// Every node of `e` in pre-order with its depth (the root has depth 1).
fn nodes_with_depth(e: &Expr) -> Vec<(&Expr, usize)> {
    fn walk<'e>(e: &'e Expr, depth: usize, out: &mut Vec<(&'e Expr, usize)>) {
        out.push((e, depth));
        match e {
            Expr::Input(_) => {}
            Expr::Unary(_, x) => walk(x, depth + 1, out),
            Expr::Binary(_, a, b) => {
                walk(a, depth + 1, out);
                walk(b, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(e, 1, &mut out);
    out
}

/// `e` with its pre-order node number `target` replaced by `new`.
fn replace_at(e: &Expr, target: usize, new: &Expr) -> Expr {
    fn walk(e: &Expr, target: usize, counter: &mut usize, new: &Expr) -> Expr {
        let me = *counter;
        *counter += 1;
        if me == target {
            return new.clone();
        }
        match e {
            Expr::Input(i) => Expr::Input(*i),
            Expr::Unary(op, x) => Expr::unary(*op, walk(x, target, counter, new)),
            Expr::Binary(op, a, b) => {
                let a = walk(a, target, counter, new);
                let b = walk(b, target, counter, new);
                Expr::binary(*op, a, b)
            }
        }
    }
    let mut counter = 0;
    walk(e, target, &mut counter, new)
}

/// Subtree crossover within the depth limit (see the module docs).
pub fn subtree_crossover(a: &Expr, b: &Expr, max_depth: usize, rng: &mut Rng) -> Expr {
    let sites = nodes_with_depth(a);
    let site = rng.range(0, sites.len());
    let room = max_depth.saturating_sub(sites[site].1) + 1;
    let donors: Vec<&Expr> = nodes_with_depth(b)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.depth() <= room)
        .collect();
    if donors.is_empty() {
        return a.clone();
    }
    let donor = donors[rng.range(0, donors.len())];
    replace_at(a, site, donor)
}

/// Point mutation: one node gets a new label of the same arity.
pub fn point_mutation(e: &Expr, rng: &mut Rng) -> Expr {
    let sites = nodes_with_depth(e);
    let target = rng.range(0, sites.len());
    let new = match sites[target].0 {
        Expr::Input(_) => Expr::Input(sample_input(rng)),
        Expr::Unary(_, x) => Expr::Unary(sample_free_unary(rng), x.clone()),
        Expr::Binary(_, a, b) => Expr::Binary(sample_binary(rng), a.clone(), b.clone()),
    };
    replace_at(e, target, &new)
}

/// Hoist mutation: the tree is replaced by one of its inner subtrees below the root (a unary
/// or binary node), chosen uniformly; a tree without one is returned as it is.
pub fn hoist_mutation(e: &Expr, rng: &mut Rng) -> Expr {
    let inner: Vec<&Expr> = nodes_with_depth(e)
        .into_iter()
        .skip(1)
        .map(|(n, _)| n)
        .filter(|n| !matches!(n, Expr::Input(_)))
        .collect();
    if inner.is_empty() {
        return e.clone();
    }
    inner[rng.range(0, inner.len())].clone()
}

/// Subtree mutation: one node is replaced by a freshly grown subtree within the depth limit.
pub fn subtree_mutation(e: &Expr, max_depth: usize, rng: &mut Rng) -> Expr {
    let sites = nodes_with_depth(e);
    let target = rng.range(0, sites.len());
    let depth = sites[target].1;
    let room = max_depth.saturating_sub(depth) + 1;
    let new = grow_expr(room, target == 0, rng);
    replace_at(e, target, &new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::expr::Input;
    use crate::proxy::ops::BinaryOp;
    use crate::proxy::parse::parse;

    fn spec(structure: Structure, n_unary: usize) -> GenomeSpec {
        GenomeSpec {
            structure,
            n_unary,
            linear_length: 4,
            max_depth: 5,
            pairs: 0.0,
            rank_join: 0.0,
        }
    }

    #[test]
    fn tree_crossover_takes_genes_from_parents() {
        use UnaryOp::*;
        let a = Genome::Tree(TreeGenotype {
            inputs: [Input::Act, Input::Act],
            unary: [vec![Abs, Abs], vec![Abs, Abs]],
            binary: BinaryOp::Add,
        });
        let b = Genome::Tree(TreeGenotype {
            inputs: [Input::Head, Input::Head],
            unary: [vec![Exp, Exp], vec![Exp, Exp]],
            binary: BinaryOp::Sub,
        });
        let s = spec(Structure::Tree, 2);
        let mut rng = Rng::new(5);
        let trials = 4000;
        let mut bin_from_a = 0;
        let mut input_from_a = 0;
        for _ in 0..trials {
            let Ok(Genome::Tree(c)) = crossover(&a, &b, &s, &mut rng) else {
                panic!()
            };
            assert!(c.unary.iter().flatten().all(|o| *o == Abs || *o == Exp));
            assert!(c
                .inputs
                .iter()
                .all(|i| *i == Input::Act || *i == Input::Head));
            bin_from_a += usize::from(c.binary == BinaryOp::Add);
            input_from_a += usize::from(c.inputs[0] == Input::Act);
        }
        let p_bin = bin_from_a as f64 / trials as f64;
        let p_in = input_from_a as f64 / trials as f64;
        assert!((p_bin - TREE_BINARY_FROM_SELF).abs() < 0.03, "{p_bin}");
        assert!((p_in - 0.5).abs() < 0.03, "{p_in}");
    }

    #[test]
    fn offspring_respect_n_unary() {
        let mut rng = Rng::new(6);
        let s3 = spec(Structure::Tree, 3);
        let a = Genome::random(&s3, &mut rng);
        let b = Genome::random(&spec(Structure::Tree, 1), &mut rng);
        for _ in 0..50 {
            let w = MutationWeights::default();
            for c in [
                crossover(&a, &b, &s3, &mut rng).unwrap(),
                mutate(&b, &s3, &w, &mut rng),
            ] {
                let Genome::Tree(t) = c else { panic!() };
                assert_eq!(t.unary[0].len(), 3);
                assert_eq!(t.unary[1].len(), 3);
            }
        }
    }

    #[test]
    fn every_structure_varies_within_limits() {
        let mut rng = Rng::new(7);
        for st in Structure::ALL {
            let s = spec(st, 2);
            let mut changed = 0;
            for _ in 0..300 {
                let a = Genome::random(&s, &mut rng);
                let b = Genome::random(&s, &mut rng);
                let w = MutationWeights::default();
                for c in [
                    crossover(&a, &b, &s, &mut rng).unwrap(),
                    mutate(&a, &s, &w, &mut rng),
                ] {
                    assert_eq!(c.structure(), st);
                    let e = c.to_expr();
                    assert_eq!(parse(&e.to_string()).unwrap(), e);
                    if st == Structure::Free {
                        assert!(e.depth() <= s.max_depth, "{e}");
                    }
                    if let Genome::Graph { edges, .. } = &c {
                        assert_eq!(edges.len(), GRAPH_EDGES);
                    }
                    if let Genome::Linear { ops, .. } = &c {
                        assert_eq!(ops.len(), 4);
                    }
                    changed += usize::from(c != a);
                }
            }
            assert!(changed > 300, "{st}: only {changed} offspring differ");
        }
    }

    #[test]
    fn element_wise_pairs_are_crossed_and_mutated_as_genes() {
        let mut s = spec(Structure::Extended, 2);
        s.pairs = 0.5;
        let mut rng = Rng::new(12);
        let pair_only = MutationWeights {
            genes: 0.0,
            pair: 1.0,
            ..MutationWeights::default()
        };
        let (mut changed, mut from_a) = (0, 0);
        for _ in 0..300 {
            let (a, b) = (Genome::random(&s, &mut rng), Genome::random(&s, &mut rng));
            let (Genome::Extended(x), Genome::Extended(y)) = (&a, &b) else {
                panic!()
            };
            // Crossover takes each branch's pair from one parent; equal pairs draw nothing.
            let Genome::Extended(c) = crossover(&a, &b, &s, &mut rng).unwrap() else {
                panic!()
            };
            for k in 0..2 {
                assert!(c.pair[k] == x.pair[k] || c.pair[k] == y.pair[k]);
                from_a += usize::from(x.pair[k] != y.pair[k] && c.pair[k] == x.pair[k]);
            }
            // The `pair` operator changes nothing but the pairs.
            let Genome::Extended(m) = mutate(&a, &s, &pair_only, &mut rng) else {
                panic!()
            };
            assert_eq!(
                ExtendedGenotype {
                    pair: x.pair,
                    ..m.clone()
                },
                *x
            );
            changed += usize::from(m.pair != x.pair);
        }
        assert!(changed > 60, "{changed}");
        assert!(from_a > 60, "{from_a}");
        // Without pairs in the search, mutation keeps a pair read from a file as it is.
        s.pairs = 0.0;
        let g = ExtendedGenotype::random(2, 1.0, 0.0, &mut rng);
        let a = Genome::Extended(g.clone());
        let w = MutationWeights::default();
        for _ in 0..20 {
            let Genome::Extended(m) = mutate(&a, &s, &w, &mut rng) else {
                panic!()
            };
            assert_eq!(m.pair, g.pair);
        }
    }

    #[test]
    fn free_operators() {
        let mut rng = Rng::new(8);
        let a = parse("add(mean(pow2(head)), mean(act))").unwrap();
        let b = parse("neg(sub(weight, grad))").unwrap();
        for _ in 0..200 {
            let c = subtree_crossover(&a, &b, 4, &mut rng);
            assert!(c.depth() <= 4, "{c}");
            let p = point_mutation(&a, &mut rng);
            assert_eq!(p.size(), a.size());
            let m = subtree_mutation(&a, 5, &mut rng);
            assert!(m.depth() <= 5, "{m}");
        }
        assert_eq!(
            replace_at(&a, 2, &parse("grad").unwrap()).to_string(),
            "add(mean(grad), mean(act))"
        );
    }

    #[test]
    fn crossing_structures_is_an_error() {
        let mut rng = Rng::new(9);
        let a = Genome::random(&spec(Structure::Tree, 2), &mut rng);
        let b = Genome::random(&spec(Structure::Free, 2), &mut rng);
        let e = crossover(&a, &b, &spec(Structure::Tree, 2), &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tree") && e.contains("free"), "{e}");
    }

    #[test]
    fn weighted_operators() {
        let mut rng = Rng::new(10);
        let w = MutationWeights::default();
        // One operator alone draws nothing.
        let before = rng.clone();
        assert_eq!(w.choose(Structure::Tree, &mut rng), Mutation::Genes);
        assert_eq!(rng, before);
        // Point and subtree, one half each, as one Bernoulli(½) draw.
        let mut other = rng.clone();
        let op = w.choose(Structure::Free, &mut rng);
        let point = other.bernoulli(0.5);
        assert_eq!(op == Mutation::Point, point);
        // Only the weighted kind of gene changes.
        let inputs_only = MutationWeights {
            genes: 0.0,
            input: 1.0,
            ..MutationWeights::default()
        };
        let s = spec(Structure::Tree, 2);
        for _ in 0..50 {
            let a = Genome::random(&s, &mut rng);
            let (Genome::Tree(x), Genome::Tree(y)) = (&a, &mutate(&a, &s, &inputs_only, &mut rng))
            else {
                panic!()
            };
            assert_eq!((&x.unary, x.binary), (&y.unary, y.binary));
        }
        // Hoist shrinks a free tree.
        let hoist = MutationWeights {
            point: 0.0,
            subtree: 0.0,
            hoist: 1.0,
            ..MutationWeights::default()
        };
        let e = parse("add(mean(pow2(head)), mean(act))").unwrap();
        let g = Genome::Free { expr: e.clone() };
        let Genome::Free { expr } = mutate(&g, &spec(Structure::Free, 2), &hoist, &mut rng) else {
            panic!()
        };
        assert!(expr.size() < e.size(), "{expr}");
        // Weights are checked per structure.
        assert!(inputs_only.validate(Structure::Free).is_ok());
        let none = MutationWeights {
            genes: 0.0,
            ..MutationWeights::default()
        };
        assert!(none.validate(Structure::Linear).is_err());
        assert!(none.validate(Structure::Free).is_ok());
        let negative = MutationWeights {
            post: -1.0,
            ..MutationWeights::default()
        };
        assert!(negative.validate(Structure::Tree).is_err());
    }
}
