//! The family seam: what a model family is ([`FamilyInfo`]) and does ([`Family`]), and the
//! small types it reports with. The registry is [`super::FAMILIES`].

use std::ops::RangeInclusive;

use anyhow::{bail, Context, Result};

use crate::bench::space::DesignSpace;
use crate::bench::{Arch, BenchKind};
use crate::probe::memory::ModelSize;
use crate::probe::{Batch, Probe, ProbeOptions, Semantics, Storage, MAX_BATCH};

/// What a family is, as data: the part of [`Family`] that needs no code.
#[derive(Debug)]
pub struct FamilyInfo {
    /// The family (a handle to its benchmark format, which names it).
    pub kind: BenchKind,
    /// Default probe batch: `(rows, tokens per row)`.
    pub default_batch_shape: (usize, usize),
    /// The tokens per row a probe accepts (the model's position table bounds it).
    pub seq_len_range: RangeInclusive<usize>,
    /// The family-specific fields of [`ProbeOptions`] that apply to this family, by their
    /// serialised names (`grad_signal`, `sizes`); the others are ignored by its probes.
    pub option_names: &'static [&'static str],
    /// What the family's probes mean to the proxies whose definition differs by family.
    pub semantics: &'static Semantics,
    /// The published LPZero genotypes of the family (`lpzero score --proxy all` adds them).
    pub genotypes: &'static [&'static str],
    /// The benchmark's own table of reference proxy values, when it ships one.
    pub reference: Option<&'static Reference>,
    /// The family's design space (its file is `bench/<family>/space.rs`): what `lpzero nas`
    /// draws new architectures from and mutates them in.
    pub design_space: Option<&'static dyn DesignSpace>,
}

/// What a model family provides besides its benchmark format (see the module docs): its
/// [`FamilyInfo`], its probe batch, how its architectures are probed and counted, and their
/// size. Its architectures come as [`Arch`] values holding the family's own record type.
pub trait Family: Sync {
    /// What the family is, as data.
    fn info(&self) -> &'static FamilyInfo;

    /// The probe batch under `opts` (corpus when given, else synthetic), once [`Family::batch`]
    /// has checked the shape.
    fn build_batch(&self, opts: &ProbeOptions) -> Result<Batch>;

    /// Builds and probes one architecture; `index` is its position in the benchmark (it
    /// selects the weight and dropout streams) and `batch` comes from [`Family::batch`].
    fn probe(&self, arch: &Arch, index: usize, opts: &ProbeOptions, batch: &Batch)
        -> Result<Probe>;

    /// The parameter count of one architecture, counted from the tensors of its built model,
    /// with the family's extra columns.
    fn count_params(&self, arch: &Arch, opts: &ProbeOptions) -> Result<Counted>;

    /// The shapes that decide the memory one architecture needs (for
    /// [`crate::probe::memory`]).
    fn size(&self, arch: &Arch, opts: &ProbeOptions) -> Result<ModelSize>;

    /// CPU inference latency of one architecture on `batch` (from [`Family::batch`]): the
    /// model the probe builds, its forward pass timed `repeats` times after one warm-up pass
    /// ([`crate::probe::time_forward`]), in milliseconds.
    fn latency(
        &self,
        arch: &Arch,
        index: usize,
        opts: &ProbeOptions,
        batch: &Batch,
        repeats: usize,
    ) -> Result<Vec<f64>>;

