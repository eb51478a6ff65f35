"""Layer descriptions and the forward pass of a chain of layers, in pure JAX.

A *chain* is a static description (a tuple of layer specs, each a hashable NamedTuple, plus the
per-sample input shape); its *params* are a matching tuple of dicts of arrays. Keeping the two apart
lets a chain be a static argument of `jax.jit` while the weights stay traced, so one compiled
program serves every set of weights of the same architecture.

Shapes are per sample and channel-first for images, as in torch: a Conv2d sees `[C, H, W]`.
`Function` wraps any pure JAX function `fn(params, x)` as a layer (a translated torch span, a
residual block, attention); `deep_ei_jax.positions` restricts a span to one output position.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Activation = Union[str, Callable[[jax.Array], jax.Array]]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}

# The output range deep-ei assumes for each activation, used when a range is not given.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "identity": (-10.0, 10.0),
    "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "relu": (0.0, 10.0),
}


class Dense(NamedTuple):
    """y = x @ w + b over the last axis. Params: `w` [n_in, n_out], optional `b` [n_out].

    A fan-in of at most `ELEMENTWISE_FAN_IN` is computed as a chain of elementwise
    multiply-adds in input order (x_0 w_0 + x_1 w_1 + ... then + b) instead of a matmul: several
    times faster for such skinny products on a CPU, and every output is then the same sequence of
    float operations whatever the batch or a `vmap` around it (a sweep's sets round exactly as
    single calls do).
    """

    activation: Activation = "identity"


class Conv2d(NamedTuple):
    """Cross-correlation as torch.nn.Conv2d. Params: `w` [C_out, C_in/groups, kH, kW], optional
    `b`."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    activation: Activation = "identity"


class AvgPool2d(NamedTuple):
    """Average pooling as torch.nn.AvgPool2d (zero padding counted in the mean). No params."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    activation: Activation = "identity"


class MaxPool2d(NamedTuple):
    """Max pooling as torch.nn.MaxPool2d. No params."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    activation: Activation = "identity"


class Function(NamedTuple):
    """Any pure JAX function as a layer: y = activation(fn(params, x)).

    `fn(params, x)` takes `params`, a flat dict of float32 arrays keyed by strings (the layer's
    params, e.g. `{"w": [n_in, n_out], "b": [n_out]}`), and a batch `x` of shape
    `[N, *in_shape]`, and returns `[N, *out_shape]` (at least one per-sample axis). It must work
    for any N, treat the samples independently (row i of the output depends on row i of the input
    only), and be traceable by JAX (jit, vmap, no Python branching on values). The spec is hashable
    because `fn` is (a plain function hashes by identity; a NamedTuple or frozen dataclass with a
    `__call__` by value, so equal functions share one compiled program).

    Attributes:
      fn: the function, `(params: dict, x: [N, *in]) -> [N, *out]`.
      name: what error messages call the layer (e.g. the module's qualified name).
      activation: applied after `fn`, as for the other layers (a name or a JAX callable).
    """

    fn: Callable
    name: str = "function"
    activation: Activation = "identity"


class Flatten(NamedTuple):
    """Flattens every per-sample axis from `start_dim` on (torch counts the batch as dim 0)."""

    start_dim: int = 1
    activation: Activation = "identity"


# Dense layers with at most this many inputs multiply-add elementwise (see `Dense`).
ELEMENTWISE_FAN_IN = 16

LayerSpec = Union[Dense, Conv2d, AvgPool2d, MaxPool2d, Flatten, Function]
LAYER_TYPES = (Dense, Conv2d, AvgPool2d, MaxPool2d, Flatten, Function)


class Chain(NamedTuple):
    """A static description of consecutive layers, each followed by its activation.

    Attributes:
      layers: layer specs, applied in order.
      in_shape: the per-sample input shape, e.g. `(20,)` or `(3, 5, 5)`.
    """

    layers: tuple
    in_shape: tuple


