"""lpzero proxy, exported by `lpzero export --to python`:

    add(mean(l1_norm(pow2(weight))), mean(pow2(softmax(grad))))

proxy(act, head, softmax, grad, weight) takes one architecture's five input lists, each a list
of tensors (one per layer or module, in lpzero's order; see lpzero's README), and returns the
proxy's value as a float, or NaN where lpzero has no value (an empty input list, items whose
shapes do not combine). Semantics are lpzero's: unary operations map over the items of a list;
binary operations pair items by position, drop the surplus of the longer list and broadcast a
one-element operand; `total` turns a list into one item, the sum of the item means; the value is
the mean over the items of each item's mean. Element-wise arithmetic runs in float32; reductions
and the statistics of normalize, min_max, softmax and logsoftmax accumulate in float64.
"""

import math

import torch

#: The expression, in lpzero's text form.
EXPRESSION = "add(mean(l1_norm(pow2(weight))), mean(pow2(softmax(grad))))"


class _NoValue(Exception):
    """lpzero has no value for the expression on these inputs (it reports NaN)."""


def _items(name, tensors):
    """An input list as float32 tensors; an empty list has no value."""
    items = [torch.as_tensor(t).detach().to(torch.float32) for t in tensors]
    if not items:
        raise _NoValue(f"input `{name}` is an empty list")
    return items


def _each(op, items):
    """A unary operation applied to every item of a list."""
    return [op(x) for x in items]


def _pair(op, left, right):
    """A binary operation on items paired by position; the surplus of the longer list is
    dropped."""
    return [op(a, b) for a, b in zip(left, right)]


def _f64(x):
    return x.to(torch.float64)


def _scalar(value, like):
    """A float64 number as a 0-d float32 tensor on the device of `like`."""
    return torch.as_tensor(value, dtype=torch.float64, device=like.device).to(torch.float32)


def _mean64(x):
    """The mean of all elements of an item, in float64 (NaN when it has none)."""
    if x.numel() == 0:
        return math.nan
    return _f64(x).sum().item() / x.numel()


def _pow2(x):
    return x * x


def _l1_norm(x):
    """sum(|x|) / (numel + 1e-9): a mean absolute value."""
    return _scalar(_f64(x).abs().sum() / (x.numel() + 1e-9), x)


def _softmax_along_0(x, log):
    """(Log-)softmax along the first axis (a 0-d item is one row of one column); a column's
    maximum ignores NaN, whose exponential then poisons the column."""
    if x.numel() == 0:
        return x.clone()
    rows = x.shape[0] if x.dim() > 0 else 1
    m = x.reshape(rows, -1)
    top = torch.where(torch.isnan(m), torch.full_like(m, -math.inf), m).amax(dim=0)
    shifted = m - top
    e = torch.exp(shifted)
    total = _f64(e).sum(dim=0)
    out = _f64(shifted) - torch.log(total) if log else _f64(e) / total
    return out.to(torch.float32).reshape(x.shape)


def _softmax(x):
    return _softmax_along_0(x, False)


def _mean(x):
    return _scalar(_mean64(x), x)


def _broadcast(f, name, a, b):
    """f(a, b) element-wise on equal shapes, or with a one-element operand broadcast (the result
    takes the other operand's shape; of two one-element operands, the one with more axes)."""
    if a.shape == b.shape:
        return f(a, b)
    if a.numel() == 1 and b.numel() == 1:
        shape = a.shape if a.dim() >= b.dim() else b.shape
        return f(a.reshape(()), b.reshape(())).reshape(shape)
    if a.numel() == 1:
        return f(a.reshape(()), b)
    if b.numel() == 1:
        return f(a, b.reshape(()))
    raise _NoValue(f"`{name}` needs equal shapes or a one-element operand, "
                   f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _add(a, b):
    return _broadcast(torch.add, "add", a, b)


def _value(items):
    """The value of a list: the mean over the items of each item's mean, in float64."""
    return sum(_mean64(x) for x in items) / len(items)


def proxy(act, head, softmax, grad, weight):
    """The proxy's value on one architecture's input lists (lists of tensors); NaN where
    lpzero has none."""
    try:
        with torch.no_grad():
            weight_items = _items("weight", weight)
            t1 = _each(_pow2, weight_items)  # pow2(weight)
            t2 = _each(_l1_norm, t1)  # l1_norm(pow2(weight))
            t3 = _each(_mean, t2)  # mean(l1_norm(pow2(weight)))
            grad_items = _items("grad", grad)
            t4 = _each(_softmax, grad_items)  # softmax(grad)
            t5 = _each(_pow2, t4)  # pow2(softmax(grad))
            t6 = _each(_mean, t5)  # mean(pow2(softmax(grad)))
            t7 = _pair(_add, t3, t6)  # add(mean(l1_norm(pow2(weight))), mean(pow2(softmax(grad))))
            return _value(t7)
    except _NoValue:
        return math.nan
