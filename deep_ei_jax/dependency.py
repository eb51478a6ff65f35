"""Which input elements an output of a JAX function depends on, traced through its jaxpr.

`dependencies(fn, params, in_shape, outputs)` answers structurally: output j depends on input i
when the computation graph of `fn` has a path from i to j, whatever the values. The function is
traced once (on a batch of one sample) to a jaxpr, and the jaxpr is evaluated on *dependency
masks* alongside the values: a mask has the shape of the value it describes and counts, with
non-negative numbers, the paths from the input to each element. The rules below make the mask of
the outputs a linear map of the mask of the input with non-negative integer coefficients, M; the
selected outputs depend on input i exactly when (M^T c)_i > 0, c the indicator of the selected
outputs. One reverse-mode pass (`jax.vjp` of the mask map) computes M^T c for every input at
once: the cost is about two forward passes of `fn` whatever the number of inputs. Nothing can
cancel (no coefficient is negative) and nothing underflows (every coefficient is 0 or >= 1).

Each primitive moves masks by a rule:
- elementwise ops (arithmetic, comparisons, `select_n`, `max`, activations): an output element
  depends on what any operand element at its place depends on (`jnp.where(x > 0, x, 0)` depends
  on x through the predicate; `max(x, 0)` depends on x even where x is always negative: a dead
  ReLU unit still counts);
- ops that only move or sum elements (reshape, transpose, broadcast, slice, pad, concatenate,
  gather and scatter with fixed indices, sums, cumulative sums): the op itself applied to the
  masks (zeros where an operand has none);
- ops that select among elements (max/min reductions and windows, as in max pooling; argmax,
  cumulative max, sort, top_k): the matching sum, since which element wins depends on the values;
- bilinear ops (`dot_general`, `conv_general_dilated`): the op applied to each operand's mask and
  ones in place of the other operand, summed. A weight that happens to be 0 still connects:
  dependencies are the graph's, as the receptive field of a convolution is;
- calls (`jit`, `custom_jvp_call`, `custom_vjp_call`, remat): the inner jaxpr, recursively;
- any other primitive (loops, conditionals, ...): every output depends on everything its operands
  depend on; the result is then conservative (often every input) and a warning names the
  primitive.

Neither NaN propagation nor a Jacobian at random points is used: XLA's CPU max
pooling drops NaN in vectorised windows (measured: every NaN lost at 64 windows of a batch), and
a Jacobian misses every window element that is not the maximum at the probe points.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

_ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh bessel_i0e bessel_i1e cbrt ceil clamp
clz conj convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2
expm1 floor ge gt igamma imag integer_pow is_finite le lgamma log log1p logistic lt max min mul
ne neg nextafter not or polygamma population_count pow real reduce_precision rem round rsqrt
select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square
stop_gradient sub tan tanh xor zeta
""".split())

# ops applied to the masks themselves; the value: which operands carry data (the rest are indices)
_STRUCTURAL = {
    "reshape": None, "transpose": None, "broadcast_in_dim": None, "squeeze": None,
    "expand_dims": None, "rev": None, "stack": None, "slice": None, "reduce_sum": None,
    "reduce_window_sum": None, "cumsum": None, "concatenate": None, "split": None,
    "pad": (0, 1), "dynamic_slice": (0,), "dynamic_update_slice": (0, 1), "gather": (0,),
    "scatter": (0, 2), "scatter-add": (0, 2), "scatter_add": (0, 2),
}
_IDENTITY = frozenset({"device_put", "sharding_constraint", "optimization_barrier"})
_SELECTING_REDUCTIONS = frozenset({"reduce_max", "reduce_min", "argmax", "argmin", "reduce_prod",
                                   "reduce_and", "reduce_or", "reduce_xor"})
_SELECTING_WINDOWS = frozenset({"reduce_window_max", "reduce_window_min"})
_CUMULATIVE = frozenset({"cummax", "cummin", "cumprod", "cumlogsumexp"})
_BILINEAR = frozenset({"dot_general", "conv_general_dilated"})
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "remat2",
                    "checkpoint"})
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _mask_like(mask, aval):
    return jnp.zeros(aval.shape, jnp.float32) if mask is None else mask


def _elementwise(eqn, masks):
    shape = eqn.outvars[0].aval.shape
    total = sum(jnp.broadcast_to(m, shape) for m in masks if m is not None)
    return [total] * len(eqn.outvars)


