//! Proxies: functions from a probe to one number per architecture.
//!
//! `ops` is the table of unary and binary operations and `chain` evaluates runs of unary ops
//! quickly. The expression language the search builds from them is split by concern: `expr`
//! (the inputs and the tree), `parse` (its text form), `canonical` (its canonical form), `eval`
//! (its value over a probe, and the memo), `set` (values over a set of architectures: the
//! rank join `rank_add`) and `genotype` (the reference LPZero genotypes).
//! `builtin` holds the named human-designed proxies.

pub mod builtin;
pub mod canonical;
pub mod chain;
pub mod eval;
pub mod expr;
pub mod genotype;
pub mod ops;
pub mod parse;
pub mod set;

#[cfg(test)]
mod tests;