    /// The family's design space ([`FamilyInfo::design_space`]); an error for a family
    /// without one (Llama: its sub-networks have their own space and search, `crate::subnet`).
    fn design_space(&self) -> Result<&'static dyn DesignSpace> {
        self.info().design_space.ok_or_else(|| {
            anyhow::anyhow!(
                "the {} family has no design space of new architectures to rank, draw or \
                 write out",
                self.kind()
            )
        })
    }

    /// The family ([`FamilyInfo::kind`]).
    fn kind(&self) -> BenchKind {
        self.info().kind
    }

    /// The family's name (its [`BenchKind`]'s).
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Default probe batch ([`FamilyInfo::default_batch_shape`]).
    fn default_batch_shape(&self) -> (usize, usize) {
        self.info().default_batch_shape
    }

    /// The tokens per row a probe accepts ([`FamilyInfo::seq_len_range`]).
    fn seq_len_range(&self) -> RangeInclusive<usize> {
        self.info().seq_len_range.clone()
    }

    /// The family-specific probe options that apply ([`FamilyInfo::option_names`]).
    fn option_names(&self) -> &'static [&'static str] {
        self.info().option_names
    }

    /// What the family's probes mean to the proxies ([`FamilyInfo::semantics`]).
    fn semantics(&self) -> &'static Semantics {
        self.info().semantics
    }

    /// The family's published genotypes ([`FamilyInfo::genotypes`]).
    fn genotypes(&self) -> &'static [&'static str] {
        self.info().genotypes
    }

    /// The benchmark's reference proxy table, if any ([`FamilyInfo::reference`]).
    fn reference(&self) -> Option<&'static Reference> {
        self.info().reference
    }

    /// The family's default probe options: [`Family::default_batch_shape`], seed 0, the
    /// default backward signal and sizes, no dropout, the synthetic batch, no extra passes,
    /// f32 storage.
    fn probe_options(&self) -> ProbeOptions {
        let (batch, seq_len) = self.default_batch_shape();
        ProbeOptions {
            batch,
            seq_len,
            seed: 0,
            grad_signal: Default::default(),
            sizes: Default::default(),
            dropout: false,
            corpus: None,
            extra_passes: false,
            storage: Default::default(),
            pass: Default::default(),
            diversity_ahead: false,
        }
    }

    /// Checks the batch shape of `opts`: 1..=[`MAX_BATCH`] rows, and tokens per row within
    /// [`Family::seq_len_range`].
    fn validate(&self, opts: &ProbeOptions) -> Result<()> {
        if !(1..=MAX_BATCH).contains(&opts.batch) {
            bail!(
                "batch must be within 1..={MAX_BATCH} rows, got {}",
                opts.batch
            );
        }
        let range = self.seq_len_range();
        if !range.contains(&opts.seq_len) {
            bail!(
                "seq_len must be within {}..={} tokens per row for {} (the position table), got {}",
                range.start(),
                range.end(),
                self.name(),
                opts.seq_len
            );
        }
        Ok(())
    }

    /// The probe batch under `opts` ([`Family::build_batch`]), after checking that its shape
    /// is within bounds.
    fn batch(&self, opts: &ProbeOptions) -> Result<Batch> {
        if opts.batch > MAX_BATCH {
            bail!(
                "a batch of {} rows is more than the {MAX_BATCH} a probe accepts",
                opts.batch
            );
        }
        let max = *self.seq_len_range().end();
        if opts.seq_len > max {
            bail!(
                "{} tokens per row exceed the {max} positions of the {} models",
                opts.seq_len,
                self.name()
            );
        }
        self.build_batch(opts)
    }

    /// The settings that decide the values of a probe of this family, as a JSON object:
    /// `bench`, `batch`, `seq_len`, `seed`, `dropout`, the family's own options
    /// ([`Family::option_names`]), and `corpus`, the corpus file's content hash (`null` for the
    /// synthetic batch; the content, not the path, decides the batch). A search records it in
    /// its checkpoints, and a resume with other settings is refused. Fails when the corpus
    /// cannot be read.
    fn settings(&self, opts: &ProbeOptions) -> Result<serde_json::Value> {
        let corpus = match &opts.corpus {
            None => serde_json::Value::Null,
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("{}: cannot read the corpus", path.display()))?;
                format!("fnv1a64:{:016x}", crate::report::fnv1a64(&bytes)).into()
            }
        };
        let mut settings = serde_json::json!({
            "bench": self.name(),
            "batch": opts.batch,
            "seq_len": opts.seq_len,
            "seed": opts.seed,
            "dropout": opts.dropout,
            "corpus": corpus,
        });
        let all = serde_json::to_value(opts)?;
        for &name in self.option_names() {
            settings[name] = all[name].clone();
        }
        if opts.storage != Storage::F32 {
            // Values read the stored arrays. (Absent for f32, so that checkpoints written
            // before the choice existed still resume.)
            settings["storage"] = opts.storage.name().into();
        }
        Ok(settings)
    }
}

/// A parameter count as a family reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Every trainable parameter, tied tensors once.
    pub total: usize,
    /// The family's further columns, in output order (empty for FlexiBERT; GPT-2's
    /// `AdaEmb`, `Attn`, `FFN`, `nonembedding`).
    pub columns: Vec<(&'static str, usize)>,
}

/// A benchmark's table of reference proxy values: the file (inside the data folder, a CSV
/// whose first column is `ID`) and, per proxy that has one, its column.
#[derive(Debug)]
pub struct Reference {
    /// Path of the table inside the data folder.
    pub file: &'static str,
    /// `(proxy, column)` pairs.
    pub columns: &'static [(&'static str, &'static str)],
}

impl Reference {
    /// The column `proxy` is checked against, if any.
    pub fn column(&self, proxy: &str) -> Option<&'static str> {
        self.columns
            .iter()
            .find(|(p, _)| *p == proxy)
            .map(|(_, c)| *c)
    }
}