def _structural(eqn, values, masks):
    data = _STRUCTURAL[eqn.primitive.name]
    data = range(len(values)) if data is None else data
    if any(m is not None for i, m in enumerate(masks) if i not in data):
        return None  # an index depends on the input: no structural rule
    operands = [_mask_like(masks[i], eqn.invars[i].aval) if i in data else values[i]
                for i in range(len(values))]
    out = eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(eqn.params))
    out = out if eqn.primitive.multiple_results else [out]
    return list(out)


def _selecting(eqn, masks):
    name, params, (mask,) = eqn.primitive.name, eqn.params, masks
    if name in _SELECTING_REDUCTIONS:
        out = jnp.sum(mask, axis=tuple(params["axes"]))
    elif name in _SELECTING_WINDOWS:
        out = jax.lax.reduce_window(mask, 0.0, jax.lax.add, params["window_dimensions"],
                                    params["window_strides"], params["padding"],
                                    params["base_dilation"], params["window_dilation"])
    else:
        out = jax.lax.cumsum(mask, axis=params["axis"], reverse=params["reverse"])
    return [out]


def _along_axis(eqn, masks, axis):
    """sort / top_k: each output along `axis` may come from any element along it."""
    total = sum(jnp.sum(m, axis=axis, keepdims=True) for m in masks if m is not None)
    return [jnp.broadcast_to(total, v.aval.shape) for v in eqn.outvars]


def _bilinear(eqn, values, masks):
    params = dict(eqn.primitive.get_bind_params(eqn.params), preferred_element_type=jnp.float32)
    total = 0.0
    for i, mask in enumerate(masks):
        if mask is not None:
            operands = [mask if j == i else jnp.ones(v.aval.shape, jnp.float32)
                        for j, v in enumerate(eqn.invars)]
            total = total + eqn.primitive.bind(*operands, **params)
    return [total]


def _dense(eqn, masks, unknown: set, name: str):
    """No rule: every output depends on everything any operand depends on (conservative)."""
    unknown.add(name)
    total = sum(jnp.sum(m) for m in masks if m is not None)
    return [jnp.broadcast_to(total, v.aval.shape) for v in eqn.outvars]


def inner_jaxpr(eqn):
    """(jaxpr, consts) that a call primitive (jit, custom_jvp_call, ...) runs on its operands as
    they are; None for other primitives, loops and conditionals included."""
    if eqn.primitive.name not in _CALLS:
        return None
    for name in _CALL_PARAMS:
        inner = eqn.params.get(name)
        if isinstance(inner, jex_core.ClosedJaxpr):
            return inner.jaxpr, inner.consts
        if isinstance(inner, jex_core.Jaxpr):
            return inner, ()
    return None


def _masks_of_eqn(eqn, values, masks, unknown: set):
    name = eqn.primitive.name
    if name in _ELEMENTWISE:
        return _elementwise(eqn, masks)
    if name in _IDENTITY and len(masks) == len(eqn.outvars):
        return [_mask_like(m, v.aval) for m, v in zip(masks, eqn.outvars)]
    if name in _STRUCTURAL:
        out = _structural(eqn, values, masks)
        if out is not None:
            return out
        name = f"{name} (with indices that depend on the input)"
    elif name in _SELECTING_REDUCTIONS | _SELECTING_WINDOWS | _CUMULATIVE and len(masks) == 1:
        return _selecting(eqn, masks)
    elif name == "sort":
        return _along_axis(eqn, masks, eqn.params["dimension"])
    elif name == "top_k":
        return _along_axis(eqn, masks, -1)
    elif name in _BILINEAR:
        return _bilinear(eqn, values, masks)
    return _dense(eqn, masks, unknown, name)


