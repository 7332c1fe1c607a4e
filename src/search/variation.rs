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
//!   redraws it from its table in [`super::genome`]).
//!
//! Crossing genomes of different structures is not meaningful: the first parent is returned.

use super::genome::{
    grow_expr, sample_binary, sample_free_unary, sample_from, sample_input, sample_unary,
    ExtendedGenotype, Genome, GenomeSpec, EXTENDED_BINARY, EXTENDED_POST_OPS, EXTENDED_REDUCTIONS,
    EXTENDED_TOTAL_P, GRAPH_EDGES,
};
use crate::proxy::expr::Expr;
use crate::proxy::genotype::TreeGenotype;
use crate::proxy::ops::UnaryOp;
use crate::rng::Rng;

/// Probability that a tree crossover takes the binary op from the first parent (reference 0.2).
pub const TREE_BINARY_FROM_SELF: f64 = 0.2;

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

/// Gene-wise mutation of an op chain, producing exactly `len` genes.
fn mutate_chain(a: &[UnaryOp], len: usize, rng: &mut Rng) -> Vec<UnaryOp> {
    (0..len)
        .map(|i| match a.get(i) {
            Some(&x) if rng.bernoulli(0.5) => x,
            _ => sample_unary(rng),
        })
        .collect()
}

/// One of two values with probability ½ each.
fn pick<T: Copy>(x: T, y: T, rng: &mut Rng) -> T {
    if rng.bernoulli(0.5) {
        x
    } else {
        y
    }
}

/// The child of `a` (the reference's `self`) and `b` (see the module docs).
pub fn crossover(a: &Genome, b: &Genome, spec: &GenomeSpec, rng: &mut Rng) -> Genome {
    match (a, b) {
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
            Genome::Extended(ExtendedGenotype {
                inputs: [i0, i1],
                unary: [u0, u1],
                reduce: [r0, r1],
                total: [t0, t1],
                post: [p0, p1],
                binary: pick(x.binary, y.binary, rng),
            })
        }
        _ => a.clone(),
    }
}

/// A mutated copy of `g` (see the module docs).
pub fn mutate(g: &Genome, spec: &GenomeSpec, rng: &mut Rng) -> Genome {
    match g {
        Genome::Tree(x) => {
            let keep_or = |i, rng: &mut Rng| {
                if rng.bernoulli(0.5) {
                    i
                } else {
                    sample_input(rng)
                }
            };
            let inputs = [keep_or(x.inputs[0], rng), keep_or(x.inputs[1], rng)];
            let first = mutate_chain(&x.unary[0], spec.n_unary, rng);
            let second = mutate_chain(&x.unary[1], spec.n_unary, rng);
            let binary = if rng.bernoulli(0.5) {
                x.binary
            } else {
                sample_binary(rng)
            };
            Genome::Tree(TreeGenotype {
                inputs,
                unary: [first, second],
                binary,
            })
        }
        Genome::Linear { input, ops } => {
            let input = if rng.bernoulli(0.5) {
                *input
            } else {
                sample_input(rng)
            };
            Genome::Linear {
                input,
                ops: mutate_chain(ops, spec.linear_length, rng),
            }
        }
        Genome::Graph { inputs, edges } => {
            let mut new_inputs = *inputs;
            for i in new_inputs.iter_mut() {
                if !rng.bernoulli(0.5) {
                    *i = sample_input(rng);
                }
            }
            Genome::Graph {
                inputs: new_inputs,
                edges: mutate_chain(edges, GRAPH_EDGES, rng),
            }
        }
        Genome::Free { expr } => Genome::Free {
            expr: if rng.bernoulli(0.5) {
                point_mutation(expr, rng)
            } else {
                subtree_mutation(expr, spec.max_depth, rng)
            },
        },
        Genome::Extended(x) => {
            let branch = |k: usize, rng: &mut Rng| {
                let input = if rng.bernoulli(0.5) {
                    x.inputs[k]
                } else {
                    sample_input(rng)
                };
                let chain = mutate_chain(&x.unary[k], spec.n_unary, rng);
                let reduce = keep_or_draw(x.reduce[k], &EXTENDED_REDUCTIONS, rng);
                let total = if rng.bernoulli(0.5) {
                    x.total[k]
                } else {
                    rng.bernoulli(EXTENDED_TOTAL_P)
                };
                let post = keep_or_draw(x.post[k], &EXTENDED_POST_OPS, rng);
                (input, chain, reduce, total, post)
            };
            let (i0, u0, r0, t0, p0) = branch(0, rng);
            let (i1, u1, r1, t1, p1) = branch(1, rng);
            Genome::Extended(ExtendedGenotype {
                inputs: [i0, i1],
                unary: [u0, u1],
                reduce: [r0, r1],
                total: [t0, t1],
                post: [p0, p1],
                binary: keep_or_draw(x.binary, &EXTENDED_BINARY, rng),
            })
        }
    }
}

/// `x` with probability ½, else a fresh draw from `table`.
fn keep_or_draw<T: Copy>(x: T, table: &[(T, f64)], rng: &mut Rng) -> T {
    if rng.bernoulli(0.5) {
        x
    } else {
        sample_from(table, rng)
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
    use crate::search::options::Structure;

    fn spec(structure: Structure, n_unary: usize) -> GenomeSpec {
        GenomeSpec {
            structure,
            n_unary,
            linear_length: 4,
            max_depth: 5,
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
            let Genome::Tree(c) = crossover(&a, &b, &s, &mut rng) else {
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
            for c in [crossover(&a, &b, &s3, &mut rng), mutate(&b, &s3, &mut rng)] {
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
                for c in [crossover(&a, &b, &s, &mut rng), mutate(&a, &s, &mut rng)] {
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
}
