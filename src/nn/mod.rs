//! Network building blocks shared by every model family: the parameter registry, linear
//! layers in both weight layouts, LayerNorm, dropout, gradient taps on activations, and the
//! custom candle ops with their own backward ([`ops`]).
//!
//! The engine (candle) stays inside `nn`, the family models (`models`) and `probe`; a family's
//! model file builds its network from these blocks.

pub mod cores;
pub mod matmul;
pub mod ops;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};

use crate::array::Array;
use crate::rng::Rng;

/// What a linear layer does in its network; proxies select linears by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum LinearRole {
    /// A projection inside a token mixer (q, k, v, WMA's Ww, LT's input, DSC's kernel and
    /// conv-out layers).
    Mixer,
    /// The dense of the output block after an SA or DSC mixer.
    MixerOutput,
    /// The first FFN dense (hidden → FFN width).
    FfnIn,
    /// A square FFN dense between two GELUs (only with more than one FFN layer).
    FfnHidden,
    /// The last FFN dense (FFN width → hidden).
    FfnOut,
    /// The embedding projection (embedding width → hidden).
    EmbeddingProjection,
    /// GPT-2 `attn.c_attn`: the fused q|k|v Conv1D (D → 3D).
    AttnQkv,
    /// GPT-2 `attn.c_proj`: the attention output Conv1D (D → D).
    AttnProj,
    /// GPT-2 `mlp.c_fc`: the first MLP Conv1D (D → d_inner).
    MlpFc,
    /// GPT-2 `mlp.c_proj`: the second MLP Conv1D (d_inner → D).
    MlpProj,
}

impl LinearRole {
    /// True for the GPT-2 Conv1D layers, whose weights are stored in × out.
    pub fn is_conv1d(self) -> bool {
        matches!(
            self,
            LinearRole::AttnQkv | LinearRole::AttnProj | LinearRole::MlpFc | LinearRole::MlpProj
        )
    }
}

/// Every trainable tensor of a model, by name, in creation order.
///
/// Each tensor also carries a group label (the group current when it was registered, see
/// [`Params::set_group`]; empty unless a model sets one), so that a model can report its
/// parameter count by kind, counted from the tensors themselves.
#[derive(Default)]
pub struct Params {
    vars: Vec<(String, Var)>,
    groups: Vec<&'static str>,
    group: &'static str,
    shapes_only: bool,
    /// The rows of the lookup tables ([`Params::lookup_table`]) that the model's forward passes
    /// will read, sorted and distinct; `None`: every row is drawn.
    rows_read: Option<Vec<usize>>,
}

impl Params {
    /// A registry whose random tensors are filled with zeros instead of drawn: the model has
    /// every tensor with its real shape (for counting parameters) at a fraction of the cost.
    pub fn shapes_only() -> Self {
        Self {
            shapes_only: true,
            ..Self::default()
        }
    }

    /// A registry for a model that will only ever look up the token ids `ids` in its lookup
    /// tables ([`Params::lookup_table`]): the other rows of a table are 0 instead of drawn, at
    /// no change to anything else drawn (the weight stream advances as if they were). For a
    /// probe of one batch whose proxies read no table values (the word embeddings are read
    /// only through the lookup, and their unread rows get a zero gradient either way).
    pub fn reading_rows(ids: &[u32]) -> Self {
        let mut rows: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
        rows.sort_unstable();
        rows.dedup();
        Self {
            rows_read: Some(rows),
            ..Self::default()
        }
    }

    /// Labels every tensor registered from now on with `group` (e.g. `Attn`).
    pub fn set_group(&mut self, group: &'static str) {
        self.group = group;
    }

