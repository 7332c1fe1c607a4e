//! Proxies computed on the streaming pass ([`super::stream`]), for models whose whole probe is
//! too large to hold: every layer's weights and gradients are seen once and dropped, while the
//! captures (a few MB per layer at a few tokens) are kept to the end.
//!
//! Each proxy is planned first ([`StreamProxy::of`]) and refused, by name and with the reason,
//! when the pass cannot give it exactly the value of the whole probe ([`super::whole_probe`]):
//!
//! * what reads no linear (parameter counts, captures, the position gradient) is computed at
//!   the end from a probe holding everything the pass produced but the linears
//!   ([`StreamProxy::AtEnd`]), i.e. from the same arrays as the whole probe;
//! * a built-in that is a sum over linears adds up its value on each layer's linears
//!   ([`StreamProxy::LayerSum`]; the same value up to the order of the additions), and one
//!   that is such a sum divided by its number of linears (the `_normalized` twins,
//!   [`crate::proxy::builtin::derived_from`]) adds up both and divides at the end
//!   ([`StreamProxy::LayerRatio`]);
//! * an expression over `weight` or `grad` is evaluated one item at a time, item `k` when the
//!   `k`-th linear streams past, with the `k`-th capture items beside it
//!   ([`StreamProxy::PerItem`]); the value is the mean of the item means, added in item order,
//!   so the same bits as the whole evaluation ([`crate::proxy::eval::item_count`] says why this
//!   holds). An expression that applies `total` needs a whole list at once and is refused;
//!   so are the built-ins that need extra passes
//!   (they run on the sub-network's whole graph, [`super::graph`], which a model too large
//!   for the whole probe does not fit).

use anyhow::{bail, Context, Result};

use super::net::ROLES;
use super::stream::{self, Captured, LayerCaptures};
use super::{assemble, partial_probe, SEMANTICS};
use crate::array::Array;
use crate::probe::{Batch, LinearProbe};
use crate::proxy::builtin::{derived_from, Builtin, Divisor, Reads, BUILTINS};
use crate::proxy::canonical::canonical;
use crate::proxy::eval::{eval, item_count, mean_of_item_means, EvalError, Inputs};
use crate::proxy::expr::{Expr, Input};
use crate::proxy::ops::UnaryOp;
use crate::report::format_bytes;
use crate::scoring::Proxy;

/// Largest estimated size of the captures ([`stream::capture_bytes`]) a streaming pass keeps
/// for the proxies that read them: 4 GiB. LLaMA-7B at 1 × 64 tokens keeps about 0.2 GB; the
/// limit refuses batches whose captures would outgrow the streamed layer itself.
pub const STREAM_CAPTURE_BYTES: u64 = 4 << 30;

