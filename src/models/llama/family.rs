//! The Llama family behind the family seam ([`crate::models::Family`]): a bench-file record is
//! a sub-network of a model folder ([`crate::bench::llama::Record`]), probed whole
//! ([`super::whole_probe`], with the extra passes when the probe options ask for them) with the
//! probe options' seed for drawn weights.

use anyhow::{bail, Context, Result};

use super::{whole_probe, LlamaModel, Subnet, SEMANTICS};
use crate::bench::llama::{Record, KIND};
use crate::bench::Arch;
use crate::models::family::{Counted, Family, FamilyInfo};
use crate::probe::memory::ModelSize;
use crate::probe::{Batch, Probe, ProbeOptions};

/// Vocabulary the synthetic Zipf batch is drawn over before each model folds it into its own
/// (`id mod vocab_size`): the batch is built before the model is known.
pub const ZIPF_VOCAB: u32 = 32000;

/// The Llama family's data.
static INFO: FamilyInfo = FamilyInfo {
    kind: KIND,
    default_batch_shape: (1, 64),
    seq_len_range: 1..=4096,
    option_names: &[],
    semantics: &SEMANTICS,
    genotypes: &[],
    reference: None,
    design_space: None,
};

/// The Llama family, as registered in [`crate::models::FAMILIES`].
pub struct Llama;

/// The registered instance.
pub static FAMILY: Llama = Llama;

/// The model and sub-network of a record (the model opened with `seed` for drawn weights).
fn open(arch: &Arch, seed: u64) -> Result<(LlamaModel, Subnet)> {
    let r = arch.of::<Record>()?;
    let model = LlamaModel::open(std::path::Path::new(&r.model), seed)?;
    let subnet = Subnet {
        ffn_widths: r.ffn_widths.clone(),
        heads: r.heads.clone(),
    };
    subnet
        .check(&model.config)
        .with_context(|| format!("{}: sub-network", r.model))?;
    Ok((model, subnet))
}

impl Family for Llama {
    fn info(&self) -> &'static FamilyInfo {
        &INFO
    }

    fn build_batch(&self, opts: &ProbeOptions) -> Result<Batch> {
        match &opts.corpus {
            Some(path) => Batch::from_corpus(path, opts.batch, opts.seq_len + 1, u32::MAX),
            None => Batch::synthetic_zipf(opts.batch, opts.seq_len + 1, ZIPF_VOCAB, opts.seed),
        }
    }

    fn probe(
        &self,
        arch: &Arch,
        index: usize,
        opts: &ProbeOptions,
        batch: &Batch,
    ) -> Result<Probe> {
        let (model, subnet) = open(arch, opts.seed)?;
        let vocab = model.config.vocab_size as u32;
        let mut batch = batch.clone();
        if opts.corpus.is_some() {
            if let Some((i, id)) = batch.ids.iter().enumerate().find(|(_, &id)| id >= vocab) {
                bail!(
                    "corpus token {i} is {id}, expected an id below the model's vocab_size {vocab}"
                );
            }
        } else {
            batch.ids.iter_mut().for_each(|id| *id %= vocab);
        }
        whole_probe(
            &model.with(&subnet),
            &batch,
            &index.to_string(),
            opts.extra_passes,
        )
    }

    /// Not measured: latency serves `nas`, and Llama has no design space for it (its
    /// sub-networks are searched against parameters by `crate::subnet`).
    fn latency(
        &self,
        _arch: &Arch,
        _index: usize,
        _opts: &ProbeOptions,
        _batch: &Batch,
        _repeats: usize,
    ) -> Result<Vec<f64>> {
        bail!("the llama family does not measure inference latency")
    }

    fn count_params(&self, arch: &Arch, opts: &ProbeOptions) -> Result<Counted> {
        let (model, subnet) = open(arch, opts.seed)?;
        let c = subnet.count(&model.config)?;
        Ok(Counted {
            total: c.total as usize,
            columns: vec![
                ("non_embedding", c.non_embedding as usize),
                ("flops_per_token", c.flops_per_token as usize),
            ],
        })
    }

    fn size(&self, arch: &Arch, opts: &ProbeOptions) -> Result<ModelSize> {
        let (model, subnet) = open(arch, opts.seed)?;
        let c = &model.config;
        let count = subnet.count(c)?;
        // Kept per token: each layer's input, SwiGLU product, q/k/v outputs and attention
        // row (kept as captures and converted), with room for the recomputed layer.
        let per_layer =
            4 * c.hidden_size + 3 * c.intermediate_size + opts.seq_len * c.num_attention_heads;
        Ok(ModelSize {
            parameters: count.total as f64,
            activation_floats_per_token: (2 * per_layer * c.num_hidden_layers + 2 * c.vocab_size)
                as f64,
            by_blocks_floats_per_token: None,
            input_floats: None,
        })
    }
}
