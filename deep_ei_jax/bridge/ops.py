"""The op table: each supported ATen op as a jax.numpy / lax function, and activation recognition.

`translation(op)` returns the JAX function for an op name as `graph.op_name` spells it
("aten.conv2d", "getitem"); it takes the node's arguments in ATen's order and names (tensors as JAX
arrays, `graph.DType`/`graph.Ignored` for dtypes and devices) and returns the node's value. An op
that is not in the table, or an argument value a translation cannot honour (a train-mode
BatchNorm, ceil_mode=True pooling), raises `UnsupportedOp`, a NotImplementedError. Nothing here
calls torch: the translations are pure JAX, so a translated span jits, vmaps and shards.

In-place ops (`aten.relu_`, `aten.add_`, ...) translate as their functional forms: torch.export
names an in-place op's value as a new node and later readers use it; where a value is changed
through a view instead, the span builder refuses it (`graph.CapturedGraph.mutations`).

Whole recurrent layers (aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu: stacked,
bidirectional, batch-first or not) run their cell over the sequence with `lax.scan`.

`activation_of_op(op, args, kwargs)` says whether a node is one of the elementwise activations of
`deep_ei_jax.activations` (with its arguments), e.g. aten.leaky_relu(x, 0.2) ->
`Activation("leaky_relu", (0.2,))`; the activation ops translate through those same Activations.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..activations import SELU_ALPHA, SELU_SCALE, Activation, activation
from .graph import DType, Ignored

HIGHEST = jax.lax.Precision.HIGHEST
TABLE: dict[str, Callable] = {}

# In-place ops whose functional form is in the table (aten.relu_ -> aten.relu).
INPLACE = ("add", "sub", "mul", "div", "relu", "relu6", "leaky_relu", "elu", "selu", "celu",
           "gelu", "silu", "mish", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "tanh",
           "clamp", "clamp_min", "clamp_max", "neg", "exp", "masked_fill", "pow", "sqrt",
           "rsqrt", "abs", "tril", "triu")

# ops that pass their first argument's values through unchanged
VALUE_PRESERVING = frozenset({"aten.clone", "aten.contiguous", "aten.alias", "aten.detach",
                              "aten.dropout", "aten.feature_dropout", "aten.alpha_dropout",
                              "aten.lift_fresh_copy"})


class UnsupportedOp(NotImplementedError):
    """An op (or an argument value) that the table cannot translate.

    Attributes:
      op: the op's name, e.g. "aten.fft_fft".
      reason: what is missing.
    """

    def __init__(self, op: str, reason: str = "not in the op table"):
        super().__init__(f"{op}: {reason}")
        self.op = op
        self.reason = reason


def _register(*names):
    def register(fn):
        for name in names:
            TABLE[f"aten.{name}" if name != "getitem" else name] = fn
        return fn
    return register


def translation(op: str) -> Callable:
    """The JAX function of op `op` (e.g. "aten.linear"); raises UnsupportedOp if there is none."""
    if op in TABLE:
        return TABLE[op]
    if op.startswith("aten.") and op.endswith("_") and op[5:-1] in INPLACE:
        return TABLE[op[:-1]]
    raise UnsupportedOp(op)


def supported_ops() -> list[str]:
    """Sorted names of every op the table translates (in-place variants included)."""
    names = set(TABLE) | {f"aten.{name}_" for name in INPLACE}
    return sorted(names)


def dtype_of(value) -> np.dtype:
    """A graph DType -> the dtype JAX uses for it (64-bit types narrowed, as JAX does by
    default)."""
    name = value.name if isinstance(value, DType) else str(value)
    narrowed = {"float64": "float32", "int64": "int32", "uint64": "uint32", "complex128":
                "complex64"}.get(name, name)
    return np.dtype(narrowed)


def _dim(dim, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _tuple(value, n: int) -> tuple:
    if isinstance(value, (tuple, list)):
        value = tuple(int(v) for v in value)
        return value * n if len(value) == 1 else value
    return (int(value),) * n


# --------------------------------------------------------------------------- linear algebra
def _matmul(a, b):
    return jnp.matmul(a, b, precision=HIGHEST)


@_register("linear")
def linear(input, weight, bias=None):
    y = _matmul(input, weight.T)
    return y if bias is None else y + bias


@_register("addmm")
def addmm(self, mat1, mat2, *, beta=1, alpha=1):
    return beta * self + alpha * _matmul(mat1, mat2)


@_register("baddbmm")
def baddbmm(self, batch1, batch2, *, beta=1, alpha=1):
    return beta * self + alpha * _matmul(batch1, batch2)


@_register("mm", "bmm", "matmul")
def matmul(self, other):
    return _matmul(self, other)


@_register("t")
def transpose_2d(self):
    return self.T


@_register("einsum")
def einsum(equation, tensors, *, path=None):
    return jnp.einsum(equation, *tensors, precision=HIGHEST)


# --------------------------------------------------------------------------- convolution
def _conv(input, weight, bias, stride, padding, dilation, groups):
    spatial = weight.ndim - 2
    unbatched = input.ndim == weight.ndim - 1
    x = input[None] if unbatched else input
    stride, dilation = _tuple(stride, spatial), _tuple(dilation, spatial)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0)] * spatial
        elif padding == "same":
            totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            pads = [(t // 2, t - t // 2) for t in totals]
        else:
            raise UnsupportedOp("aten.convolution", f"padding={padding!r}")
    else:
        pads = [(p, p) for p in _tuple(padding, spatial)]
    letters = "DHW"[3 - spatial:]
    y = jax.lax.conv_general_dilated(
        x, weight, window_strides=stride, padding=pads, rhs_dilation=dilation,
        feature_group_count=int(groups),
        dimension_numbers=(f"NC{letters}", f"OI{letters}", f"NC{letters}"), precision=HIGHEST)
    if bias is not None:
        y = y + bias.reshape((-1,) + (1,) * spatial)
    return y[0] if unbatched else y


@_register("conv1d", "conv2d", "conv3d")
def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(input, weight, bias, stride, padding, dilation, groups)


@_register("convolution")
def convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
                groups):
    if transposed:
        raise UnsupportedOp("aten.convolution", "transposed convolution")
    return _conv(input, weight, bias, stride, padding, dilation, groups)


# --------------------------------------------------------------------------- pooling
def _window(x, spatial: int, kernel, stride, padding, dilation=1):
    kernel = _tuple(kernel, spatial)
    stride = _tuple(stride, spatial) if stride not in ((), [], None) else kernel
    lead = x.ndim - spatial
    return ((1,) * lead + kernel, (1,) * lead + stride,
            ((0, 0),) * lead + tuple((p, p) for p in _tuple(padding, spatial)),
            (1,) * lead + _tuple(dilation, spatial))


def _max_pool(spatial):
    def max_pool(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        if ceil_mode:
            raise UnsupportedOp(f"aten.max_pool{spatial}d", "ceil_mode=True")
        window, strides, pads, dilations = _window(self, spatial, kernel_size, stride, padding,
                                                   dilation)
        return jax.lax.reduce_window(self, -jnp.inf, jax.lax.max, window, strides, pads,
                                     window_dilation=dilations)
    return max_pool


def _avg_pool(spatial):
    def avg_pool(self, kernel_size, stride=(), padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        if ceil_mode:
            raise UnsupportedOp(f"aten.avg_pool{spatial}d", "ceil_mode=True")
        window, strides, pads, _ = _window(self, spatial, kernel_size, stride, padding)
        total = jax.lax.reduce_window(self, 0.0, jax.lax.add, window, strides, pads)
        if divisor_override:
            return total / divisor_override
        if count_include_pad:
            return total / float(np.prod(window))
        ones = jnp.ones(self.shape[-spatial:], self.dtype)
        counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window[-spatial:],
                                       strides[-spatial:], pads[-spatial:])
        return total / counts
    return avg_pool


for _n in (1, 2, 3):
    TABLE[f"aten.max_pool{_n}d"] = _max_pool(_n)
    TABLE[f"aten.avg_pool{_n}d"] = _avg_pool(_n)


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """[out, size] averaging weights of torch's adaptive pooling along one axis."""
    matrix = np.zeros((out, size), np.float64)  # cast to the input's dtype where used
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _adaptive_avg_pool(spatial):
    def adaptive_avg_pool(self, output_size):
        out = _tuple(output_size, spatial)
        y = self
        for axis, size in zip(range(self.ndim - spatial, self.ndim), out):
            matrix = jnp.asarray(_adaptive_matrix(self.shape[axis], size), self.dtype)
            y = jnp.moveaxis(jnp.tensordot(y, matrix, axes=((axis,), (1,)), precision=HIGHEST),
                             -1, axis)
        return y
    return adaptive_avg_pool


