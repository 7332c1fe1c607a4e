//! Genomes: what the search mutates, one representation per [`Structure`], and their expressions.
//!
//! The GP loop never evaluates a genome directly: it converts it to an [`Expr`]
//! ([`Genome::to_expr`]) and evaluates that, so all structures share the evaluator, the memo,
//! the canonical form and the pruning rules.
//!
//! * **Tree** (the LPZero template, spec §4.4): a [`TreeGenotype`] with two inputs, `n_unary`
//!   ops per branch and one binary op; the expression is
//!   `bin(mean(u_n(…u_1(x))), mean(v_n(…v_1(y))))` ([`crate::proxy::genotype::from_tree_genotype`]).
//! * **Linear**: one input and a chain of `linear_length` (4) unary ops; the expression is
//!   `mean(u_4(u_3(u_2(u_1(x)))))`. The final `mean` reduces every item in `f32` like the
//!   reference's `convert_to_float` on a tensor; the mean over items is the usual final
//!   reduction.
//! * **Graph**: two inputs (states `s0 = x`, `s1 = y`) and three DAG nodes. Node `i` (0, 1, 2)
//!   has one unary op per edge from every earlier state `s0 … s(1+i)`, so 2 + 3 + 4 = 9 edge
//!   ops in total (stored flat, node by node, edge by source state). The node value is the sum of
//!   its transformed inputs: `n_i = add(add(e_0(s0), e_1(s1)), …)`, and `s(2+i) = n_i`. The
//!   result is `add(add(mean(n_0), mean(n_1)), mean(n_2))`. Mapping notes:
//!   - there is no constant node, so the result is the *sum* of the node means, i.e. 3 × the
//!     reference's mean over nodes (the same ranking, so the same Spearman fitness);
//!   - an edge whose op is `disconnect` contributes nothing (it is left out of the sum); a node
//!     with no contributing edge has no value: its outgoing edges and its term of the result are
//!     left out too; when no node has a value the expression is `add(disconnect(x),
//!     disconnect(y))`, which has no value (and the pruning rule `both_disconnected` rejects);
//!   - later nodes contain earlier ones as sub-trees, so the expression repeats them; the memo
//!     evaluates each repeated node once per architecture.
//! * **Free**: any [`Expr`] of depth at most `max_depth` (an input has depth 1), over the
//!   reference ops and lpzero's extensions ([`sample_free_unary`]).
//! * **Extended** (lpzero's default): the tree template with three more genes per branch
//!   ([`ExtendedGenotype`]): the reduction of each item (`mean`, `sum`, `size`, ...), whether
//!   the branch is summed over its items (`total`, so a proxy can grow with depth), and one op
//!   after the reduction (`log`, `sqrt`, ...), so branches can be combined scale-free
//!   (`add(log(a), log(b))` ranks like `a · b`). With `mean`, no `total` and `no_op` it is the
//!   reference template, so the reference space is a subset. With the search option `pairs`
//!   above 0 a branch may also start from an element-wise pair of inputs
//!   ([`ElementwisePair`], e.g. `mul(weight, grad)`, the W⊙∇W of SNIP), a binary op before
//!   the reduction.
//!
//! Random sampling uses the reference weights (spec §4.5): inputs uniformly over [`Input::ALL`],
//! unary ops by [`UNARY_SAMPLING_WEIGHTS`], binary ops by [`BINARY_SAMPLING_WEIGHTS`].

use serde::{Deserialize, Serialize};

use super::structure::Structure;
use crate::proxy::expr::{Expr, Input};
use crate::proxy::genotype::TreeGenotype;
use crate::proxy::ops::{BinaryOp, UnaryOp, BINARY_SAMPLING_WEIGHTS, UNARY_SAMPLING_WEIGHTS};
use crate::rng::Rng;

/// Number of DAG nodes in the graph structure.
pub const GRAPH_NODES: usize = 3;

/// Number of edge ops in the graph structure: node `i` has `2 + i` incoming edges.
pub const GRAPH_EDGES: usize = 2 + 3 + 4;

