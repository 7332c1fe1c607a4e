//! lpzero: discover zero-cost proxies for language-model architecture search (LPZero) and use them.
//!
//! The library is organised after the data flow: `bench` loads benchmarks and ground truth,
//! `nn` holds the network building blocks, `probe` runs a network once and keeps plain arrays,
//! `models` holds the model families (each one a [`models::Family`]: its network, how it is
//! probed and counted, what its probes mean), `proxy` turns probes into scores, `stats`
//! compares scores with ground truth; `params`, `scoring`, `baselines`, `search`, `compare`
//! and `study` are the jobs built from these; `shard` splits a scoring job over many
//! processes and merges their files; `nas` searches architectures with a proxy (the family's
//! design space from `bench::space`, budgets, measured latency, the Pareto front); `export`
//! writes an expression as a PyTorch function or a LaTeX formula. `docs/architecture.md`
//! draws the layers.

#[macro_use]
mod simd;

pub mod array;
pub mod baselines;
pub mod bench;
pub mod compare;
pub mod export;
pub mod linalg;
pub mod models;
pub mod nas;
pub mod nn;
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
pub mod subnet;
pub mod svg;