for _n in (1, 2, 3):
    TABLE[f"aten.adaptive_avg_pool{_n}d"] = _adaptive_avg_pool(_n)
TABLE["aten._adaptive_avg_pool2d"] = _adaptive_avg_pool(2)


# --------------------------------------------------------------------------- normalization
def _channel(v, ndim):
    return v.reshape((-1,) + (1,) * (ndim - 2)) if ndim > 1 else v


def _batch_norm_eval(input, weight, bias, mean, var, eps):
    scale = jax.lax.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return input * _channel(scale, input.ndim) + _channel(shift, input.ndim)


@_register("batch_norm")
def batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps,
               cudnn_enabled=True):
    if training or running_mean is None:
        raise UnsupportedOp("aten.batch_norm", "batch statistics (train mode or no running stats)")
    return _batch_norm_eval(input, weight, bias, running_mean, running_var, eps)


@_register("_native_batch_norm_legit_no_training")
def batch_norm_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    empty = jnp.zeros((0,), input.dtype)
    return _batch_norm_eval(input, weight, bias, running_mean, running_var, eps), empty, empty


def _normalize(x, axes, eps):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = jnp.mean(centered * centered, axis=axes, keepdims=True)
    return centered * jax.lax.rsqrt(var + eps), mean, var


@_register("layer_norm")
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    axes = tuple(range(input.ndim - len(normalized_shape), input.ndim))
    y, _, _ = _normalize(input, axes, eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


@_register("native_layer_norm")
def native_layer_norm(input, normalized_shape, weight, bias, eps):
    axes = tuple(range(input.ndim - len(normalized_shape), input.ndim))
    y, mean, var = _normalize(input, axes, eps)
    y = y if weight is None else y * weight
    y = y if bias is None else y + bias
    return y, mean, jax.lax.rsqrt(var + eps)


@_register("group_norm")
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    shape = input.shape
    grouped = input.reshape(shape[:1] + (num_groups, -1))
    y, _, _ = _normalize(grouped, (2,), eps)
    y = y.reshape(shape)
    if weight is not None:
        y = y * _channel(weight, len(shape))
    return y if bias is None else y + _channel(bias, len(shape))


# --------------------------------------------------------------------------- elementwise math
TABLE.update({
    "aten.neg": jnp.negative, "aten.exp": jnp.exp, "aten.log": jnp.log, "aten.sqrt": jnp.sqrt,
    "aten.rsqrt": jax.lax.rsqrt, "aten.abs": jnp.abs, "aten.reciprocal": jnp.reciprocal,
    "aten.square": jnp.square, "aten.log1p": jnp.log1p, "aten.expm1": jnp.expm1,
    "aten.erf": jax.lax.erf, "aten.sin": jnp.sin, "aten.cos": jnp.cos,
    "aten.pow": jnp.power, "aten.maximum": jnp.maximum, "aten.minimum": jnp.minimum,
    "aten.eq": jnp.equal, "aten.ne": jnp.not_equal, "aten.gt": jnp.greater,
    "aten.lt": jnp.less, "aten.ge": jnp.greater_equal, "aten.le": jnp.less_equal,
    "aten.logical_not": jnp.logical_not, "aten.logical_and": jnp.logical_and,
    "aten.logical_or": jnp.logical_or, "aten.where": jnp.where,
})


@_register("add")
def add(self, other, *, alpha=1):
    return self + (other if alpha == 1 else alpha * other)


@_register("sub")
def sub(self, other, *, alpha=1):
    return self - (other if alpha == 1 else alpha * other)


@_register("rsub")
def rsub(self, other, *, alpha=1):
    return other - (self if alpha == 1 else alpha * self)


@_register("mul")
def mul(self, other):
    return self * other


@_register("div")
def div(self, other, *, rounding_mode=None):
    if rounding_mode is None:
        return jnp.true_divide(self, other)
    if rounding_mode == "floor":
        return jnp.floor_divide(self, other)
    return jnp.trunc(jnp.true_divide(self, other))


@_register("clamp")
def clamp(self, min=None, max=None):
    return jnp.clip(self, min, max)


@_register("clamp_min")
def clamp_min(self, min):
    return jnp.maximum(self, min)


@_register("clamp_max")
def clamp_max(self, max):
    return jnp.minimum(self, max)


@_register("masked_fill")
def masked_fill(self, mask, value):
    return jnp.where(mask, jnp.asarray(value, self.dtype), self)


@_register("tril")
def tril(self, diagonal=0):
    return jnp.tril(self, diagonal)


@_register("triu")
def triu(self, diagonal=0):
    return jnp.triu(self, diagonal)


# --------------------------------------------------------------------------- activations
def _elu_activation(alpha=1.0, scale=1.0, input_scale=1.0):
    if scale == 1 and input_scale == 1:
        return activation("elu", alpha)
    if input_scale == 1 and math.isclose(alpha, SELU_ALPHA) and math.isclose(scale, SELU_SCALE):
        return activation("selu")
    return None


def _hardtanh_activation(min_val=-1.0, max_val=1.0):
    return activation("relu6") if (min_val, max_val) == (0, 6) else activation(
        "hardtanh", min_val, max_val)


def _gelu_activation(*, approximate="none"):
    return activation("gelu_tanh" if approximate == "tanh" else "gelu")


# op -> (its arguments after the input) -> Activation, or None when not a named activation
ACTIVATION_OPS: dict[str, Callable] = {
    "aten.relu": lambda: activation("relu"),
    "aten.relu6": lambda: activation("relu6"),
    "aten.leaky_relu": lambda negative_slope=0.01: activation("leaky_relu", negative_slope),
    "aten.elu": _elu_activation,
    "aten.selu": lambda: activation("selu"),
    "aten.celu": lambda alpha=1.0: activation("celu", alpha),
    "aten.gelu": _gelu_activation,
    "aten.silu": lambda: activation("silu"),
    "aten.mish": lambda: activation("mish"),
    "aten.softplus": lambda beta=1.0, threshold=20.0: activation("softplus", beta, threshold),
    "aten.hardtanh": _hardtanh_activation,
    "aten.hardswish": lambda: activation("hardswish"),
    "aten.hardsigmoid": lambda: activation("hardsigmoid"),
    "aten.sigmoid": lambda: activation("sigmoid"),
    "aten.tanh": lambda: activation("tanh"),
    "aten.log_sigmoid": lambda: activation("logsigmoid"),
}


def activation_of_op(op: str, args: tuple, kwargs: tuple) -> Activation | None:
    """The named activation that node (op, args, kwargs) applies to its first argument, or None.

    In-place forms count (aten.relu_). softsign has no ATen op (torch writes x / (1 + |x|)); the
    span builder recognises that pattern.
    """
    base = op[:-1] if op.endswith("_") and op[:-1] in ACTIVATION_OPS else op
    if base not in ACTIVATION_OPS or not args:
        return None
    return ACTIVATION_OPS[base](*args[1:], **dict(kwargs))


def _activation_translation(op):
    def translate(self, *args, **kwargs):
        named = ACTIVATION_OPS[op](*args, **kwargs)
        if named is not None:
            return named(self)
        alpha, scale, input_scale = (tuple(args) + (1.0, 1.0, 1.0))[:3]   # aten.elu, general
        alpha, scale = kwargs.get("alpha", alpha), kwargs.get("scale", scale)
        input_scale = kwargs.get("input_scale", input_scale)
        return scale * jnp.where(self > 0, self, alpha * jnp.expm1(self * input_scale))
    return translate


for _op in ACTIVATION_OPS:
    TABLE[_op] = _activation_translation(_op)


# --------------------------------------------------------------------------- softmax, reductions
@_register("softmax", "_softmax")
def softmax(self, dim, dtype_or_half=None):
    return jax.nn.softmax(self, axis=dim)


@_register("log_softmax", "_log_softmax")
def log_softmax(self, dim, dtype_or_half=None):
    return jax.nn.log_softmax(self, axis=dim)


def _dims(dim):
    if dim is None or dim == () or dim == []:
        return None
    return tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)