def _evaluate(jaxpr, consts, values, masks, unknown: set):
    """Runs `jaxpr` on values and dependency masks (None: depends on no probed input)."""
    env = {}

    def read(var):
        if isinstance(var, jex_core.Literal):
            return var.val, None
        return env[var]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = (value, None)
    for var, value, mask in zip(jaxpr.invars, values, masks):
        env[var] = (value, mask)
    for eqn in jaxpr.eqns:
        in_values, in_masks = zip(*(read(v) for v in eqn.invars)) if eqn.invars else ((), ())
        inner = inner_jaxpr(eqn)
        if inner is not None and any(m is not None for m in in_masks):
            out_values, out_masks = _evaluate(inner[0], inner[1], in_values, in_masks, unknown)
        else:
            out_values = eqn.primitive.bind(*in_values,
                                            **eqn.primitive.get_bind_params(eqn.params))
            out_values = out_values if eqn.primitive.multiple_results else [out_values]
            out_masks = ([None] * len(eqn.outvars) if all(m is None for m in in_masks)
                         else _masks_of_eqn(eqn, in_values, in_masks, unknown))
        for var, value, mask in zip(eqn.outvars, out_values, out_masks):
            if not isinstance(var, jex_core.DropVar):
                env[var] = (value, mask)
    results = [read(v) for v in jaxpr.outvars]
    return [r[0] for r in results], [r[1] for r in results]


def _flat_outputs(out_shape: tuple, outputs, flat: bool) -> np.ndarray:
    """Flat indices of the per-sample outputs that `outputs` selects (None: all)."""
    grid = np.arange(math.prod(out_shape)).reshape(out_shape)
    if outputs is None:
        return grid.reshape(-1)
    if flat:
        grid = grid.reshape(-1)
        outputs = np.asarray(outputs)
        if outputs.ndim > 1 or outputs.dtype.kind not in "iu":
            raise TypeError(f"outputs must be flat output indices (ints) with flat=True; got "
                            f"{outputs!r}")
    try:
        chosen = np.asarray(grid[outputs]).reshape(-1)
    except (IndexError, TypeError, ValueError) as error:
        raise ValueError(f"outputs must index the per-sample output of shape {out_shape} (an "
                         f"index expression such as np.s_[:, 2, 3]); got {outputs!r} "
                         f"({error})") from None
    if chosen.size == 0:
        raise ValueError(f"outputs selects no element of the per-sample output of shape "
                         f"{out_shape}; got {outputs!r}")
    return np.unique(chosen)


def dependencies(fn: Callable, params, in_shape, outputs=None, *,
                 flat: bool = False) -> np.ndarray:
    """The flat input indices that the selected outputs of `fn` depend on, traced through its
    jaxpr (see the module docstring for the rules).

    Args:
      fn: `fn(params, x)` with x of shape `[N, *in_shape]`, returning `[N, *out_shape]`;
        samples independent (row i of the output depends on row i of x only).
      params: what `fn` takes as params (any pytree of arrays).
      in_shape: the per-sample input shape.
      outputs: which per-sample outputs: an index expression into an array of shape out_shape
        (e.g. `np.s_[:, 2, 3]`, the channels of pixel (2, 3) of a [C, H, W] output), or None for
        all of them.
      flat: `outputs` is a sequence of flat indices into the per-sample output instead.

    Returns:
      Sorted flat indices into the per-sample input (C order), int64 [k].
    """
    in_shape = tuple(int(v) for v in in_shape)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    leaves, tree = jax.tree_util.tree_flatten(params)
    x_spec = jax.ShapeDtypeStruct((1,) + in_shape, jnp.float32)
    closed = jax.make_jaxpr(lambda p, x: fn(jax.tree_util.tree_unflatten(tree, p), x))(
        leaves, x_spec)
    out_shape = tuple(closed.out_avals[0].shape[1:])
    selected = np.zeros(math.prod(out_shape), np.float32)
    selected[_flat_outputs(out_shape, outputs, flat)] = 1.0
    # the values the index computations see (a mask never depends on them otherwise)
    x = jax.random.uniform(jax.random.key(0), (1,) + in_shape)
    unknown: set = set()

    def output_mask(leaves, input_mask):
        _, (mask, *_) = _evaluate(closed.jaxpr, closed.consts, [*leaves, x],
                                  [None] * len(leaves) + [input_mask], unknown)
        return jnp.zeros((1,) + out_shape, jnp.float32) if mask is None else mask

    @jax.jit
    def paths(leaves, cotangent):
        _, transpose = jax.vjp(lambda m: output_mask(leaves, m), jnp.ones((1,) + in_shape))
        return transpose(cotangent.reshape((1,) + out_shape))[0]

    counts = np.asarray(paths(leaves, jnp.asarray(selected))).reshape(-1)
    if unknown:
        warnings.warn(f"dependencies: no rule for the primitive(s) {sorted(unknown)}; their "
                      f"outputs were counted as depending on every input they could reach "
                      f"(conservative)", stacklevel=2)
    return np.flatnonzero(counts > 0).astype(np.int64)