/// Probabilities of a leaf, a unary node and a binary node when growing a free tree below the
/// depth limit (the root is never a leaf).
pub const FREE_NODE_WEIGHTS: [f64; 3] = [0.25, 0.5, 0.25];

/// The sizes that shape genomes (taken from [`super::SearchOptions::genome_spec`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenomeSpec {
    /// Which representation.
    pub structure: Structure,
    /// Unary ops per tree branch.
    pub n_unary: usize,
    /// Unary ops in the linear chain.
    pub linear_length: usize,
    /// Maximum depth of a free tree (≥ 2).
    pub max_depth: usize,
    /// Probability that a freshly drawn extended branch reads an element-wise pair of inputs
    /// ([`ElementwisePair`]) instead of one input; 0 (the default) draws nothing for it, so
    /// searches without pairs are draw for draw what they were before pairs existed.
    pub pairs: f64,
    /// Probability that a freshly drawn extended join is the rank join `rank_add`; 0 (the
    /// default) draws nothing for it.
    pub rank_join: f64,
}

/// One individual's heritable material (serde: tagged by `structure`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "structure", rename_all = "snake_case")]
pub enum Genome {
    /// The LPZero tree template.
    Tree(TreeGenotype),
    /// One input and a chain of unary ops (applied first to last).
    Linear {
        /// The input list.
        input: Input,
        /// The chain, in application order.
        ops: Vec<UnaryOp>,
    },
    /// Two inputs and [`GRAPH_EDGES`] edge ops of a 3-node DAG (layout in the module docs).
    Graph {
        /// States `s0` and `s1`.
        inputs: [Input; 2],
        /// Edge ops: node 0's edges from s0, s1; node 1's from s0, s1, s2; node 2's from s0 … s3.
        edges: Vec<UnaryOp>,
    },
    /// A general expression tree.
    Free {
        /// The expression itself.
        expr: Expr,
    },
    /// The extended tree template.
    Extended(ExtendedGenotype),
}

/// The extended tree: two branches `post(total?(reduce(u_n(…u_1(x)))))` joined by a binary op
/// (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExtendedGenotype {
    /// The two input lists.
    pub inputs: [Input; 2],
    /// Each branch's item-wise op chain, applied first to last.
    pub unary: [Vec<UnaryOp>; 2],
    /// Each branch's reduction of an item to a scalar (one of [`EXTENDED_REDUCTIONS`]).
    pub reduce: [UnaryOp; 2],
    /// Whether each branch is summed over its items (`total`) instead of left per item (the
    /// final value then averages over items, as in the reference).
    pub total: [bool; 2],
    /// The op applied to each branch's scalar(s) (one of [`EXTENDED_POST_OPS`]).
    pub post: [UnaryOp; 2],
    /// The op joining the branches.
    pub binary: BinaryOp,
    /// Each branch's element-wise partner: with `Some`, the branch's chain starts from
    /// `op(input, with)` item by item (for example `mul(weight, grad)`, the W⊙∇W behind SNIP
    /// and synaptic saliency) instead of from the input alone. Absent in files written
    /// without pairs.
    #[serde(default, skip_serializing_if = "no_pairs")]
    pub pair: [Option<ElementwisePair>; 2],
}

/// The second operand of an extended branch's element-wise pair (see
/// [`ExtendedGenotype::pair`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ElementwisePair {
    /// The element-wise op (one of [`EXTENDED_BINARY`]).
    pub op: BinaryOp,
    /// The input it combines the branch's input with, item by item (the items must have
    /// equal shapes, or the candidate has no value and is pruned).
    pub with: Input,
}

impl ElementwisePair {
    /// A pair for a branch reading `input`, drawn with probability `p` (nothing drawn when `p`
    /// is 0): op from [`EXTENDED_BINARY`], partner uniformly from the other inputs (a pair
    /// of an input with itself is a unary op the chain already has: `mul(x, x)` is `pow2(x)`).
    pub fn maybe_random(p: f64, input: Input, rng: &mut Rng) -> Option<Self> {
        if p > 0.0 && rng.bernoulli(p) {
            let others: Vec<Input> = Input::ALL.into_iter().filter(|&i| i != input).collect();
            Some(Self {
                op: sample_from(&EXTENDED_BINARY, rng),
                with: others[rng.range(0, others.len())],
            })
        } else {
            None
        }
    }
}