    /// Number of trainable scalars per group label, groups in order of first registration
    /// (tensors registered without a group are left out).
    pub fn count_by_group(&self) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, usize)> = Vec::new();
        for ((_, var), &g) in self.vars.iter().zip(&self.groups) {
            if g.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(name, _)| *name == g) {
                Some((_, n)) => *n += var.elem_count(),
                None => out.push((g, var.elem_count())),
            }
        }
        out
    }

    /// Registers a tensor drawn from N(0, std²) with the given shape.
    pub fn normal(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f64,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<Var> {
        if self.shapes_only {
            // Zero pages are mapped lazily: counting parameters touches no memory.
            return self.push(name, Var::zeros(shape, DType::F32, device)?);
        }
        let n = shape.iter().product();
        let data = rng.normal_vec(n, std);
        self.push(name, Var::from_vec(data, shape, device)?)
    }

    /// Registers a `rows × cols` table read by row lookup (an embedding), drawn from N(0, std²),
    /// with row `zero_row` (a padding id) set to 0. Under [`Params::reading_rows`] only the rows
    /// read are drawn; the stream advances as for the whole table either way.
    pub fn lookup_table(
        &mut self,
        name: &str,
        (rows, cols): (usize, usize),
        std: f64,
        zero_row: Option<usize>,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<Var> {
        if self.shapes_only {
            return self.push(name, Var::zeros((rows, cols), DType::F32, device)?);
        }
        let n = rows * cols;
        let mut data = match &self.rows_read {
            None => rng.normal_vec(n, std),
            Some(read) => {
                let wanted: Vec<_> = read
                    .iter()
                    .filter(|&&r| r < rows)
                    .map(|&r| r * cols..(r + 1) * cols)
                    .collect();
                rng.normal_vec_in(n, std, &wanted)
            }
        };
        if let Some(z) = zero_row.filter(|&z| z < rows) {
            data[z * cols..(z + 1) * cols].fill(0.0);
        }
        self.push(name, Var::from_vec(data, (rows, cols), device)?)
    }

    /// Registers a tensor filled with `value`.
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f32,
        device: &Device,
    ) -> candle_core::Result<Var> {
        if value == 0.0 {
            return self.push(name, Var::zeros(shape, DType::F32, device)?);
        }
        let n = shape.iter().product();
        self.push(name, Var::from_vec(vec![value; n], shape, device)?)
    }

    /// Registers an existing tensor as a trainable variable (a copy of it): for weights read
    /// from a checkpoint (the Llama family's whole-network graph) and for tests that need
    /// given values.
    pub fn register(&mut self, name: &str, t: &Tensor) -> candle_core::Result<Var> {
        self.push(name, Var::from_tensor(t)?)
    }

    fn push(&mut self, name: &str, var: Var) -> candle_core::Result<Var> {
        self.vars.push((name.to_string(), var.clone()));
        self.groups.push(self.group);
        Ok(var)
    }

    /// All variables with their names.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Total number of trainable scalars (each tensor counted once).
    pub fn count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Adds the gradients `from` holds for these variables to `store` (a variable's first
    /// gradient is taken as is), detached: how a pass run part by part (a model's blocks, its
    /// head, its bottom, each with a backward of its own) gathers its parameters' gradients.
    pub fn add_grads(&self, store: &mut GradStore, from: &GradStore) -> candle_core::Result<()> {
        for (_, var) in &self.vars {
            if let Some(g) = from.get(var.as_tensor()) {
                let g = match store.remove(var.as_tensor()) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                store.insert(var.as_tensor(), g.detach());
            }
        }
        Ok(())
    }
}

/// A model built from a config into a parameter registry: `new` draws the weights, and
/// `shapes_only` builds every tensor as zeros (the real shapes without the cost of drawing
/// weights, for parameter counts). A family's model implements [`Build::build`] once.
pub trait Build: Sized {
    /// What the model is built from.
    type Config;

    /// Builds the model from `config`, registering its tensors in `params` and drawing its
    /// weights from `rng`.
    fn build(
        config: &Self::Config,
        params: Params,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<Self>;

    /// The model with weights drawn from `rng`.
    fn new(config: &Self::Config, rng: &mut Rng, device: &Device) -> candle_core::Result<Self> {
        Self::build(config, Params::default(), rng, device)
    }

    /// The model with every tensor zero, on the CPU.
    fn shapes_only(config: &Self::Config) -> candle_core::Result<Self> {
        Self::build(
            config,
            Params::shapes_only(),
            &mut Rng::new(0),
            &Device::Cpu,
        )
    }
}

/// Arguments shared by every tensor created for one model.
pub struct Init<'a> {
    /// Parameter registry.
    pub params: &'a mut Params,
    /// Weight stream.
    pub rng: &'a mut Rng,
    /// Device holding the tensors.
    pub device: &'a Device,
    /// Standard deviation of weight initialisation.
    pub std: f64,
}

impl Init<'_> {
    /// Registers a tensor drawn from N(0, std²).
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f64) -> candle_core::Result<Var> {
        self.params.normal(name, shape, std, self.rng, self.device)
    }

    /// Registers a tensor filled with `value`.
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f32,
    ) -> candle_core::Result<Var> {
        self.params.constant(name, shape, value, self.device)
    }
}

