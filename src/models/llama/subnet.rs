//! The LoNAS sub-network space of a Llama model: an FFN width per layer (and optionally a
//! number of query heads per layer), taken as the leading rows/columns of the full weights.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::config::LlamaConfig;
use crate::rng::Rng;

/// LoNAS's elastic FFN widths for LLaMA-7B as fractions of `intermediate_size`
/// (11008 → 11008, 9632, 8256, 6880, 5504).
pub const LONAS_FRACTIONS: [f64; 5] = [1.0, 0.875, 0.75, 0.625, 0.5];

/// One sub-network: per decoder layer the FFN width (leading rows of `gate_proj`/`up_proj`,
/// leading columns of `down_proj`) and, optionally, the query heads kept (leading heads of
/// `q_proj` and the matching leading key/value heads, leading columns of `o_proj`). As a
/// JSON file: `{"ffn_widths": [...], "heads": [...]}` (`heads` optional).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// FFN width of each layer.
    pub ffn_widths: Vec<usize>,
    /// Query heads of each layer (`None`: every head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<usize>>,
}

/// The choices a sub-network is made of.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubnetSpace {
    /// Layers.
    pub layers: usize,
    /// FFN width choices, largest first.
    pub ffn_choices: Vec<usize>,
    /// Query-head choices, largest first (`None`: heads are not searched).
    pub head_choices: Option<Vec<usize>>,
}

/// A named sub-network of the space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    /// The largest choice everywhere (the full model).
    Maximal,
    /// The middle choice everywhere (LoNAS's heuristic sub-network).
    Heuristic,
    /// The smallest choice everywhere.
    Minimal,
}

impl Named {
    /// `maximal`, `heuristic` or `minimal`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "maximal" => Some(Named::Maximal),
            "heuristic" => Some(Named::Heuristic),
            "minimal" => Some(Named::Minimal),
            _ => None,
        }
    }

    /// The index of this choice among `n` choices sorted largest first.
    fn pick(self, n: usize) -> usize {
        match self {
            Named::Maximal => 0,
            Named::Heuristic => n / 2,
            Named::Minimal => n - 1,
        }
    }
}

impl SubnetSpace {
    /// LoNAS's space for `config`: FFN widths at [`LONAS_FRACTIONS`] of the intermediate size
    /// (rounded, duplicates dropped), heads not searched.
    pub fn lonas(config: &LlamaConfig) -> Self {
        let i = config.intermediate_size as f64;
        let mut ffn: Vec<usize> = LONAS_FRACTIONS
            .iter()
            .map(|f| ((i * f).round() as usize).max(1))
            .collect();
        ffn.dedup();
        Self {
            layers: config.num_hidden_layers,
            ffn_choices: ffn,
            head_choices: None,
        }
    }

    /// A space with the given choices (sorted largest first, duplicates dropped), checked
    /// against `config`: widths within 1..=intermediate_size, heads within
    /// 1..=num_attention_heads and multiples of the query heads per key/value head.
    pub fn new(
        config: &LlamaConfig,
        mut ffn_choices: Vec<usize>,
        head_choices: Option<Vec<usize>>,
    ) -> Result<Self> {
        if ffn_choices.is_empty() {
            bail!("the FFN width choices are empty");
        }
        ffn_choices.sort_unstable_by(|a, b| b.cmp(a));
        ffn_choices.dedup();
        let head_choices = head_choices.map(|mut h| {
            h.sort_unstable_by(|a, b| b.cmp(a));
            h.dedup();
            h
        });
        let space = Self {
            layers: config.num_hidden_layers,
            ffn_choices,
            head_choices,
        };
        let probe = Subnet {
            ffn_widths: space.ffn_choices.clone(),
            heads: space.head_choices.clone(),
        };
        check_values(config, &probe).context("sub-network space")?;
        if matches!(&space.head_choices, Some(h) if h.is_empty()) {
            bail!("the head choices are empty");
        }
        Ok(space)
    }

    /// The named sub-network.
    pub fn named(&self, which: Named) -> Subnet {
        let w = self.ffn_choices[which.pick(self.ffn_choices.len())];
        Subnet {
            ffn_widths: vec![w; self.layers],
            heads: self
                .head_choices
                .as_ref()
                .map(|h| vec![h[which.pick(h.len())]; self.layers]),
        }
    }

    /// A sub-network with every choice drawn uniformly from `rng`.
    pub fn random(&self, rng: &mut Rng) -> Subnet {
        let ffn_widths = (0..self.layers)
            .map(|_| self.ffn_choices[rng.range(0, self.ffn_choices.len())])
            .collect();
        let heads = self
            .head_choices
            .as_ref()
            .map(|h| (0..self.layers).map(|_| h[rng.range(0, h.len())]).collect());
        Subnet { ffn_widths, heads }
    }

    /// Number of genes: one FFN choice per layer, and one head choice per layer when heads
    /// are searched.
    pub fn genes(&self) -> usize {
        self.layers * if self.head_choices.is_some() { 2 } else { 1 }
    }

