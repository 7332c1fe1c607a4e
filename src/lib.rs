//! lpzero: discover zero-cost proxies for language-model architecture search (LPZero) and use them.
//!
//! The library is organised after the data flow: `bench` loads benchmarks and ground truth,
//! `models` builds randomly initialised networks, `probe` runs them once and keeps plain arrays,
//! `proxy` turns probes into scores, `stats` compares scores with ground truth; `scoring`,
//! `baselines` and `search` are the jobs built from these; `shard` splits a scoring job over
//! many processes and merges their files; `export` writes an expression as a PyTorch function
//! or a LaTeX formula.

pub mod array;
pub mod baselines;
pub mod bench;
pub mod compare;
pub mod export;
pub mod linalg;
pub mod models;
pub mod params;
pub mod probe;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod scoring;
pub mod search;
pub mod shard;
pub mod stats;
pub mod study;