/// True when neither branch has a pair (serde: the field is then left out).
fn no_pairs(pair: &[Option<ElementwisePair>; 2]) -> bool {
    pair.iter().all(Option::is_none)
}

/// Reductions an extended branch can end with, and their sampling weights (not normalised).
pub const EXTENDED_REDUCTIONS: [(UnaryOp, f64); 6] = [
    (UnaryOp::Mean, 0.3),
    (UnaryOp::Sum, 0.3),
    (UnaryOp::FrobeniusNorm, 0.1),
    (UnaryOp::L1Norm, 0.1),
    (UnaryOp::Std, 0.1),
    (UnaryOp::Size, 0.1),
];

/// Ops applied after an extended branch's reduction, and their sampling weights.
pub const EXTENDED_POST_OPS: [(UnaryOp, f64); 6] = [
    (UnaryOp::NoOp, 0.4),
    (UnaryOp::Log, 0.2),
    (UnaryOp::Sqrt, 0.1),
    (UnaryOp::Pow2, 0.1),
    (UnaryOp::Neg, 0.1),
    (UnaryOp::Invert, 0.1),
];

/// Binary ops joining extended branches, and their weights (the branches are scalars, so
/// `matmul` would be `mul`).
pub const EXTENDED_BINARY: [(BinaryOp, f64); 3] = [
    (BinaryOp::Add, 0.5),
    (BinaryOp::Sub, 0.25),
    (BinaryOp::Mul, 0.25),
];

/// The join of an extended genotype's branches: the rank join `rank_add` with probability
/// `rank_join` (nothing drawn for it when 0), else one of [`EXTENDED_BINARY`].
pub fn sample_join(rank_join: f64, rng: &mut Rng) -> BinaryOp {
    if rank_join > 0.0 && rng.bernoulli(rank_join) {
        BinaryOp::RankAdd
    } else {
        sample_from(&EXTENDED_BINARY, rng)
    }
}

/// Probability that a freshly drawn extended branch is summed over its items.
pub const EXTENDED_TOTAL_P: f64 = 0.5;

/// True when `x` is one of the entries of a weighted table (a genome read from a file may
/// hold a value its table does not).
fn in_table<T: PartialEq>(x: &T, table: &[(T, f64)]) -> bool {
    table.iter().any(|(t, _)| t == x)
}

/// One entry of a weighted table.
pub fn sample_from<T: Copy>(table: &[(T, f64)], rng: &mut Rng) -> T {
    let weights: Vec<f64> = table.iter().map(|(_, w)| *w).collect();
    table[rng.weighted(&weights)].0
}

impl ExtendedGenotype {
    /// A random extended genotype with `n_unary` item-wise ops per branch, each branch with an
    /// element-wise pair with probability `pairs`, and joined by rank (`rank_add`) with
    /// probability `rank_join` (both drawn after the rest, nothing drawn at 0).
    pub fn random(n_unary: usize, pairs: f64, rank_join: f64, rng: &mut Rng) -> Self {
        let branch = |rng: &mut Rng| {
            (
                sample_input(rng),
                (0..n_unary).map(|_| sample_unary(rng)).collect::<Vec<_>>(),
                sample_from(&EXTENDED_REDUCTIONS, rng),
                rng.bernoulli(EXTENDED_TOTAL_P),
                sample_from(&EXTENDED_POST_OPS, rng),
            )
        };
        let (i0, u0, r0, t0, p0) = branch(rng);
        let (i1, u1, r1, t1, p1) = branch(rng);
        let mut binary = sample_from(&EXTENDED_BINARY, rng);
        let pair = [
            ElementwisePair::maybe_random(pairs, i0, rng),
            ElementwisePair::maybe_random(pairs, i1, rng),
        ];
        if rank_join > 0.0 && rng.bernoulli(rank_join) {
            binary = BinaryOp::RankAdd;
        }
        Self {
            inputs: [i0, i1],
            unary: [u0, u1],
            reduce: [r0, r1],
            total: [t0, t1],
            post: [p0, p1],
            binary,
            pair,
        }
    }

