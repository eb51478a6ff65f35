"""Positions: which inputs one output position of a layer depends on, and the layer restricted
to them.

**Definition.** When a layer's per-sample output has positions (the pixels of a `[C, H, W]`
image, the tokens of a `[T, D]` sequence), one output position is measured: its outputs are the
features at that position (the C channels of one pixel, the D features of one token), and its
inputs are exactly the input elements that those outputs depend on, found by tracing
dependencies through the layer's JAX function (`dependencies`), not by per-layer formulas. Every
other input element is held at 0 (deep-ei's convention): the interventions (EI's uniform noise,
sensitivity's one noised input) act on the dependencies only.

- **Feature axis.** The caller names the output's feature axis (`feature_axis=0` for `[C, H, W]`
  channel-first images, `-1` for `[T, D]` tokens); every other output axis is a position axis.
  `feature_axis=None` makes every axis a position axis (one output element per position).
- **Default position.** The centre: index `n // 2` on each position axis of length `n` (for a
  `[C, 5, 6]` output, pixel (2, 3)). Near a border a padded convolution's position sees fewer
  inputs than its receptive field (the padding is not an input); the centre avoids that wherever
  the output is large enough.
- **Selecting.** `position=(i, j, ...)`, one index per position axis (negative indices count
  from the end).
- **The whole tensor.** `position='all'` measures every output against every input, no
  restriction (memory permitting).

For Conv2d and Conv2d -> pooling spans whose windows leave no gaps (dilation 1, stride no larger
than the kernel), the dependencies of an interior position are the receptive-field patch of
`layers.receptive_field`, all input channels, so this reproduces deep-ei's receptive-field rule.
With dilation (or a stride larger than the kernel) the patch has holes the output never sees;
they are not dependencies and are not measured.

**How dependencies are traced** (`dependencies`): the union of two tests, each of which can miss
what the other finds.

1. *NaN propagation*, the structural test: for each input element i, a probe input with element i
   set to NaN (the others at a fixed random point in [0, 1)) is run through the function; the
   selected outputs that become NaN depend on i. Arithmetic carries NaN through every path that
   exists in the graph whatever the values: a ReLU unit that is dead at every input
   (`jax.nn.relu` is a `max`, and max(NaN, 0) is NaN), a zero weight (0 * NaN is NaN), max
   pooling, softmax attention (every token's NaN reaches every query through the normaliser).
   The probes run as batches of `chunk` inputs (one NaN each), so an input of 10^4 elements costs
   10^4 forward passes in 10^4 / chunk calls.
2. *Jacobian sparsity*, the differential test: the nonzero pattern of the Jacobian of the selected
   outputs (reverse mode when they are fewer than the inputs, else forward mode), at `probes`
   random points (uniform in [0, 1) and in [-1, 1), alternating). It catches dependencies that
   lose a NaN, e.g. through a select (`jnp.where(x > 0, x, 0)` maps NaN to 0).

A dependency both tests miss would have to be dead at every probe point *and* drop NaN: a
`jnp.where`-written ReLU that is off for every input, which carries no information anyway.
Both tests over-approximate only for functions that are constant in an input by cancellation
(`x - x`). The random points come from `seed`, so the result is deterministic.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .layers import Chain, Function, apply

DEFAULT_CHUNK = 256
DEFAULT_PROBES = 4


def _out_shape(fn: Callable, params, in_shape: tuple) -> tuple:
    x = jax.ShapeDtypeStruct((1,) + tuple(in_shape), jnp.float32)
    return tuple(jax.eval_shape(fn, params, x).shape[1:])


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


def _selected(fn: Callable, in_shape: tuple, flat_out: np.ndarray) -> Callable:
    """(params, x [B, n_in]) -> the selected outputs [B, m]."""
    take = jnp.asarray(flat_out)

    def run(params, x):
        y = fn(params, x.reshape((x.shape[0],) + tuple(in_shape)))
        return y.reshape(y.shape[0], -1)[:, take]
    return run


def _nan_dependencies(run: Callable, params, base: jax.Array, chunk: int) -> np.ndarray:
    """Bool [n_in]: inputs whose NaN reaches a selected output (one NaN per probe row)."""
    n_in = base.shape[0]

    @jax.jit
    def reached(p, start):
        rows = start + jnp.arange(chunk)
        x = jnp.broadcast_to(base, (chunk, n_in))
        x = jnp.where(jnp.arange(n_in)[None, :] == rows[:, None], jnp.nan, x)
        return jnp.isnan(run(p, x)).any(axis=1)

    found = [np.asarray(reached(params, start)) for start in range(0, n_in, chunk)]
    return np.concatenate(found)[:n_in]


def _jacobian_dependencies(run: Callable, params, points: jax.Array, num_outputs: int
                           ) -> np.ndarray:
    """Bool [n_in]: inputs with a finite nonzero Jacobian entry at any of `points` [P, n_in]."""
    single = lambda x: run(params, x[None])[0]
    jacobian = jax.jacrev(single) if num_outputs <= points.shape[1] else jax.jacfwd(single)

    @jax.jit
    def nonzero(x):
        jac = jacobian(x)  # [m, n_in]
        return ((jac != 0) & jnp.isfinite(jac)).any(axis=0)
    return np.logical_or.reduce([np.asarray(nonzero(x)) for x in points])


def dependencies(fn: Callable, params, in_shape, outputs=None, *, flat: bool = False,
                 probes: int = DEFAULT_PROBES, chunk: int = DEFAULT_CHUNK,
                 seed: int = 0) -> np.ndarray:
    """The flat input indices that the selected outputs of `fn` depend on (see the module
    docstring for the method: NaN propagation united with Jacobian sparsity at random points).

    Args:
      fn: `fn(params, x)` with x of shape [N, *in_shape], returning [N, *out_shape]; samples
        independent.
      params: what `fn` takes as params (any pytree of arrays).
      in_shape: the per-sample input shape.
      outputs: which per-sample outputs: an index expression into an array of shape out_shape
        (e.g. `np.s_[:, 2, 3]`, the channels of pixel (2, 3) of a [C, H, W] output), or None for
        all of them.
      flat: `outputs` is a sequence of flat indices into the per-sample output instead.
      probes: how many random points the Jacobian is taken at.
      chunk: how many NaN probes run in one batch.
      seed: for the random points.

    Returns:
      Sorted flat indices into the per-sample input (C order), int64 [k].

    Raises:
      ValueError: if `fn` already gives NaN at the probe point without any NaN input, or
        `outputs` selects nothing.
    """
    in_shape = tuple(int(v) for v in in_shape)
    _checks.check_positive_int("probes", probes)
    _checks.check_positive_int("chunk", chunk)
    _checks.check_seed("seed", seed)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    flat_out = _flat_outputs(_out_shape(fn, params, in_shape), outputs, flat)
    run = _selected(fn, in_shape, flat_out)
    n_in = math.prod(in_shape)
    keys = jax.random.split(jax.random.key(seed), probes)
    low = jnp.where(jnp.arange(probes) % 2 == 0, 0.0, -1.0)[:, None]
    points = jax.vmap(lambda k: jax.random.uniform(k, (n_in,)))(keys) * (1.0 - low) + low
    if np.isnan(np.asarray(run(params, points[:1]))).any():
        raise ValueError("fn gives NaN outputs at a probe input with no NaN in it (uniform in "
                         "[0, 1)), so NaN propagation cannot trace its dependencies")
    found = _nan_dependencies(run, params, points[0], min(chunk, n_in))
    found |= _jacobian_dependencies(run, params, points, flat_out.size)
    return np.flatnonzero(found).astype(np.int64)


# ---------------------------------------------------------------- positions

def position_outputs(out_shape, *, feature_axis, position=None) -> tuple[np.ndarray, tuple]:
    """The flat output indices of one position, and the position itself.

    Args:
      out_shape: the per-sample output shape.
      feature_axis: the axis holding the features of a position (0 for [C, H, W], -1 for
        [T, D]); None: every axis is a position axis.
      position: one index per position axis (negative from the end); None: the centre,
        `n // 2` on each position axis.

    Returns:
      (flat indices [m] in increasing order, the position as a tuple of non-negative ints).
    """
    out_shape = tuple(int(v) for v in out_shape)
    feature = _feature_axis(feature_axis, len(out_shape))
    axes = [a for a in range(len(out_shape)) if a != feature]
    sizes = tuple(out_shape[a] for a in axes)
    if position is None:
        position = tuple(n // 2 for n in sizes)
    position = _check_position(position, sizes, out_shape, feature)
    index = [slice(None)] * len(out_shape)
    for axis, value in zip(axes, position):
        index[axis] = value
    flat = np.arange(math.prod(out_shape)).reshape(out_shape)[tuple(index)]
    return np.sort(np.asarray(flat).reshape(-1)), position


def _feature_axis(feature_axis, ndim: int):
    if feature_axis is None:
        return None
    if isinstance(feature_axis, bool) or not isinstance(feature_axis, (numbers.Integral,
                                                                       np.integer)):
        raise TypeError(f"feature_axis must be an int (e.g. 0 for [C, H, W], -1 for [T, D]) or "
                        f"None; got {feature_axis!r}")
    if not -ndim <= feature_axis < ndim:
        raise ValueError(f"feature_axis must be an axis of the per-sample output, in "
                         f"[{-ndim}, {ndim - 1}]; got {feature_axis}")
    return int(feature_axis) % ndim


def _check_position(position, sizes: tuple, out_shape: tuple, feature) -> tuple:
    where = (f"the per-sample output of shape {out_shape} with feature axis {feature} has "
             f"{len(sizes)} position axes of sizes {sizes}")
    try:
        position = tuple(position)
    except TypeError:
        raise TypeError(f"position must be a tuple of ints (one per position axis), None (the "
                        f"centre) or 'all'; got {position!r}") from None
    if len(position) != len(sizes) or not all(
            isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)
            for v in position):
        raise ValueError(f"position must be one int per position axis: {where}; got "
                         f"{position!r}")
    if not all(-n <= v < n for v, n in zip(position, sizes)):
        raise ValueError(f"position {position} is out of bounds: {where}")
    return tuple(int(v) % n for v, n in zip(position, sizes))


@dataclasses.dataclass(frozen=True)
class Restricted:
    """A chain restricted to one output position, as a function `(params, x [N, k]) -> [N, m]`:
    scatters the k inputs into a zero input of `in_shape` (at flat `inputs`), runs the chain
    (its last activation left to the `Function` spec that wraps this) and gathers the outputs at
    flat `outputs`. Hashable and compared by value, so equal restrictions share compiled code.

    Params: a flat dict, key `"{layer index}/{name}"` for each array of the chain's params (the
    params of a `Function` layer keep their own names after the slash).
    """

    layers: tuple
    in_shape: tuple
    inputs: tuple
    outputs: tuple

    def __call__(self, params: dict, x: jax.Array) -> jax.Array:
        n_in = math.prod(self.in_shape)
        # each full-input element takes column j of [x, 0]: its own input, or the zero column
        source = np.full(n_in, len(self.inputs), np.int32)
        source[np.asarray(self.inputs, np.int64)] = np.arange(len(self.inputs), dtype=np.int32)
        padded = jnp.concatenate([x, jnp.zeros((x.shape[0], 1), x.dtype)], axis=1)
        full = jnp.take(padded, jnp.asarray(source), axis=1)
        chain = Chain(layers=self.layers, in_shape=self.in_shape)
        y = apply(chain, unflatten_params(params, len(self.layers)),
                  full.reshape((x.shape[0],) + tuple(self.in_shape)))
        return jnp.take(y.reshape(y.shape[0], -1), jnp.asarray(self.outputs, np.int32), axis=1)


def flatten_params(params) -> dict:
    """A chain's params (one dict per layer) as one flat dict keyed `"{layer}/{name}"`."""
    return {f"{i}/{name}": value for i, layer in enumerate(params)
            for name, value in layer.items() if value is not None}