@_register("mean")
def mean(self, dim=None, keepdim=False, *, dtype=None):
    return jnp.mean(self, axis=_dims(dim), keepdims=keepdim)


@_register("sum")
def sum_(self, dim=None, keepdim=False, *, dtype=None):
    if isinstance(dim, DType):   # aten.sum.default(self, dtype)
        dim = None
    return jnp.sum(self, axis=_dims(dim), keepdims=keepdim)


@_register("amax")
def amax(self, dim=(), keepdim=False):
    return jnp.max(self, axis=_dims(dim), keepdims=keepdim)


@_register("amin")
def amin(self, dim=(), keepdim=False):
    return jnp.min(self, axis=_dims(dim), keepdims=keepdim)


# --------------------------------------------------------------------------- shapes and indexing
@_register("view", "reshape", "_unsafe_view")
def reshape(self, size):
    return jnp.reshape(self, tuple(size))


@_register("flatten")
def flatten(self, start_dim=0, end_dim=-1):
    if self.ndim == 0:
        return self.reshape(1)
    start, end = _dim(start_dim, self.ndim), _dim(end_dim, self.ndim)
    return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1:])


@_register("unflatten")
def unflatten(self, dim, sizes):
    dim = _dim(dim, self.ndim)
    return self.reshape(self.shape[:dim] + tuple(sizes) + self.shape[dim + 1:])


