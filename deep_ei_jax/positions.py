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

Dependencies are traced structurally through the function's jaxpr
(`deep_ei_jax.dependency.dependencies`): an input is a dependency when the computation graph
has a path from it to one of the position's outputs, whatever the values, so a ReLU unit that is
dead for every input, a zero weight, a max-pooling window element that never wins, or a token an
attention head barely weighs still count.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .dependency import dependencies
from .layers import Chain, Function, apply


def _out_shape(fn: Callable, params, in_shape: tuple) -> tuple:
    x = jax.ShapeDtypeStruct((1,) + tuple(in_shape), jnp.float32)
    return tuple(jax.eval_shape(fn, params, x).shape[1:])


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
      params: its params (a one-element tuple holding the flat dict; for 'all' the given params,
        as float32 arrays).
      inputs: the dependencies, flat indices into the original per-sample input, int64 [k].
      outputs: the measured outputs, flat indices into the original per-sample output, int64 [m].
      position: the measured position (a tuple of ints), or 'all'.
    """

    chain: Chain
    params: tuple
    inputs: np.ndarray
    outputs: np.ndarray
    position: object


def restrict(chain: Chain, params, *, feature_axis, position=None,
             name: str | None = None) -> Restriction:
    """The chain restricted to one output position (see the module docstring's definition).

    Args:
      chain, params: the span, as for the measures (any layers, `Function` included).
      feature_axis: the output's feature axis (0 for [C, H, W], -1 for [T, D]; None: none).
      position: one index per position axis; None: the centre (n // 2 on each); 'all': the
        whole tensor, no restriction.
      name: the restricted layer's name in messages (default: from the chain's last layer).

    Returns:
      A `Restriction`; measure `restriction.chain` with `restriction.params`.
    """
    _checks.check_params(chain, params)
    params = tuple(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), dict(p))
                   for p in params)
    out_shape = _out_shape(lambda p, x: apply(chain, p, x), params, chain.in_shape)
    if isinstance(position, str):
        _checks.check_choice("position", position, ("all",))
        return Restriction(chain, params, np.arange(math.prod(chain.in_shape), dtype=np.int64),
                           np.arange(math.prod(out_shape), dtype=np.int64), "all")
    outputs, position = position_outputs(out_shape, feature_axis=feature_axis,
                                         position=position)
    inputs = dependencies(lambda p, x: apply(chain, p, x), params, chain.in_shape, outputs,
                          flat=True)
    if inputs.size == 0:
        raise ValueError(f"the outputs at position {position} depend on no input element (the "
                         f"span's output there is constant); there is nothing to measure")
    last = chain.layers[-1]
    inner = chain.layers[:-1] + (last._replace(activation="identity"),)
    fn = Restricted(layers=inner, in_shape=tuple(chain.in_shape),
                    inputs=tuple(int(i) for i in inputs), outputs=tuple(int(i) for i in outputs))
    label = name if name is not None else (last.name if isinstance(last, Function)
                                           else type(last).__name__)
    spec = Function(fn=fn, name=f"{label} at position {position}", activation=last.activation)
    return Restriction(Chain(layers=(spec,), in_shape=(len(inputs),)),
                       (flatten_params(params),), inputs, outputs.astype(np.int64), position)