/// How a linear layer stores its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// out × in, `y = x Wᵀ + b` (PyTorch `Linear`).
    OutIn,
    /// in × out, `y = x W + b` (GPT-2's `Conv1D`).
    InOut,
}

/// A dense layer over the last axis, in either weight layout ([`Layout`]).
pub struct Linear {
    /// Name for reports, e.g. `layer.2.mixer.query` or `h.0.attn.c_attn`.
    pub name: String,
    /// Layer (block) index, or `None` outside the layers.
    pub layer: Option<usize>,
    /// What the layer does.
    pub role: LinearRole,
    /// Weight, out × in or in × out ([`Linear::layout`]).
    pub weight: Var,
    /// Bias, out (absent for bias-free layers such as WMA's Ww).
    pub bias: Option<Var>,
    /// How `weight` is stored.
    pub layout: Layout,
}

impl Linear {
    /// A new out × in layer with N(0, std²) weights (`init.std`) and zero bias, registered in
    /// `init.params` (weight first, then bias).
    pub fn new(
        init: &mut Init<'_>,
        name: &str,
        layer: Option<usize>,
        role: LinearRole,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let std = init.std;
        let weight = init.normal(&format!("{name}.weight"), &[out_dim, in_dim], std)?;
        let bias = if bias {
            Some(init.constant(&format!("{name}.bias"), &[out_dim], 0.0)?)
        } else {
            None
        };
        Ok(Self {
            name: name.to_string(),
            layer,
            role,
            weight,
            bias,
            layout: Layout::OutIn,
        })
    }

    /// A new in × out layer (GPT-2's `Conv1D`) with N(0, std²) weights and zero bias,
    /// registered in `init.params` (weight first, then bias).
    pub fn conv1d(
        init: &mut Init<'_>,
        name: String,
        layer: usize,
        role: LinearRole,
        (in_dim, out_dim): (usize, usize),
        std: f64,
    ) -> candle_core::Result<Self> {
        let weight = init.normal(&format!("{name}.weight"), &[in_dim, out_dim], std)?;
        let bias = init.constant(&format!("{name}.bias"), &[out_dim], 0.0)?;
        Ok(Self {
            name,
            layer: Some(layer),
            role,
            weight,
            bias: Some(bias),
            layout: Layout::InOut,
        })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        match self.layout {
            Layout::OutIn => self.weight.dims()[0],
            Layout::InOut => self.weight.dims()[1],
        }
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        match self.layout {
            Layout::OutIn => self.weight.dims()[1],
            Layout::InOut => self.weight.dims()[0],
        }
    }

    /// Where a tap on this layer's output sits.
    pub fn tap_site(&self) -> TapSite {
        TapSite::Linear {
            role: self.role,
            in_dim: self.in_dim(),
            out_dim: self.out_dim(),
        }
    }

    /// Applies the layer over the last axis of `x` (any leading shape).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_tapped(x, None)
    }

    /// Whether [`Linear::forward`] on `x` is the fused op [`ops::linear`], which can carry a
    /// gradient tap: an f32 layer with a bias on an f32 input on the CPU.
    fn fuses(&self, x: &Tensor) -> bool {
        self.bias.is_some()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
    }

    /// [`Linear::forward`], with ∂ℒ/∂(output) left in `tap` by the backward pass; `tap` needs
    /// a layer and input that [`Linear::fuses`].
    fn forward_tapped(
        &self,
        x: &Tensor,
        tap: Option<ops::GradSlot>,
    ) -> candle_core::Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has at least one axis");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let flat = x.reshape((rows, in_dim))?;
        let w = self.weight.as_tensor();
        let y = match &self.bias {
            Some(b) if self.fuses(x) => {
                ops::linear(&flat, w, b.as_tensor(), self.layout == Layout::OutIn, tap)?
            }
            _ if tap.is_some() => {
                return Err(candle_core::Error::Msg(format!(
                    "linear {}: a gradient tap needs an f32 layer with a bias",
                    self.name
                )))
            }
            bias => {
                let y = match self.layout {
                    Layout::OutIn => flat.matmul(&w.t()?)?,
                    Layout::InOut => flat.matmul(w)?,
                };
                match bias {
                    Some(b) => y.broadcast_add(b.as_tensor())?,
                    None => y,
                }
            }
        };
        *dims.last_mut().expect("checked above") = self.out_dim();
        y.reshape(dims)
    }
}