/// How a proxy is computed on the streaming pass (module docs).
pub enum StreamProxy {
    /// From the probe of everything but the linears, once the pass is over: built-ins that
    /// read no linear ([`Reads::Counts`], [`Reads::Captures`]) and expressions that read
    /// neither `weight` nor `grad`. `captures` says whether the pass must keep them.
    AtEnd {
        /// True when the proxy reads the captures.
        captures: bool,
    },
    /// A built-in that is a sum over linears ([`Reads::LinearSum`]): the sum of its values on
    /// each layer's linears.
    LayerSum(&'static Builtin),
    /// A built-in that is such a sum divided by its number of linears: the base's sum over
    /// layers divided by the divisor's sum over layers.
    LayerRatio {
        /// The sum over linears.
        base: &'static Builtin,
        /// The number of linears the base sums over (additive over layers).
        divisor: Divisor,
    },
    /// An expression over `weight` or `grad` without `total`, evaluated item by item.
    PerItem {
        /// The expression (canonical form: the same value, bit for bit).
        expr: Expr,
        /// Its number of items, or why it has no value (the whole evaluation's error).
        items: Result<usize, EvalError>,
        /// True when it reads `act`, `head` or `softmax`.
        captures: bool,
    },
}

/// True for the inputs the pass captures (as opposed to `weight` and `grad`).
fn is_capture(input: Input) -> bool {
    matches!(input, Input::Act | Input::Head | Input::Softmax)
}

/// True when `op` occurs in `e`.
fn uses_op(e: &Expr, op: UnaryOp) -> bool {
    match e {
        Expr::Input(_) => false,
        Expr::Unary(o, x) => *o == op || uses_op(x, op),
        Expr::Binary(_, a, b) => uses_op(a, op) || uses_op(b, op),
    }
}

impl StreamProxy {
    /// How `proxy` streams over a model of `layers` decoder layers, or an error naming it and
    /// saying why it cannot.
    pub fn of(proxy: &Proxy, layers: usize) -> Result<Self> {
        match proxy {
            Proxy::Builtin(b) => match b.reads {
                Reads::Counts => Ok(StreamProxy::AtEnd { captures: false }),
                Reads::Captures => Ok(StreamProxy::AtEnd { captures: true }),
                Reads::LinearSum => Ok(StreamProxy::LayerSum(b)),
                Reads::AllLinears => match ratio_of_sums(b) {
                    Some((base, divisor)) => Ok(StreamProxy::LayerRatio { base, divisor }),
                    None => bail!(
                        "proxy `{}` reads every linear's weights and gradients together, which \
                         the streaming pass does not hold for this model (it keeps one layer at \
                         a time); streaming computes the built-ins {} and expressions",
                        b.name,
                        streamable_builtins().join(", ")
                    ),
                },
                Reads::Extras => bail!(
                    "proxy `{}` needs extra passes (gradient taps, GraSP's second pass, \
                     Synflow's pass on the absolute-valued network), which run on the whole \
                     sub-network at once, not on the streaming pass: score it with the whole \
                     probe (mode `whole`), on a model whose whole probe fits in memory",
                    b.name
                ),
            },
            Proxy::Expr { name, expr, .. } => {
                let canon = canonical(expr);
                let inputs = canon.inputs();
                let captures = inputs.iter().any(|&i| is_capture(i));
                if inputs.iter().all(|&i| is_capture(i)) {
                    return Ok(StreamProxy::AtEnd { captures });
                }
                if uses_op(&canon, UnaryOp::Total) {
                    bail!(
                        "proxy `{name}` applies `total` in an expression over weight or grad: \
                         streaming evaluates such an expression one linear at a time, and \
                         `total` adds up a whole list at once (the whole probe, which computes \
                         it, is too large for this model)"
                    );
                }
                let linears = layers * ROLES.len();
                let items = item_count(&canon, &|i| if is_capture(i) { layers } else { linears });
                Ok(StreamProxy::PerItem {
                    expr: canon,
                    items,
                    captures,
                })
            }
        }
    }

    /// True when the pass must keep the captures for this proxy.
    pub fn reads_captures(&self) -> bool {
        match self {
            StreamProxy::AtEnd { captures } | StreamProxy::PerItem { captures, .. } => *captures,
            StreamProxy::LayerSum(_) | StreamProxy::LayerRatio { .. } => false,
        }
    }
}

/// For a built-in that is a sum over linears divided by their number: the sum's built-in and
/// the divisor.
fn ratio_of_sums(b: &Builtin) -> Option<(&'static Builtin, Divisor)> {
    let (base, divisor) = derived_from(b.name)?;
    let base = BUILTINS.iter().find(|c| c.name == base)?;
    (base.reads == Reads::LinearSum).then_some((base, divisor))
}

/// The built-ins the streaming pass computes, in table order (for messages).
pub fn streamable_builtins() -> Vec<&'static str> {
    BUILTINS
        .iter()
        .filter(|b| {
            matches!(b.reads, Reads::Counts | Reads::Captures | Reads::LinearSum)
                || ratio_of_sums(b).is_some()
        })
        .filter(|b| (b.applies)(&SEMANTICS))
        .map(|b| b.name)
        .collect()
}

/// What one proxy has gathered so far.
enum Acc {
    /// Nothing until the end.
    AtEnd,
    /// The running sum over layers.
    Sum(f64),
    /// The running sums of a ratio's numerator and denominator.
    Ratio(f64, f64),
    /// Each item's mean, once its linear has streamed past.
    Items(Vec<Option<f64>>),
}

