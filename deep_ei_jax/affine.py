"""Whether a JAX function is affine in its input, decided by a walk over its jaxpr.

`affine_reason(fn, params, in_shape)` returns None when `fn(params, x)` is an affine function of
`x` (x @ A + c for a fixed A and c; the params are constants here), and otherwise a short reason
naming the first primitive, in program order, through which the output depends nonlinearly on
x. The function is traced once, on a batch of one sample, to a jaxpr; every value in it is then
classified by one rule per primitive:

- *constant*: it does not depend on x (computed from the params, literals and constants: an
  eval-mode BatchNorm's `rsqrt(running_var + eps)` is a constant, whatever op made it);
- *affine*: an affine function of x;
- *nonlinear*: anything else (it remembers the primitive that made it so).

Rules for a primitive with at least one affine operand and no nonlinear one:

- linear in all operands together: add, sub, neg, the ops that move, copy or sum elements
  (reshape, transpose, broadcast_in_dim, squeeze, expand_dims, rev, slice, pad, concatenate,
  split, reduce_sum, cumsum, reduce_window_sum: average pooling), convert_element_type to a
  floating type, copy and sharding annotations;
- linear in some operands, the others must be constant: mul, dot_general and
  conv_general_dilated (one operand constant), div (the divisor constant), select_n (the
  predicate constant, as in `jnp.where(mask, x, 0)` with a fixed mask), gather, scatter,
  dynamic_slice and dynamic_update_slice (the indices constant), integer_pow (exponent 1);
- calls (jit, custom_jvp_call, custom_vjp_call, remat): the inner jaxpr, recursively (jax.nn.relu
  is a custom_jvp_call of `max`);
- everything else (max, logistic, exp, comparisons, sort, loops, conditionals...) applied to an
  input-dependent value makes it nonlinear.

The rules are structural: `x * 0`, `max(x, -inf)` or a ReLU that is never active for the inputs
of interest count as they are written. A function of which the test says "affine" is affine for
every value of the params and every x (up to floating-point rounding).

`affinity(..., dtype=float64)` also reports the first input-dependent value that is computed in a
narrower float type than the input (a function that casts to float32 inside): its affine map,
evaluated in float64, then carries float32 rounding.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from .dependency import inner_jaxpr

# Linear in all operands jointly.
_LINEAR = frozenset("""
add sub add_any neg reshape transpose broadcast_in_dim squeeze expand_dims rev slice pad
concatenate split reduce_sum cumsum reduce_window_sum copy copy_p stop_gradient real imag conj
device_put sharding_constraint optimization_barrier
""".split())
# Linear in the data operands (by position); the other operands (indices) must be constant.
_INDEXED = {"gather": (0,), "dynamic_slice": (0,), "dynamic_update_slice": (0, 1),
            "scatter": (0, 2), "scatter-add": (0, 2), "scatter_add": (0, 2)}
# Bilinear: affine when at most one operand depends on the input.
_BILINEAR = frozenset({"mul", "dot_general", "conv_general_dilated"})
# Named as "a nonlinear op" in reasons (any other primitive is "no affinity rule").
_NONLINEAR = frozenset("""
abs acos acosh asin asinh atan atan2 atanh cbrt ceil clamp cos cosh erf erf_inv erfc exp exp2
expm1 floor is_finite lgamma log log1p logistic max min pow rem round rsqrt sign sin sinh sqrt
square tan tanh eq ne lt le gt ge and or not xor reduce_max reduce_min reduce_prod argmax argmin
reduce_window_max reduce_window_min cummax cummin cumprod cumlogsumexp sort top_k
reduce_precision
""".split())

_AFFINE = "affine"


class _Nonlinear(NamedTuple):
    """The state of a value that depends nonlinearly on the input: where that started."""

    order: int     # the primitive's position in program order (nested calls included)
    reason: str


class Affinity(NamedTuple):
    """What `affinity` found.

    Attributes:
      reason: None when the function is affine in its input; else why not (the first primitive,
        in program order, that makes the output depend nonlinearly on the input).
      narrowed: None, or the first primitive that computes an input-dependent value in a float
        type narrower than the input's (e.g. "convert_element_type makes an input-dependent
        float32 value (the input is float64)").
    """

    reason: str | None
    narrowed: str | None


def _why_not(eqn, states) -> str | None:
    """Why this primitive is not affine in its input-dependent operands (all affine or
    constant, at least one affine), or None when it is."""
    name = eqn.primitive.name
    dependent = [s is not None for s in states]
    if name in _LINEAR:
        return None
    if name in _INDEXED:
        if any(d for i, d in enumerate(dependent) if i not in _INDEXED[name]):
            return f"{name} with indices that depend on the input"
        return None
    if name == "convert_element_type":
        dtype = np.dtype(eqn.params["new_dtype"])
        if jnp.issubdtype(dtype, jnp.inexact):
            return None
        return (f"convert_element_type to {dtype} (rounding) of a value that depends on the "
                f"input")
    if name in _BILINEAR:
        return f"{name} of two input-dependent values" if sum(dependent) > 1 else None
    if name == "div":
        return "div by a value that depends on the input" if dependent[1] else None
    if name == "select_n":
        return ("select_n (jnp.where) with a condition that depends on the input"
                if dependent[0] else None)
    if name == "integer_pow":
        exponent = eqn.params["y"]
        return None if exponent == 1 else (f"integer_pow (x ** {exponent}) of a value that "
                                           f"depends on the input")
    if name in _NONLINEAR:
        return f"{name} (a nonlinear op) applied to a value that depends on the input"
    return (f"{name} (no affinity rule for this primitive) applied to a value that depends on "
            f"the input")


def _state_of(eqn, states, order: int):
    """The state of an equation's outputs from its operands' states (not all constant)."""
    nonlinear = [s for s in states if isinstance(s, _Nonlinear)]
    if nonlinear:
        return min(nonlinear)   # the earliest origin
    reason = _why_not(eqn, states)
    return _AFFINE if reason is None else _Nonlinear(order, reason)


class _Walk:
    """One pass over a jaxpr and its nested calls (program order counted across them)."""

    def __init__(self, in_dtype):
        self.counter = itertools.count()
        self.in_dtype = np.dtype(in_dtype)
        self.narrowed = None

    def run(self, jaxpr, states):
        env = {}

        def read(var):
            return None if isinstance(var, jex_core.Literal) else env[var]

        for var in jaxpr.constvars:
            env[var] = None
        for var, state in zip(jaxpr.invars, states):
            env[var] = state
        for eqn in jaxpr.eqns:
            in_states = [read(v) for v in eqn.invars]
            order = next(self.counter)
            if all(s is None for s in in_states):
                out_states = [None] * len(eqn.outvars)
            else:
                inner = inner_jaxpr(eqn)
                out_states = (self.run(inner[0], in_states) if inner is not None
                              else [_state_of(eqn, in_states, order)] * len(eqn.outvars))
            for var, state in zip(eqn.outvars, out_states):
                if isinstance(var, jex_core.DropVar):
                    continue
                env[var] = state
                self._check_width(eqn, var, state)
        return [read(v) for v in jaxpr.outvars]

    def _check_width(self, eqn, var, state):
        dtype = np.dtype(var.aval.dtype)
        if (state == _AFFINE and self.narrowed is None and jnp.issubdtype(dtype, jnp.floating)
                and dtype.itemsize < self.in_dtype.itemsize):
            self.narrowed = (f"{eqn.primitive.name} makes an input-dependent {dtype} value "
                             f"(the input is {self.in_dtype})")


def _spec(leaf, dtype) -> jax.ShapeDtypeStruct:
    """A param leaf as an abstract value: floating leaves in `dtype`, others as they are."""
    if not hasattr(leaf, "dtype"):
        leaf = np.asarray(leaf)
    own = np.dtype(leaf.dtype)
    return jax.ShapeDtypeStruct(tuple(leaf.shape),
                                dtype if jnp.issubdtype(own, jnp.floating) else own)


def affinity(fn: Callable, params, in_shape, *, dtype=jnp.float32) -> Affinity:
    """Whether `fn(params, x)` is affine in x, and whether it narrows x's float type inside.

    Args:
      fn: `fn(params, x)` with x of shape `[N, *in_shape]`, samples independent.
      params: what fn takes as params (any pytree of arrays or `jax.ShapeDtypeStruct`s; only
        their shapes and dtypes matter). Floating leaves are traced in `dtype`, the others as
        they are.
      in_shape: the per-sample input shape.
      dtype: the float type x and the params are traced in (float64 traces under a scoped
        `jax.enable_x64`).

    Returns:
      An `Affinity` (reason None: affine).
    """
    in_shape = tuple(int(v) for v in in_shape)
    dtype = np.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a float type; got {dtype}")
    with jax.enable_x64(dtype.itemsize == 8 or jax.config.jax_enable_x64):
        leaves, tree = jax.tree_util.tree_flatten(params)
        specs = [_spec(a, dtype) for a in leaves]
        x = jax.ShapeDtypeStruct((1,) + in_shape, dtype)
        closed = jax.make_jaxpr(lambda p, x: fn(jax.tree_util.tree_unflatten(tree, p), x))(
            specs, x)
    walk = _Walk(dtype)
    states = walk.run(closed.jaxpr, [None] * len(leaves) + [_AFFINE])
    nonlinear = [s for s in states if isinstance(s, _Nonlinear)]
    return Affinity(min(nonlinear).reason if nonlinear else None, walk.narrowed)


def affine_reason(fn: Callable, params, in_shape) -> str | None:
    """None when `fn(params, x)` is affine in x (params held constant), else why not.

    Args:
      fn: `fn(params, x)` with x of shape `[N, *in_shape]` (e.g. a `layers.Function`'s fn, a
        translated torch span, a `positions.Restricted`).
      params: its params.
      in_shape: the per-sample input shape.

    Returns:
      None, or a short reason naming the first primitive that makes the output depend
      nonlinearly on x, e.g. "logistic (a nonlinear op) applied to a value that depends on the
      input" or "dot_general of two input-dependent values".
    """
    return affinity(fn, params, in_shape).reason


def traced_bytes_per_sample(fn: Callable, params, in_shape, *, dtype=jnp.float64) -> int:
    """An upper bound on the bytes of the values `fn` computes per sample (every intermediate
    of its jaxpr, traced on one sample, nested calls included, counted as if all were alive at
    once), in `dtype`. For sizing batches of evaluations."""
    dtype = np.dtype(dtype)
    with jax.enable_x64(dtype.itemsize == 8 or jax.config.jax_enable_x64):
        x = jax.ShapeDtypeStruct((1,) + tuple(int(v) for v in in_shape), dtype)
        closed = jax.make_jaxpr(fn)(params, x)

    def total(jaxpr):
        size = 0
        for eqn in jaxpr.eqns:
            inner = inner_jaxpr(eqn)
            if inner is not None:
                size += total(inner[0])
            size += sum(math.prod(v.aval.shape) for v in eqn.outvars
                        if hasattr(v.aval, "shape"))
        return size

    return (total(closed.jaxpr) + math.prod(x.shape)) * dtype.itemsize