@_register("permute")
def permute(self, dims):
    return jnp.transpose(self, tuple(dims))


@_register("transpose")
def transpose(self, dim0, dim1):
    return jnp.swapaxes(self, dim0, dim1)


@_register("unsqueeze")
def unsqueeze(self, dim):
    return jnp.expand_dims(self, _dim(dim, self.ndim + 1))


@_register("squeeze")
def squeeze(self, dim=None):
    axes = range(self.ndim) if dim is None else _dims(dim)
    axes = tuple(a for a in (_dim(d, self.ndim) for d in axes) if self.shape[a] == 1)
    return jnp.squeeze(self, axes) if self.ndim else self


@_register("expand")
def expand(self, size, *, implicit=False):
    size = tuple(size)
    lead = len(size) - self.ndim
    shape = tuple(s if s != -1 else self.shape[i - lead] for i, s in enumerate(size))
    return jnp.broadcast_to(self, shape)


@_register("expand_as")
def expand_as(self, other):
    return jnp.broadcast_to(self, other.shape)


@_register("repeat")
def repeat(self, repeats):
    repeats = tuple(repeats)
    x = self.reshape((1,) * (len(repeats) - self.ndim) + self.shape)
    return jnp.tile(x, repeats)


@_register("flip")
def flip(self, dims):
    return jnp.flip(self, tuple(dims))