/// The values of `proxies` (in order) and the loss, from one streaming pass of `m` on `batch`;
/// fails before the pass when a proxy cannot stream or the captures it needs exceed
/// [`STREAM_CAPTURE_BYTES`].
pub fn score(m: &stream::Model<'_>, batch: &Batch, proxies: &[Proxy]) -> Result<(Vec<f64>, f64)> {
    let layers = m.config.num_hidden_layers;
    let plan = proxies
        .iter()
        .map(|p| StreamProxy::of(p, layers))
        .collect::<Result<Vec<_>>>()?;
    let keep = plan.iter().position(StreamProxy::reads_captures);
    if let Some(i) = keep {
        m.subnet.check(m.config).context("sub-network")?;
        let bytes = stream::capture_bytes(m.config, m.subnet, batch);
        if bytes > STREAM_CAPTURE_BYTES {
            bail!(
                "proxy `{}` reads the captures (act, head, softmax or the attention outputs), \
                 which for this sub-network and a batch of {} × {} tokens take about {} over \
                 its {layers} layers, more than the {} a streaming pass keeps: lower the batch \
                 rows or the tokens per row",
                proxies[i].name(),
                batch.rows,
                batch.cols - 1,
                format_bytes(bytes as f64),
                format_bytes(STREAM_CAPTURE_BYTES as f64)
            );
        }
    }
    let mut acc: Vec<Acc> = plan
        .iter()
        .map(|p| match p {
            StreamProxy::AtEnd { .. } => Acc::AtEnd,
            StreamProxy::LayerSum(_) => Acc::Sum(0.0),
            StreamProxy::LayerRatio { .. } => Acc::Ratio(0.0, 0.0),
            StreamProxy::PerItem { items, .. } => {
                Acc::Items(vec![None; *items.as_ref().unwrap_or(&0)])
            }
        })
        .collect();
    let mut captured = Captured::new(layers);
    let summary = stream::probe(m, batch, keep.is_some(), |layer| {
        if let Some(c) = layer.captures {
            captured.insert(layer.layer, c);
        }
        let part = partial_probe(layer.linears);
        for (p, a) in plan.iter().zip(acc.iter_mut()) {
            match (p, a) {
                (StreamProxy::LayerSum(b), Acc::Sum(sum)) => *sum += (b.compute)(&part),
                (StreamProxy::LayerRatio { base, divisor }, Acc::Ratio(sum, count)) => {
                    *sum += (base.compute)(&part);
                    *count += divisor(&part);
                }
                (StreamProxy::PerItem { expr, captures, .. }, Acc::Items(means)) => {
                    for (j, lin) in part.linears.iter().enumerate() {
                        let k = layer.layer * ROLES.len() + j;
                        let Some(slot) = means.get_mut(k) else {
                            continue;
                        };
                        // Item k pairs linear k with layer k's captures: k ≥ layer, and the
                        // layers come last first, so those were kept before (or now).
                        let caps = captured.layer(k);
                        if *captures && k < layers && caps.is_none() {
                            bail!("internal error: layer {k}'s captures are not there yet");
                        }
                        *slot = Some(eval(expr, &item_inputs(lin, caps)).unwrap_or(f64::NAN));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    let lists = if keep.is_some() {
        Some(captured.into_lists()?)
    } else {
        None
    };
    let light = assemble(m, "subnet", lists, Vec::new(), &summary, 0.0)?;
    let values = proxies
        .iter()
        .zip(acc)
        .map(|(p, a)| match a {
            Acc::AtEnd => Ok(p.compute(&light)),
            Acc::Sum(sum) => Ok(sum),
            Acc::Ratio(sum, count) => Ok(sum / count),
            Acc::Items(means) => {
                let means = means
                    .into_iter()
                    .collect::<Option<Vec<f64>>>()
                    .with_context(|| format!("internal error: `{}` missed items", p.name()))?;
                Ok(mean_of_item_means(means).unwrap_or(f64::NAN))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((values, summary.loss))
}

/// The expression inputs at one item: the linear's weight and gradient and, when the layer of
/// the same index has been captured, its captures (else empty lists, which an expression
/// reading them only through a disconnected operand never evaluates).
fn item_inputs<'a>(lin: &'a LinearProbe, caps: Option<&'a LayerCaptures>) -> Inputs<'a> {
    let one = |pick: fn(&LayerCaptures) -> &Array| -> &'a [Array] {
        caps.map_or(&[][..], |c| std::slice::from_ref(pick(c)))
    };
    Inputs {
        act: one(|c| &c.act),
        head: one(|c| &c.q),
        softmax: one(|c| &c.probs),
        weight: std::slice::from_ref(&lin.weight),
        grad: std::slice::from_ref(&lin.grad),
    }
}