    /// The expression `binary(branch 0, branch 1)`.
    pub fn to_expr(&self) -> Expr {
        let branch = |k: usize| {
            let start = match self.pair[k] {
                Some(p) => Expr::binary(p.op, Expr::Input(self.inputs[k]), Expr::Input(p.with)),
                None => Expr::Input(self.inputs[k]),
            };
            let chain = self.unary[k]
                .iter()
                .fold(start, |e, &op| Expr::unary(op, e));
            let reduced = Expr::unary(self.reduce[k], chain);
            let summed = if self.total[k] {
                Expr::unary(UnaryOp::Total, reduced)
            } else {
                reduced
            };
            Expr::unary(self.post[k], summed)
        };
        Expr::binary(self.binary, branch(0), branch(1))
    }
}

/// An input drawn uniformly from [`Input::ALL`].
pub fn sample_input(rng: &mut Rng) -> Input {
    Input::ALL[rng.range(0, Input::ALL.len())]
}

/// A unary op drawn with the reference weights ([`UNARY_SAMPLING_WEIGHTS`]).
pub fn sample_unary(rng: &mut Rng) -> UnaryOp {
    UnaryOp::REFERENCE[rng.weighted(&UNARY_SAMPLING_WEIGHTS)]
}

/// A binary op drawn with the reference weights ([`BINARY_SAMPLING_WEIGHTS`]).
pub fn sample_binary(rng: &mut Rng) -> BinaryOp {
    BinaryOp::ALL[rng.weighted(&BINARY_SAMPLING_WEIGHTS)]
}

/// Unary ops of free trees: the reference ops with their weights plus lpzero's extensions
/// (`sum`, `size`, `total`), each as likely as a reference op.
pub fn sample_free_unary(rng: &mut Rng) -> UnaryOp {
    const EXTENSIONS: [UnaryOp; 3] = [UnaryOp::Sum, UnaryOp::Size, UnaryOp::Total];
    let mut weights = UNARY_SAMPLING_WEIGHTS.to_vec();
    weights.extend(EXTENSIONS.iter().map(|_| UNARY_SAMPLING_WEIGHTS[0]));
    let i = rng.weighted(&weights);
    UnaryOp::REFERENCE
        .get(i)
        .copied()
        .unwrap_or_else(|| EXTENSIONS[i - UnaryOp::REFERENCE.len()])
}

/// A random tree of depth at most `max_depth` ("grow" method): below the limit a node is a
/// leaf, a unary op or a binary op with [`FREE_NODE_WEIGHTS`] (never a leaf when `root`); at
/// the limit it is a leaf.
pub fn grow_expr(max_depth: usize, root: bool, rng: &mut Rng) -> Expr {
    if max_depth <= 1 {
        return Expr::Input(sample_input(rng));
    }
    let kind = if root {
        1 + rng.weighted(&FREE_NODE_WEIGHTS[1..])
    } else {
        rng.weighted(&FREE_NODE_WEIGHTS)
    };
    match kind {
        0 => Expr::Input(sample_input(rng)),
        1 => {
            let op = sample_free_unary(rng);
            Expr::unary(op, grow_expr(max_depth - 1, false, rng))
        }
        _ => {
            let op = sample_binary(rng);
            let a = grow_expr(max_depth - 1, false, rng);
            let b = grow_expr(max_depth - 1, false, rng);
            Expr::binary(op, a, b)
        }
    }
}