    /// Choices of gene `g` (FFN genes first, then head genes).
    pub fn gene_choices(&self, g: usize) -> &[usize] {
        if g < self.layers {
            &self.ffn_choices
        } else {
            self.head_choices.as_deref().unwrap_or(&[])
        }
    }

    /// The sub-network of a genome (one choice index per gene).
    pub fn decode(&self, genome: &[usize]) -> Subnet {
        let ffn_widths = genome[..self.layers]
            .iter()
            .map(|&i| self.ffn_choices[i])
            .collect();
        let heads = self
            .head_choices
            .as_ref()
            .map(|h| genome[self.layers..].iter().map(|&i| h[i]).collect());
        Subnet { ffn_widths, heads }
    }
}

/// Checks the values of a sub-network against `config` (any list length).
fn check_values(config: &LlamaConfig, s: &Subnet) -> Result<()> {
    for (l, &w) in s.ffn_widths.iter().enumerate() {
        if w == 0 || w > config.intermediate_size {
            bail!(
                "ffn_widths[{l}]: expected a width within 1..={} (intermediate_size), found {w}",
                config.intermediate_size
            );
        }
    }
    if let Some(heads) = &s.heads {
        let g = config.group_size();
        for (l, &h) in heads.iter().enumerate() {
            if h == 0 || h > config.num_attention_heads || !h.is_multiple_of(g) {
                bail!(
                    "heads[{l}]: expected a multiple of {g} (query heads per key/value head) \
                     within 1..={}, found {h}",
                    config.num_attention_heads
                );
            }
        }
    }
    Ok(())
}

/// Parameter counts and cost of a sub-network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubnetCount {
    /// Every parameter (a tied embedding and LM head counted once).
    pub total: u64,
    /// Every parameter but the embedding table and an untied LM head (decoder layers and the
    /// final norm).
    pub non_embedding: u64,
    /// FFN width of each layer.
    pub ffn_widths: Vec<usize>,
    /// Multiply-adds ×2 of every matrix product one token goes through (decoder linears and
    /// LM head; attention scores, which grow with the context, are left out).
    pub flops_per_token: u64,
}

impl Subnet {
    /// Reads a sub-network JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the sub-network", path.display()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            anyhow::anyhow!(
                "{}: field `{}`: {} (expected {{\"ffn_widths\": [...], \"heads\": [...]}})",
                path.display(),
                e.path(),
                e.inner()
            )
        })
    }

    /// The full model of `config`.
    pub fn full(config: &LlamaConfig) -> Self {
        Self {
            ffn_widths: vec![config.intermediate_size; config.num_hidden_layers],
            heads: None,
        }
    }

    /// Checks the sub-network against `config`: one width (and head count) per layer, each
    /// within bounds.
    pub fn check(&self, config: &LlamaConfig) -> Result<()> {
        let layers = config.num_hidden_layers;
        if self.ffn_widths.len() != layers {
            bail!(
                "ffn_widths: expected {layers} entries (num_hidden_layers), found {}",
                self.ffn_widths.len()
            );
        }
        if let Some(h) = &self.heads {
            if h.len() != layers {
                bail!(
                    "heads: expected {layers} entries (num_hidden_layers), found {}",
                    h.len()
                );
            }
        }
        check_values(config, self)
    }

    /// Query heads of layer `l`.
    pub fn heads_of(&self, config: &LlamaConfig, l: usize) -> usize {
        self.heads
            .as_ref()
            .map_or(config.num_attention_heads, |h| h[l])
    }

    /// Key/value heads of layer `l` (the query heads over the group size).
    pub fn kv_heads_of(&self, config: &LlamaConfig, l: usize) -> usize {
        self.heads_of(config, l) / config.group_size()
    }

    /// Weights of the seven linears of layer `l` (q, k, v, o, gate, up, down).
    fn layer_linear_params(&self, config: &LlamaConfig, l: usize) -> u64 {
        let h = config.hidden_size as u64;
        let d = config.head_dim() as u64;
        let q = self.heads_of(config, l) as u64 * d;
        let kv = self.kv_heads_of(config, l) as u64 * d;
        let w = self.ffn_widths[l] as u64;
        2 * h * q + 2 * h * kv + 3 * h * w
    }

    /// Parameter counts and FLOPs per token (checked with [`Subnet::check`] first).
    pub fn count(&self, config: &LlamaConfig) -> Result<SubnetCount> {
        self.check(config)?;
        let h = config.hidden_size as u64;
        let v = config.vocab_size as u64;
        let linears: u64 = (0..config.num_hidden_layers)
            .map(|l| self.layer_linear_params(config, l))
            .sum();
        let norms = (2 * config.num_hidden_layers as u64 + 1) * h;
        let non_embedding = linears + norms;
        let tables = if config.tie_word_embeddings {
            v * h
        } else {
            2 * v * h
        };
        Ok(SubnetCount {
            total: non_embedding + tables,
            non_embedding,
            ffn_widths: self.ffn_widths.clone(),
            flops_per_token: 2 * (linears + v * h),
        })
    }
}
