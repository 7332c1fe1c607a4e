//! A Llama model's shape, read from a Hugging Face `config.json`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The keys of a Hugging Face `LlamaForCausalLM` `config.json` that decide the network (the
/// others are ignored). Defaults are Hugging Face's where a key may be missing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream (H).
    pub hidden_size: usize,
    /// Width of the SwiGLU FFN of the full model.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer (head size = H / heads).
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention when fewer than the query heads);
    /// defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Added to the mean square inside RMSNorm's square root.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Base of the RoPE angles.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// The LM head shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the random initialisation (Hugging Face `initializer_range`).
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// Positions the model was trained for (only bounds the probe length).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_init() -> f64 {
    0.02
}
fn default_positions() -> usize {
    2048
}

impl LlamaConfig {
    /// Reads and checks `path` (a `config.json`); errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the model config", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses and checks a `config.json` text; errors name the field.
    pub fn from_json(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("field `{}`: {}", e.path(), e.inner()))?;
        config.check()?;
        Ok(config)
    }

    /// Checks that the shapes hold together: positive sizes, heads dividing the hidden
    /// size into an even head size (RoPE rotates halves), key/value heads dividing the query
    /// heads, a positive epsilon and RoPE base.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                bail!("field `{name}`: expected a positive integer, found 0");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self.head_dim().is_multiple_of(2)
        {
            bail!(
                "field `num_attention_heads`: expected a divisor of hidden_size {} giving an even \
                 head size, found {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            bail!(
                "field `num_key_value_heads`: expected a positive divisor of \
                 num_attention_heads {}, found {kv}",
                self.num_attention_heads
            );
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            bail!(
                "field `rms_norm_eps`: expected a positive number, found {}",
                self.rms_norm_eps
            );
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            bail!(
                "field `rope_theta`: expected a positive number, found {}",
                self.rope_theta
            );
        }
        if !(self.initializer_range >= 0.0 && self.initializer_range.is_finite()) {
            bail!(
                "field `initializer_range`: expected a non-negative number, found {}",
                self.initializer_range
            );
        }
        Ok(())
    }

    /// Key/value heads ([`LlamaConfig::num_key_value_heads`], else the query heads).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Query heads served by one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.kv_heads()
    }

    /// The public LLaMA-7B config (hidden 4096, intermediate 11008, 32 layers, 32 heads,
    /// vocab 32000, untied head, eps 1e-6).
    pub fn llama_7b() -> Self {
        Self {
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: Some(32),
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            vocab_size: 32000,
            tie_word_embeddings: false,
            initializer_range: 0.02,
            max_position_embeddings: 2048,
        }
    }
}