def unflatten_params(flat: dict, num_layers: int) -> tuple:
    """The inverse of `flatten_params`: one dict per layer."""
    layers = tuple({} for _ in range(num_layers))
    for key, value in flat.items():
        index, name = key.split("/", 1)
        layers[int(index)][name] = value
    return layers


class Restriction(NamedTuple):
    """What `restrict` measures.

    Attributes:
      chain: one `Function` layer from [k] inputs to [m] outputs (or the chain itself for
        position='all').
      params: its params (a one-element tuple holding the flat dict; the given params for 'all').
      inputs: the dependencies, flat indices into the original per-sample input, int64 [k].
      outputs: the measured outputs, flat indices into the original per-sample output, int64 [m].
      position: the measured position (a tuple of ints), or 'all'.
    """

    chain: Chain
    params: tuple
    inputs: np.ndarray
    outputs: np.ndarray
    position: object


def restrict(chain: Chain, params, *, feature_axis, position=None, name: str | None = None,
             probes: int = DEFAULT_PROBES, chunk: int = DEFAULT_CHUNK,
             seed: int = 0) -> Restriction:
    """The chain restricted to one output position (see the module docstring's definition).

    Args:
      chain, params: the span, as for the measures (any layers, `Function` included).
      feature_axis: the output's feature axis (0 for [C, H, W], -1 for [T, D]; None: none).
      position: one index per position axis; None: the centre (n // 2 on each); 'all': the
        whole tensor, no restriction.
      name: the restricted layer's name in messages (default: from the chain's last layer).
      probes, chunk, seed: as in `dependencies`.

    Returns:
      A `Restriction`; measure `restriction.chain` with `restriction.params`.
    """
    _checks.check_params(chain, params)
    params = tuple(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), dict(p))
                   for p in params)
    out_shape = _out_shape(lambda p, x: apply(chain, p, x), params, chain.in_shape)
    if isinstance(position, str):
        _checks.check_choice("position", position, ("all",))
        everything = lambda n: np.arange(n, dtype=np.int64)
        return Restriction(chain, params, everything(math.prod(chain.in_shape)),
                           everything(math.prod(out_shape)), "all")
    outputs, position = position_outputs(out_shape, feature_axis=feature_axis,
                                         position=position)
    inputs = dependencies(lambda p, x: apply(chain, p, x), params, chain.in_shape, outputs,
                          flat=True, probes=probes, chunk=chunk, seed=seed)
    last = chain.layers[-1]
    inner = chain.layers[:-1] + (last._replace(activation="identity"),)
    fn = Restricted(layers=inner, in_shape=tuple(chain.in_shape),
                    inputs=tuple(int(i) for i in inputs), outputs=tuple(int(i) for i in outputs))
    label = name if name is not None else (last.name if isinstance(last, Function)
                                           else type(last).__name__)
    spec = Function(fn=fn, name=f"{label} at position {position}", activation=last.activation)
    return Restriction(Chain(layers=(spec,), in_shape=(len(inputs),)),
                       (flatten_params(params),), inputs, outputs.astype(np.int64), position)
