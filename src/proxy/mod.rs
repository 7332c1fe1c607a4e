//! Proxies: functions from a probe to one number per architecture.
//!
//! `ops` is the table of unary and binary operations, `chain` evaluates runs of unary ops
//! quickly, `expr` holds the symbolic expressions the search builds from them, and `builtin` the
//! named proxies (published LPZero genotypes and the human-designed ones).

pub mod builtin;
pub mod chain;
pub mod eval;
pub mod expr;
pub mod ops;