impl Genome {
    /// A random genome of the spec's structure (reference sampling weights).
    pub fn random(spec: &GenomeSpec, rng: &mut Rng) -> Self {
        match spec.structure {
            Structure::Tree => {
                let inputs = [sample_input(rng), sample_input(rng)];
                let first = (0..spec.n_unary).map(|_| sample_unary(rng)).collect();
                let second = (0..spec.n_unary).map(|_| sample_unary(rng)).collect();
                Genome::Tree(TreeGenotype {
                    inputs,
                    unary: [first, second],
                    binary: sample_binary(rng),
                })
            }
            Structure::Linear => Genome::Linear {
                input: sample_input(rng),
                ops: (0..spec.linear_length).map(|_| sample_unary(rng)).collect(),
            },
            Structure::Graph => Genome::Graph {
                inputs: [sample_input(rng), sample_input(rng)],
                edges: (0..GRAPH_EDGES).map(|_| sample_unary(rng)).collect(),
            },
            Structure::Free => Genome::Free {
                expr: grow_expr(spec.max_depth, true, rng),
            },
            Structure::Extended => Genome::Extended(ExtendedGenotype::random(
                spec.n_unary,
                spec.pairs,
                spec.rank_join,
                rng,
            )),
        }
    }

    /// The structure this genome belongs to.
    pub fn structure(&self) -> Structure {
        match self {
            Genome::Tree(_) => Structure::Tree,
            Genome::Linear { .. } => Structure::Linear,
            Genome::Graph { .. } => Structure::Graph,
            Genome::Free { .. } => Structure::Free,
            Genome::Extended(_) => Structure::Extended,
        }
    }

    /// The proxy expression of this genome (mappings in the module docs).
    pub fn to_expr(&self) -> Expr {
        match self {
            Genome::Tree(g) => g.to_expr(),
            Genome::Linear { input, ops } => {
                let chain = ops
                    .iter()
                    .fold(Expr::Input(*input), |e, &op| Expr::unary(op, e));
                Expr::unary(UnaryOp::Mean, chain)
            }
            Genome::Graph { inputs, edges } => graph_expr(*inputs, edges),
            Genome::Free { expr } => expr.clone(),
            Genome::Extended(g) => g.to_expr(),
        }
    }

    /// Checks that the genome has the shape `spec` asks for: its structure, `n_unary` ops per
    /// tree or extended branch (with a known reduction and post op), `linear_length` ops in a chain, [`GRAPH_EDGES`] edge ops, or a free tree
    /// no deeper than `max_depth` (for genomes read from a file, which may have been edited).
    pub fn check(&self, spec: &GenomeSpec) -> Result<(), String> {
        if self.structure() != spec.structure {
            return Err(format!(
                "a {} genome in a {} search",
                self.structure(),
                spec.structure
            ));
        }
        // A rank join is only an extended genome's join, and only in a search that draws it.
        let rank_join_ok = match self {
            Genome::Tree(g) => !g.binary.is_set_level(),
            Genome::Extended(g) => !g.binary.is_set_level() || spec.rank_join > 0.0,
            Genome::Free { expr } => !crate::proxy::set::has_rank_join(expr),
            Genome::Linear { .. } | Genome::Graph { .. } => true,
        };
        if !rank_join_ok {
            return Err(format!(
                "a {} genome holding `{}`: the rank join is only the join of an extended genome, \
                 in a search with rank_join above 0",
                self.structure(),
                BinaryOp::RankAdd
            ));
        }
        let (what, found, expected) = match self {
            Genome::Tree(g) => {
                let bad = g.unary.iter().find(|c| c.len() != spec.n_unary);
                match bad {
                    Some(c) => ("unary ops in a branch", c.len(), spec.n_unary),
                    None => return Ok(()),
                }
            }
            Genome::Extended(g) => {
                if let Some(op) = g
                    .reduce
                    .iter()
                    .find(|&r| !in_table(r, &EXTENDED_REDUCTIONS))
                {
                    return Err(format!(
                        "`{op}` is not a reduction of the extended template"
                    ));
                }
                if let Some(op) = g.post.iter().find(|&p| !in_table(p, &EXTENDED_POST_OPS)) {
                    return Err(format!("`{op}` is not a post op of the extended template"));
                }
                let mut pair_ops = g.pair.iter().flatten().map(|p| p.op);
                if let Some(op) = pair_ops.find(|op| !in_table(op, &EXTENDED_BINARY)) {
                    return Err(format!(
                        "`{op}` is not an element-wise pair op of the extended template"
                    ));
                }
                match g.unary.iter().find(|c| c.len() != spec.n_unary) {
                    Some(c) => ("unary ops in a branch", c.len(), spec.n_unary),
                    None => return Ok(()),
                }
            }
            Genome::Linear { ops, .. } => ("unary ops in the chain", ops.len(), spec.linear_length),
            Genome::Graph { edges, .. } => ("edge ops", edges.len(), GRAPH_EDGES),
            Genome::Free { expr } if expr.depth() > spec.max_depth => {
                return Err(format!(
                    "a free tree of depth {}, deeper than the maximum {}",
                    expr.depth(),
                    spec.max_depth
                ))
            }
            Genome::Free { .. } => return Ok(()),
        };
        if found == expected {
            Ok(())
        } else {
            Err(format!("{found} {what}, expected {expected}"))
        }
    }
}