/// The gradients of a dense layer from one backward step ([`Linear::backward`]).
pub struct LinearGrads {
    /// ∂ℒ/∂(input), shaped as the input.
    pub input: Tensor,
    /// ∂ℒ/∂(weight), shaped as the weight.
    pub weight: Tensor,
    /// ∂ℒ/∂(bias).
    pub bias: Tensor,
}

impl Linear {
    /// The gradients of [`Linear::forward`] on `x` from ∂ℒ/∂(output) `grad` (shaped as the
    /// output), computed by hand: the same values as candle's backward through the layer, for
    /// a model that differentiates a block itself. Needs an f32 layer with a bias on an f32
    /// input on the CPU (the fused op's case).
    pub fn backward(&self, x: &Tensor, grad: &Tensor) -> candle_core::Result<LinearGrads> {
        if !self.fuses(x) {
            return Err(candle_core::Error::Msg(format!(
                "linear {}: a backward by hand needs an f32 layer with a bias",
                self.name
            )));
        }
        let in_dim = self.in_dim();
        let rows = x.elem_count() / in_dim.max(1);
        let flat = x.reshape((rows, in_dim))?;
        let g = grad.reshape((rows, self.out_dim()))?;
        let w = self.weight.as_tensor();
        let (dx, dw, db) =
            ops::linear_grads(&flat, w, self.layout == Layout::OutIn, &g, [true; 3])?;
        let missing =
            || candle_core::Error::Msg("internal error: a gradient was not computed".into());
        Ok(LinearGrads {
            input: dx.ok_or_else(missing)?.reshape(x.dims())?,
            weight: dw.ok_or_else(missing)?.contiguous()?,
            bias: db.ok_or_else(missing)?,
        })
    }
}

/// A LayerNorm over the last axis with its `(γ, β)` pair and epsilon (biased variance,
/// `eps` inside the square root).
///
/// It has two evaluations with the same definition: [`LayerNorm::forward`], one custom op
/// with its own backward that accumulates the row moments in `f64` (fast and lean, used by
/// every family), and [`LayerNorm::forward_composed`], candle primitives in `f32` (candle's
/// fused `layer_norm` has no backward and would silently cut the gradient), kept as the
/// reference the custom op is tested against. The two differ in the last bits.
pub struct LayerNorm {
    /// Scale γ, initialised to 1.
    pub gamma: Var,
    /// Shift β, initialised to 0.
    pub beta: Var,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// A LayerNorm of width `dim` at its initial values, registered in `params` as
    /// `{name}.{gamma}` then `{name}.{beta}` with the family's `(gamma, beta)` suffixes.
    pub fn new(
        params: &mut Params,
        name: &str,
        (gamma, beta): (&str, &str),
        dim: usize,
        eps: f64,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: params.constant(&format!("{name}.{gamma}"), &[dim], 1.0, device)?,
            beta: params.constant(&format!("{name}.{beta}"), &[dim], 0.0, device)?,
            eps,
        })
    }

    /// The custom-op evaluation ([`ops::layer_norm`]).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }

    /// The gradients of [`LayerNorm::forward`] on `x` with respect to `x`, γ and β (in that
    /// order) from ∂ℒ/∂(output) `grad`, computed by hand: what its backward computes.
    pub fn backward(&self, x: &Tensor, grad: &Tensor) -> candle_core::Result<[Tensor; 3]> {
        ops::layer_norm_grads(&x.contiguous()?, self.gamma.as_tensor(), self.eps, grad)
    }

    /// The evaluation composed of differentiable candle primitives.
    pub fn forward_composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(self.gamma.as_tensor())?
            .broadcast_add(self.beta.as_tensor())
    }
}

/// What a gradient tap sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapSite {
    /// The output of a linear layer.
    Linear {
        /// The layer's role.
        role: LinearRole,
        /// Input width.
        in_dim: usize,
        /// Output width.
        out_dim: usize,
    },
    /// The word-embedding output that enters the network (B × T × width).
    Embedding,
}

