"""lpzero proxy, exported by `lpzero export --to python`:

    add(sigmoid(min_max(softmax)), invert(exp(std(no_op(sqrt(abs(act)))))))

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
EXPRESSION = "add(sigmoid(min_max(softmax)), invert(exp(std(no_op(sqrt(abs(act)))))))"


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


def _std64(x):
    """The unbiased (n - 1) standard deviation, in float64 (NaN for fewer than 2 elements)."""
    n = x.numel()
    if n < 2:
        return math.nan
    d = _f64(x)
    c = d - d.sum() / n
    return torch.sqrt((c * c).sum() / (n - 1))


def _abs(x):
    return x.abs()


def _exp(x):
    return torch.exp(x)


def _invert(x):
    """1 / (x + 1e-9)."""
    y = x + 1e-9
    return torch.ones_like(y) / y


def _sigmoid(x):
    e = torch.exp(-x.abs())
    one = torch.ones_like(x)
    return torch.where(x >= 0, one / (one + e), e / (one + e))


def _sqrt(x):
    """sqrt(max(x, 0)); NaN stays NaN."""
    return torch.where(x <= 0, torch.zeros_like(x), torch.sqrt(x))


def _min_max(x):
    """(x - min) / (max - min + 1e-9) in float64; all NaN when x holds a NaN."""
    if x.numel() == 0:
        return x.clone()
    if torch.isnan(x).any():
        return torch.full_like(x, math.nan)
    lo = _f64(x.min())
    hi = _f64(x.max())
    return ((_f64(x) - lo) / (hi - lo + 1e-9)).to(torch.float32)


def _std(x):
    return _scalar(_std64(x), x)


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
            softmax_items = _items("softmax", softmax)
            t1 = _each(_min_max, softmax_items)  # min_max(softmax)
            t2 = _each(_sigmoid, t1)  # sigmoid(min_max(softmax))
            act_items = _items("act", act)
            t3 = _each(_abs, act_items)  # abs(act)
            t4 = _each(_sqrt, t3)  # sqrt(abs(act))
            t5 = _each(_std, t4)  # std(sqrt(abs(act)))
            t6 = _each(_exp, t5)  # exp(std(sqrt(abs(act))))
            t7 = _each(_invert, t6)  # invert(exp(std(sqrt(abs(act)))))
            t8 = _pair(_add, t2, t7)  # add(sigmoid(min_max(softmax)), invert(exp(std(sqrt(abs(act))))))
            return _value(t8)
    except _NoValue:
        return math.nan