/// Sum of the present terms with `add`, left to right; `None` when there is none.
fn sum(terms: Vec<Expr>) -> Option<Expr> {
    terms
        .into_iter()
        .reduce(|acc, t| Expr::binary(BinaryOp::Add, acc, t))
}

/// The graph structure's expression (see the module docs). Missing edge ops (a short `edges`
/// vector) count as `disconnect`.
fn graph_expr(inputs: [Input; 2], edges: &[UnaryOp]) -> Expr {
    let mut states: Vec<Option<Expr>> =
        vec![Some(Expr::Input(inputs[0])), Some(Expr::Input(inputs[1]))];
    let mut nodes = Vec::with_capacity(GRAPH_NODES);
    let mut edge = 0;
    for _ in 0..GRAPH_NODES {
        let mut terms = Vec::new();
        for state in &states {
            let op = edges.get(edge).copied().unwrap_or(UnaryOp::Disconnect);
            edge += 1;
            if op == UnaryOp::Disconnect {
                continue;
            }
            if let Some(s) = state {
                terms.push(Expr::unary(op, s.clone()));
            }
        }
        let node = sum(terms);
        nodes.push(node.clone());
        states.push(node);
    }
    let means = nodes
        .into_iter()
        .flatten()
        .map(|n| Expr::unary(UnaryOp::Mean, n))
        .collect();
    sum(means).unwrap_or_else(|| {
        Expr::binary(
            BinaryOp::Add,
            Expr::unary(UnaryOp::Disconnect, Expr::Input(inputs[0])),
            Expr::unary(UnaryOp::Disconnect, Expr::Input(inputs[1])),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::parse::parse;

    fn spec(structure: Structure) -> GenomeSpec {
        GenomeSpec {
            structure,
            n_unary: 2,
            linear_length: 4,
            max_depth: 5,
            pairs: 0.0,
            rank_join: 0.0,
        }
    }

    #[test]
    fn random_genomes_round_trip() {
        let mut rng = Rng::new(11);
        for s in Structure::ALL {
            for _ in 0..200 {
                let g = Genome::random(&spec(s), &mut rng);
                assert_eq!(g.structure(), s);
                let e = g.to_expr();
                let text = e.to_string();
                assert_eq!(parse(&text).unwrap(), e, "{text}");
                if s == Structure::Free {
                    assert!(e.depth() <= 5, "{text}");
                    assert!(!matches!(e, Expr::Input(_)));
                }
                let json = serde_json::to_string(&g).unwrap();
                assert_eq!(serde_json::from_str::<Genome>(&json).unwrap(), g, "{json}");
            }
        }
    }

    #[test]
    fn tree_and_linear_mapping() {
        let g = Genome::Tree(TreeGenotype::builtin("lpzero_bert").unwrap());
        assert_eq!(
            g.to_expr().to_string(),
            "add(mean(pow2(neg(head))), mean(logsoftmax(frobenius_norm(act))))"
        );
        let l = Genome::Linear {
            input: Input::Weight,
            ops: vec![UnaryOp::Abs, UnaryOp::Pow2, UnaryOp::Log, UnaryOp::NoOp],
        };
        assert_eq!(
            l.to_expr().to_string(),
            "mean(no_op(log(pow2(abs(weight)))))"
        );
    }

    #[test]
    fn extended_mapping_contains_the_reference_template() {
        use UnaryOp::*;
        let g = ExtendedGenotype {
            inputs: [Input::Head, Input::Weight],
            unary: [vec![Abs, NoOp], vec![Pow2, Sqrt]],
            reduce: [FrobeniusNorm, Size],
            total: [true, false],
            post: [Log, NoOp],
            binary: BinaryOp::Sub,
            pair: [None, None],
        };
        assert_eq!(
            g.to_expr().to_string(),
            "sub(log(total(frobenius_norm(no_op(abs(head))))), no_op(size(sqrt(pow2(weight)))))"
        );
        // mean, no total and no post op: the reference template.
        let t = TreeGenotype::builtin("lpzero_bert").unwrap();
        let e = ExtendedGenotype {
            inputs: t.inputs,
            unary: t.unary.clone(),
            reduce: [Mean, Mean],
            total: [false, false],
            post: [NoOp, NoOp],
            binary: t.binary,
            pair: [None, None],
        };
        assert_eq!(
            crate::proxy::canonical::key(&e.to_expr()),
            crate::proxy::canonical::key(&t.to_expr())
        );
        let mut rng = Rng::new(3);
        let totals = (0..400)
            .map(|_| ExtendedGenotype::random(2, 0.0, 0.0, &mut rng))
            .filter(|g| g.total[0])
            .count();
        assert!((150..250).contains(&totals), "{totals}");
    }

    #[test]
    fn rank_joins_are_drawn_only_when_asked_and_checked_as_extended_joins() {
        let mut rng = Rng::new(5);
        let joined = (0..400)
            .map(|_| ExtendedGenotype::random(2, 0.0, 0.5, &mut rng))
            .filter(|g| g.binary == BinaryOp::RankAdd)
            .count();
        assert!((150..250).contains(&joined), "{joined}");
        let mut rng = Rng::new(5);
        assert!((0..400)
            .map(|_| ExtendedGenotype::random(2, 0.0, 0.0, &mut rng))
            .all(|g| g.binary != BinaryOp::RankAdd));
        let mut rng = Rng::new(6);
        let mut g = ExtendedGenotype::random(2, 0.0, 0.0, &mut rng);
        g.binary = BinaryOp::RankAdd;
        assert!(g.to_expr().to_string().starts_with("rank_add("));
        let on = GenomeSpec {
            rank_join: 0.5,
            ..spec(Structure::Extended)
        };
        assert!(Genome::Extended(g.clone()).check(&on).is_ok());
        let off = Genome::Extended(g).check(&spec(Structure::Extended));
        assert!(off.unwrap_err().contains("rank_join"));
        let mut t = TreeGenotype::from_indices([0, 1], [&[2, 3], &[4, 5]], 0).unwrap();
        t.binary = BinaryOp::RankAdd;
        assert!(Genome::Tree(t).check(&on).is_err());
    }

    #[test]
    fn extended_pairs_start_a_branch_from_an_element_wise_pair() {
        use UnaryOp::*;
        let g = ExtendedGenotype {
            inputs: [Input::Weight, Input::Head],
            unary: [vec![Abs, NoOp], vec![NoOp, NoOp]],
            reduce: [Sum, Mean],
            total: [true, false],
            post: [NoOp, Log],
            binary: BinaryOp::Add,
            pair: [
                Some(ElementwisePair {
                    op: BinaryOp::Mul,
                    with: Input::Grad,
                }),
                None,
            ],
        };
        assert_eq!(
            g.to_expr().to_string(),
            "add(no_op(total(sum(no_op(abs(mul(weight, grad)))))), log(mean(no_op(no_op(head)))))"
        );
        let json = serde_json::to_string(&Genome::Extended(g.clone())).unwrap();
        assert!(json.contains("\"pair\""), "{json}");
        assert_eq!(
            serde_json::from_str::<Genome>(&json).unwrap(),
            Genome::Extended(g.clone())
        );
        // Without pairs the field is left out, and files without it read back as no pairs.
        let plain = ExtendedGenotype {
            pair: [None, None],
            ..g.clone()
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("pair"), "{json}");
        assert_eq!(
            serde_json::from_str::<ExtendedGenotype>(&json).unwrap(),
            plain
        );

        // The pair genes are drawn after the others, and `pairs = 0` draws nothing for them:
        // a tiny `pairs` gives the same other genes but leaves the RNG elsewhere.
        let mut a = Rng::new(9);
        let mut with = spec(Structure::Extended);
        let without = with;
        with.pairs = 1e-300;
        for _ in 0..50 {
            let mut b = a.clone();
            let x = Genome::random(&without, &mut a);
            let Genome::Extended(y) = Genome::random(&with, &mut b) else {
                unreachable!()
            };
            assert_eq!(
                Genome::Extended(ExtendedGenotype {
                    pair: [None, None],
                    ..y
                }),
                x
            );
            assert_ne!(a, b);
        }
        // At `pairs = 0.5` about half the branches have a pair, each op from the binary table.
        with.pairs = 0.5;
        let mut rng = Rng::new(4);
        let mut paired = 0;
        for _ in 0..400 {
            let Genome::Extended(g) = Genome::random(&with, &mut rng) else {
                unreachable!()
            };
            assert!(Genome::Extended(g.clone()).check(&with).is_ok());
            paired += g.pair.iter().flatten().count();
            for (p, input) in g.pair.iter().zip(g.inputs) {
                assert!(p.is_none_or(|p| p.with != input), "{g:?}");
            }
        }
        assert!((300..500).contains(&paired), "{paired}");
        // A pair op outside the binary table (a hand-edited file) is refused by name.
        let bad = Genome::Extended(ExtendedGenotype {
            pair: [
                None,
                Some(ElementwisePair {
                    op: BinaryOp::Matmul,
                    with: Input::Grad,
                }),
            ],
            ..g
        });
        let e = bad.check(&with).unwrap_err();
        assert!(e.contains("`matmul` is not an element-wise pair op"), "{e}");
    }

    #[test]
    fn graph_mapping() {
        use UnaryOp::*;
        let g = Genome::Graph {
            inputs: [Input::Head, Input::Act],
            edges: vec![
                Abs, Neg, Disconnect, Pow2, NoOp, Disconnect, Disconnect, Disconnect, Exp,
            ],
        };
        // n0 = abs(head) + neg(act); n1 = pow2(act) + no_op(n0); n2 = exp(n1).
        let n0 = "add(abs(head), neg(act))";
        let n1 = format!("add(pow2(act), no_op({n0}))");
        let n2 = format!("exp({n1})");
        let want = format!("add(add(mean({n0}), mean({n1})), mean({n2}))");
        assert_eq!(g.to_expr().to_string(), want);
        // All edges into node 0 disconnected: node 0 has no value and is left out everywhere.
        let h = Genome::Graph {
            inputs: [Input::Head, Input::Act],
            edges: vec![
                Disconnect, Disconnect, Abs, Neg, Sigmoid, Disconnect, Disconnect, Exp, Exp,
            ],
        };
        assert_eq!(
            h.to_expr().to_string(),
            "add(mean(add(abs(head), neg(act))), mean(exp(add(abs(head), neg(act)))))"
        );
        // Nothing connected: no value.
        let none = Genome::Graph {
            inputs: [Input::Head, Input::Act],
            edges: vec![Disconnect; GRAPH_EDGES],
        };
        assert_eq!(
            none.to_expr().to_string(),
            "add(disconnect(head), disconnect(act))"
        );
    }
}