@_register("cat", "concat")
def cat(tensors, dim=0):
    tensors = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)]  # torch skips (0,)
    return jnp.concatenate(tensors, axis=dim)


@_register("stack")
def stack(tensors, dim=0):
    return jnp.stack(tensors, axis=dim)


def _split_at(self, sizes, dim):
    bounds = np.cumsum(sizes)[:-1].tolist()
    return tuple(jnp.split(self, bounds, axis=dim))


@_register("split")
def split(self, split_size, dim=0):
    if isinstance(split_size, (tuple, list)):
        return _split_at(self, split_size, dim)
    length = self.shape[dim]
    sizes = [split_size] * (length // split_size) + ([length % split_size]
                                                      if length % split_size else [])
    return _split_at(self, sizes, dim)


@_register("split_with_sizes")
def split_with_sizes(self, split_sizes, dim=0):
    return _split_at(self, split_sizes, dim)


@_register("chunk")
def chunk(self, chunks, dim=0):
    return split(self, -(-self.shape[dim] // chunks), dim)


@_register("unbind")
def unbind(self, dim=0):
    return tuple(jnp.moveaxis(self, dim, 0))


@_register("slice")
def slice_(self, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * self.ndim
    size = self.shape[dim]
    end = None if end is None else min(end, size)
    index[dim] = slice(start, end, step)
    return self[tuple(index)]


@_register("narrow")
def narrow(self, dim, start, length):
    return slice_(self, dim, start, start + length)


@_register("select")
def select(self, dim, index):
    return jnp.take(self, index, axis=dim)


@_register("index")
def index(self, indices):
    return self[tuple(slice(None) if i is None else i for i in indices)]


@_register("index_select")
def index_select(self, dim, index):
    return jnp.take(self, index, axis=dim)


@_register("getitem")
def getitem(sequence, i):
    return sequence[i]


# --------------------------------------------------------------------------- identities, dtypes
@_register("clone", "contiguous", "alias", "detach", "lift_fresh_copy")
def same(self, *args, **kwargs):
    return self


@_register("dropout", "feature_dropout", "alpha_dropout")
def dropout(input, p, train):
    if train:
        raise UnsupportedOp("aten.dropout", "dropout in train mode")
    return input


@_register("to", "_to_copy")
def to(self, *args, dtype=None, **kwargs):
    dtype = dtype if dtype is not None else next(
        (a for a in args if isinstance(a, DType)), None)
    return self if dtype is None else self.astype(dtype_of(dtype))


@_register("type_as")
def type_as(self, other):
    return self.astype(other.dtype)


@_register("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size")
def assertion(*args, **kwargs):
    return None


# --------------------------------------------------------------------------- constants
def _make(shape, fill, dtype, like=None):
    if isinstance(dtype, DType):
        kind = dtype_of(dtype)
    elif like is not None:
        kind = like.dtype
    else:
        kind = np.dtype("float32") if isinstance(fill, float) else jnp.asarray(fill).dtype
    return jnp.full(tuple(shape), fill, dtype=kind)


@_register("zeros")
def zeros(size, *, dtype=None, **kwargs):
    return _make(size, 0.0, dtype or DType("float32"))


@_register("ones")
def ones(size, *, dtype=None, **kwargs):
    return _make(size, 1.0, dtype or DType("float32"))


@_register("full")
def full(size, fill_value, *, dtype=None, **kwargs):
    return _make(size, fill_value, dtype)


@_register("scalar_tensor")
def scalar_tensor(s, *, dtype=None, **kwargs):
    return _make((), s, dtype or DType("float32"))


@_register("zeros_like")
def zeros_like(self, *, dtype=None, **kwargs):
    return _make(self.shape, 0, dtype, like=self)


@_register("ones_like")
def ones_like(self, *, dtype=None, **kwargs):
    return _make(self.shape, 1, dtype, like=self)


@_register("full_like")
def full_like(self, fill_value, *, dtype=None, **kwargs):
    return _make(self.shape, fill_value, dtype, like=self)


@_register("new_zeros")
def new_zeros(self, size, *, dtype=None, **kwargs):
    return _make(size, 0, dtype, like=self)


@_register("new_ones")
def new_ones(self, size, *, dtype=None, **kwargs):
    return _make(size, 1, dtype, like=self)


@_register("new_full")
def new_full(self, size, fill_value, *, dtype=None, **kwargs):
    return _make(size, fill_value, dtype, like=self)


@_register("arange")
def arange(*bounds, dtype=None, **kwargs):
    numbers = [b for b in bounds if not isinstance(b, (DType, Ignored))]
    kind = dtype_of(dtype) if isinstance(dtype, DType) else (
        np.dtype("float32") if any(isinstance(b, float) for b in numbers) else np.dtype("int32"))
    return jnp.arange(*numbers, dtype=kind)


@_register("pad", "constant_pad_nd")
def pad(self, pad, mode="constant", value=None):
    if isinstance(mode, (int, float)):      # constant_pad_nd(self, pad, value)
        mode, value = "constant", mode
    if mode != "constant":
        raise UnsupportedOp("aten.pad", f"mode={mode!r}")
    pairs = [(0, 0)] * self.ndim
    for i in range(len(pad) // 2):
        pairs[self.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if any(low < 0 or high < 0 for low, high in pairs):
        config = [(low, high, 0) for low, high in pairs]
        return jax.lax.pad(self, jnp.asarray(value or 0, self.dtype), config)
    return jnp.pad(self, pairs, constant_values=value or 0)


# --------------------------------------------------------------------------- attention, cells
@_register("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, *, scale=None, enable_gqa=False):
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key = jnp.repeat(key, repeats, axis=-3)
        value = jnp.repeat(value, repeats, axis=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = _matmul(query, jnp.swapaxes(key, -1, -2)) * scale
    length, source = query.shape[-2], key.shape[-2]
    if is_causal:
        allowed = jnp.tril(jnp.ones((length, source), bool))
        scores = jnp.where(allowed, scores, -jnp.inf)
    if attn_mask is not None:
        if attn_mask.dtype == jnp.bool_:
            scores = jnp.where(attn_mask, scores, -jnp.inf)
        else:
            scores = scores + attn_mask
    return _matmul(jax.nn.softmax(scores, axis=-1), value)


def _gates(input, hx, w_ih, w_hh, b_ih, b_hh):
    gi = linear(input, w_ih, b_ih)
    gh = linear(hx, w_hh, b_hh)
    return gi, gh


@_register("gru_cell")
def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    gi, gh = _gates(input, hx, w_ih, w_hh, b_ih, b_hh)
    i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    reset = jax.nn.sigmoid(i_r + h_r)
    update = jax.nn.sigmoid(i_z + h_z)
    new = jnp.tanh(i_n + reset * h_n)
    return (1.0 - update) * new + update * hx


@_register("lstm_cell")
def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    h, c = hx
    gi, gh = _gates(input, h, w_ih, w_hh, b_ih, b_hh)
    i, f, g, o = jnp.split(gi + gh, 4, axis=-1)
    c_next = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_next), c_next


@_register("rnn_tanh_cell")
def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    gi, gh = _gates(input, hx, w_ih, w_hh, b_ih, b_hh)
    return jnp.tanh(gi + gh)


@_register("rnn_relu_cell")
def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    gi, gh = _gates(input, hx, w_ih, w_hh, b_ih, b_hh)
    return jnp.maximum(gi + gh, 0.0)


@_register("embedding")
def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return jnp.take(weight, indices, axis=0)


# --------------------------------------------------------------------------- whole recurrent layers
def _layer_scan(cell, sequence, state: tuple, weights: list, reverse: bool):
    """Runs `cell` over sequence [L, N, F] from `state` (a tuple of [N, H]); -> (outputs, state)."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if len(weights) == 4 else (None, None)

    def step(carry, x_t):
        new = cell(x_t, carry, w_ih, w_hh, b_ih, b_hh)
        new = new if isinstance(new, tuple) else (new,)
        return new, new[0]

    final, outputs = jax.lax.scan(step, state, sequence, reverse=reverse)
    return outputs, final


def _recurrent(op: str, cell, input, hx: tuple, params, has_biases, num_layers, dropout, train,
               bidirectional, batch_first):
    """aten.lstm/gru/rnn_*: stacked (bidirectional) layers of `cell`, eval mode."""
    if train and dropout:
        raise UnsupportedOp(op, "dropout between layers in train mode")
    per, directions = (4 if has_biases else 2), (2 if bidirectional else 1)
    if len(params) != per * num_layers * directions:
        raise UnsupportedOp(op, "proj_size (projected LSTM)")
    unbatched = input.ndim == 2
    if unbatched:
        input, hx = input[None], tuple(h[:, None] for h in hx)
        batch_first = True
    x = input if batch_first else jnp.swapaxes(input, 0, 1)          # [N, L, F]
    finals = [[] for _ in hx]
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            state = tuple(h[k] for h in hx)
            ys, final = _layer_scan(cell, jnp.swapaxes(x, 0, 1), state,
                                    list(params[k * per:(k + 1) * per]), direction == 1)
            outputs.append(jnp.swapaxes(ys, 0, 1))
            for i, value in enumerate(final):
                finals[i].append(value)
        x = jnp.concatenate(outputs, axis=-1)
    output = x if batch_first else jnp.swapaxes(x, 0, 1)
    states = tuple(jnp.stack(f) for f in finals)
    if unbatched:
        output, states = output[0], tuple(s[:, 0] for s in states)
    return (output,) + states


@_register("lstm")
def lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    return _recurrent("aten.lstm", lstm_cell, input, tuple(hx), params, has_biases, num_layers,
                      dropout, train, bidirectional, batch_first)


def _single_state(op, cell):
    def recurrent(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                  batch_first):
        return _recurrent(op, cell, input, (hx,), params, has_biases, num_layers, dropout,
                          train, bidirectional, batch_first)
    return recurrent


def _unpacked(cell):
    """A cell taking its state as a tuple, as _layer_scan passes it."""
    return lambda x, state, *weights: cell(x, state[0], *weights)


TABLE["aten.gru"] = _single_state("aten.gru", _unpacked(gru_cell))
TABLE["aten.rnn_tanh"] = _single_state("aten.rnn_tanh", _unpacked(rnn_tanh_cell))
TABLE["aten.rnn_relu"] = _single_state("aten.rnn_relu", _unpacked(rnn_relu_cell))