/// One tapped activation: its value and where its gradient ∂ℒ/∂(activation) is after a
/// backward pass ([`Tap::grad`]).
pub struct Tap {
    /// Where the tap sits.
    pub site: TapSite,
    /// The activation (detached).
    pub value: Tensor,
    /// Where the gradient ends up.
    grad: TapGrad,
}

/// Where a tap's gradient ends up.
enum TapGrad {
    /// In the backward's gradient store, as the gradient of this zero-valued variable added
    /// to the activation.
    Var(Var),
    /// In this slot, filled by the backward of the fused linear op ([`ops::linear`]) that
    /// computed the activation.
    Slot(ops::GradSlot),
}

impl Tap {
    /// ∂ℒ/∂(activation) after a backward pass whose gradients are `grads`, shaped as
    /// [`Tap::value`]; `None` when the backward did not reach the tap.
    pub fn grad(&self, grads: &GradStore) -> candle_core::Result<Option<Tensor>> {
        match &self.grad {
            TapGrad::Var(var) => Ok(grads.get(var.as_tensor()).cloned()),
            TapGrad::Slot(slot) => slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|g| g.reshape(self.value.dims()))
                .transpose(),
        }
    }
}

/// Gradient taps on intermediate activations.
///
/// candle keeps gradients for variables only, so to read ∂ℒ/∂a for an activation `a` (Fisher,
/// the input Jacobian) a model adds a zero-valued variable to `a` when taps are on, or, for
/// the output of a fused linear layer ([`Taps::linear`]), the layer's backward hands its
/// output gradient over. Off by default: then a tap is the identity and costs nothing.
#[derive(Default)]
pub struct Taps {
    on: std::sync::atomic::AtomicBool,
    taps: std::sync::Mutex<Vec<Tap>>,
}

impl Taps {
    /// Switches tapping on or off for the following forward passes.
    pub fn set_enabled(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether tapping is on.
    pub fn is_enabled(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns `x` (plus a recorded zero variable when taps are on).
    pub fn tap(&self, site: TapSite, x: Tensor) -> candle_core::Result<Tensor> {
        if !self.is_enabled() {
            return Ok(x);
        }
        let var = Var::zeros(x.dims(), x.dtype(), x.device())?;
        let y = (&x + var.as_tensor())?;
        self.record(site, x.detach(), TapGrad::Var(var));
        Ok(y)
    }

    /// `lin` applied to `x`, through a tap on its output (the fused layer's own when it
    /// `Linear::fuses`, the same values and gradients).
    pub fn linear(&self, lin: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        if !self.is_enabled() {
            return lin.forward(x);
        }
        if !lin.fuses(x) {
            return self.tap(lin.tap_site(), lin.forward(x)?);
        }
        let slot = ops::GradSlot::default();
        let y = lin.forward_tapped(x, Some(slot.clone()))?;
        self.record(lin.tap_site(), y.detach(), TapGrad::Slot(slot));
        Ok(y)
    }

    /// Appends a tap to the record.
    fn record(&self, site: TapSite, value: Tensor, grad: TapGrad) {
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.push(Tap { site, value, grad });
    }

    /// Takes the taps recorded so far (execution order), leaving none.
    pub fn take(&self) -> Vec<Tap> {
        std::mem::take(&mut *self.taps.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Inverted dropout with a seeded mask; identity when `rng` is `None` or `p` is 0.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng>) -> candle_core::Result<Tensor> {
    let Some(rng) = rng else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.bernoulli(p) { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
    x.mul(&mask)
}

/// Σg² of the gradient of `t` in `grads` (0 when none reached it): the tests' check that
/// every trainable tensor gets a gradient.
#[cfg(test)]
pub(crate) fn squared_grad(grads: &candle_core::backprop::GradStore, t: &Tensor) -> f32 {
    grads.get(t).map_or(0.0, |g| {
        g.sqr()
            .and_then(|s| s.sum_all())
            .and_then(|s| s.to_scalar::<f32>())
            .expect("a gradient has a sum of squares")
    })
}

/// Copies a tensor into a plain [`Array`] (f32, row-major).
pub fn to_array(t: &Tensor) -> candle_core::Result<Array> {
    let t = t.to_dtype(DType::F32)?;
    let shape = t.dims().to_vec();
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(Array::new(shape, data).expect("tensor element count matches its shape"))
}