def activation_fn(activation: Activation) -> Callable[[jax.Array], jax.Array]:
    """Returns the function for an activation name or callable."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)} or a callable; "
                f"got {activation!r}")
        return ACTIVATIONS[activation]
    if callable(activation):
        return activation
    raise TypeError(f"activation must be a name or a callable; got {type(activation).__name__}")


def _apply_one(spec: LayerSpec, params: dict, x: jax.Array) -> jax.Array:
    """Applies one layer (without its activation) to a batch `x` of shape [N, *in_shape]."""
    if isinstance(spec, Dense):
        w = params["w"]
        if w.shape[0] <= ELEMENTWISE_FAN_IN:
            y = x[..., 0, None] * w[0]
            for i in range(1, w.shape[0]):
                y = y + x[..., i, None] * w[i]
        else:
            y = x @ w
        return y + params["b"] if params.get("b") is not None else y
    if isinstance(spec, Conv2d):
        y = jax.lax.conv_general_dilated(
            x, params["w"], window_strides=spec.stride,
            padding=[(p, p) for p in spec.padding], rhs_dilation=spec.dilation,
            feature_group_count=spec.groups, dimension_numbers=("NCHW", "OIHW", "NCHW"),
            precision=jax.lax.Precision.HIGHEST)
        if params.get("b") is not None:
            y = y + params["b"][None, :, None, None]
        return y
    if isinstance(spec, (AvgPool2d, MaxPool2d)):
        window = (1, 1) + tuple(spec.kernel_size)
        strides = (1, 1) + tuple(spec.stride)
        padding = ((0, 0), (0, 0)) + tuple((p, p) for p in spec.padding)
        if isinstance(spec, AvgPool2d):
            total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
            return total / float(np.prod(spec.kernel_size))
        dilation = (1, 1) + tuple(spec.dilation)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, padding,
                                     window_dilation=dilation)
    if isinstance(spec, Function):
        return spec.fn(params, x)
    if isinstance(spec, Flatten):
        keep = spec.start_dim  # dims before start_dim, counting the batch as 0
        return x.reshape(x.shape[:keep] + (-1,))
    raise TypeError(f"layer spec must be one of {[t.__name__ for t in LAYER_TYPES]}; "
                    f"got {type(spec).__name__}")


def apply(chain: Chain, params: tuple, x: jax.Array, *, final_activation: Any = None) -> jax.Array:
    """Runs a batch through the chain.

    Args:
      chain: the static chain description.
      params: one dict of arrays per layer (empty for pooling and Flatten).
      x: inputs, shape `[N, *chain.in_shape]`.
      final_activation: if given, replaces the last layer's activation.

    Returns:
      Outputs, shape `[N, *out_shape]`.
    """
    last = len(chain.layers) - 1
    for i, (spec, p) in enumerate(zip(chain.layers, params)):
        act = spec.activation if (i < last or final_activation is None) else final_activation
        x = activation_fn(act)(_apply_one(spec, p, x))
    return x


def param_shapes(params) -> tuple:
    """A hashable summary of params' structure: per layer, its sorted (name, shape) pairs."""
    return tuple(tuple(sorted((k, tuple(np.shape(v))) for k, v in p.items() if v is not None))
                 for p in params)


@functools.lru_cache(maxsize=4096)
def layers_out_shape(layers: tuple, shapes: tuple, in_shape: tuple) -> tuple:
    """The per-sample output shape of `layers` (specs) with params of `shapes` (`param_shapes`)
    for a per-sample input of `in_shape`: traced abstractly once per combination, then cached
    (tracing cost ~1 ms a call, a noticeable share of a small layer's measurement). Raises
    whatever the layers raise for shapes they cannot take."""
    abstract = tuple({k: jax.ShapeDtypeStruct(shape, jnp.float32) for k, shape in layer}
                     for layer in shapes)

    def run(p, x):
        for spec, q in zip(layers, p):
            x = _apply_one(spec, q, x)
        return x
    x = jax.ShapeDtypeStruct((1,) + tuple(in_shape), jnp.float32)
    return tuple(jax.eval_shape(run, abstract, x).shape[1:])


def out_shape(chain: Chain, params: tuple) -> tuple:
    """The per-sample output shape of the chain (computed abstractly, no FLOPs)."""
    return layers_out_shape(tuple(chain.layers), param_shapes(params), tuple(chain.in_shape))


def receptive_field(chain: Chain, params: tuple) -> tuple[int, int]:
    """(height, width) of the input patch that one output position of a Conv2d/pooling chain sees.

    Walks back from one output position: a layer with kernel k, stride s and dilation d turns a
    patch of r positions at its output into (r - 1) * s + d * (k - 1) + 1 at its input.
    """
    size = [1, 1]
    for spec, p in zip(reversed(chain.layers), reversed(params)):
        if isinstance(spec, Conv2d):
            kernel = p["w"].shape[2:]
        elif isinstance(spec, (AvgPool2d, MaxPool2d)):
            kernel = spec.kernel_size
        else:
            raise ValueError("receptive_field needs a chain of Conv2d and pooling layers only; "
                             f"got {type(spec).__name__}")
        dilation = getattr(spec, "dilation", (1, 1))
        size = [(r - 1) * s + d * (k - 1) + 1
                for r, s, d, k in zip(size, spec.stride, dilation, kernel)]
    return tuple(size)
