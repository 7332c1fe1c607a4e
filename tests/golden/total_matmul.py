"""lpzero proxy, exported by `lpzero export --to python`:

    sub(total(mul(log(act), abslog(act))), add(mean(disconnect(grad)), matmul(normalize(weight), relu(grad))))

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
EXPRESSION = "sub(total(mul(log(act), abslog(act))), add(mean(disconnect(grad)), matmul(normalize(weight), relu(grad))))"


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


def _log(x):
    """ln(x + 1e-9), entries <= 0 taken as 1."""
    return torch.log(torch.where(x <= 0, torch.ones_like(x), x) + 1e-9)


def _abslog(x):
    """ln|x|, entries == 0 taken as 1."""
    return torch.log(torch.where(x == 0, torch.ones_like(x), x).abs())


def _normalize(x):
    """(x - mean) / std with the unbiased std, in float64; NaN results become 0."""
    n = x.numel()
    if n == 0:
        return x.clone()
    d = _f64(x)
    z = ((d - d.sum() / n) / _std64(x)).to(torch.float32)
    return torch.where(torch.isnan(z), torch.zeros_like(z), z)


def _relu(x):
    """max(x, 0); NaN stays NaN."""
    return torch.where(x <= 0, torch.zeros_like(x), x)


def _total(items):
    """The list-level op `total`: one item, the sum over the items of each item's mean."""
    return [_scalar(sum(_mean64(x) for x in items), items[0])]


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


def _sub(a, b):
    return _broadcast(torch.sub, "sub", a, b)


def _mul(a, b):
    return _broadcast(torch.mul, "mul", a, b)


def _matmul(a, b):
    """The matrix product of (m x k) and (k x n) items, accumulated in float64; else a scalar
    product when one side has one element."""
    if a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0]:
        return (_f64(a) @ _f64(b)).to(torch.float32)
    if a.numel() == 1 or b.numel() == 1:
        return _broadcast(torch.mul, "matmul", a, b)
    raise _NoValue(f"`matmul` needs (m x k) and (k x n) items or a one-element operand, "
                   f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _value(items):
    """The value of a list: the mean over the items of each item's mean, in float64."""
    return sum(_mean64(x) for x in items) / len(items)


def proxy(act, head, softmax, grad, weight):
    """The proxy's value on one architecture's input lists (lists of tensors); NaN where
    lpzero has none."""
    try:
        with torch.no_grad():
            act_items = _items("act", act)
            t1 = _each(_log, act_items)  # log(act)
            t2 = _each(_abslog, act_items)  # abslog(act)
            t3 = _pair(_mul, t1, t2)  # mul(log(act), abslog(act))
            t4 = _total(t3)  # total(mul(log(act), abslog(act)))
            weight_items = _items("weight", weight)
            t5 = _each(_normalize, weight_items)  # normalize(weight)
            grad_items = _items("grad", grad)
            t6 = _each(_relu, grad_items)  # relu(grad)
            t7 = _pair(_matmul, t5, t6)  # matmul(normalize(weight), relu(grad))
            t8 = _pair(_sub, t4, t7)  # sub(total(mul(log(act), abslog(act))), matmul(normalize(weight), relu(grad)))
            return _value(t8)
    except _NoValue:
        return math.nan
