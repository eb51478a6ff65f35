"""Elementwise activations as hashable JAX callables, with their default output ranges.

An `Activation` is a name plus its numeric arguments, e.g. `Activation("leaky_relu", (0.01,))`.
It is a NamedTuple, so it hashes and compares by value and can sit in a static (jit) argument;
calling it computes the activation in `jax.numpy` as torch defines it (name(arguments with
their defaults): definition):

- identity: x
- relu: max(x, 0)
- relu6: min(max(x, 0), 6)
- leaky_relu(negative_slope=0.01): x if x > 0 else negative_slope * x
- elu(alpha=1.0): x if x > 0 else alpha * (exp(x) - 1)
- selu: 1.0507009873554805 * elu(x, alpha=1.6732632423543772)
- celu(alpha=1.0): max(0, x) + min(0, alpha * (exp(x / alpha) - 1))
- gelu: x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))
- gelu_tanh: x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))
- silu: x * sigmoid(x)
- mish: x * tanh(softplus(x))
- softplus(beta=1.0, threshold=20.0): x if beta x > threshold else log(1 + exp(beta x)) / beta
- hardtanh(min_val=-1.0, max_val=1.0): min(max(x, min_val), max_val)
- hardswish: x * relu6(x + 3) / 6
- hardsigmoid: relu6(x + 3) / 6
- sigmoid: 1 / (1 + exp(-x))
- tanh: tanh(x)
- logsigmoid: log(sigmoid(x)) = -softplus(-x)
- softsign: x / (1 + abs(x))

Default output range (`default_range`), the range in which a layer's outputs are binned when the
user gives none:

- deep-ei's table where deep-ei has an entry: sigmoid (0, 1), tanh (-1, 1), relu (0, 10), no
  activation / identity (-10, 10). These ignore `pre_range`, as deep-ei does.
- every other activation: its image of the pre-activation range `pre_range` (deep-ei's (-10, 10)
  by default), i.e. (min f, max f) over that interval. For the non-decreasing activations that is
  (f(low), f(high)); gelu, gelu_tanh, silu, mish and hardswish dip below zero for negative inputs,
  and their range starts at the true minimum inside the interval (gelu: -0.170 at x = -0.752;
  silu: -0.278 at x = -1.278; mish: -0.309 at x = -1.192; hardswish: -0.375 at x = -1.5).

This module is pure JAX and never imports torch; the torch bridge maps torch's modules and ATen
ops onto these names.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# name -> (argument names, their defaults)
_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "identity": ((), ()),
    "relu": ((), ()),
    "relu6": ((), ()),
    "leaky_relu": (("negative_slope",), (0.01,)),
    "elu": (("alpha",), (1.0,)),
    "selu": ((), ()),
    "celu": (("alpha",), (1.0,)),
    "gelu": ((), ()),
    "gelu_tanh": ((), ()),
    "silu": ((), ()),
    "mish": ((), ()),
    "softplus": (("beta", "threshold"), (1.0, 20.0)),
    "hardtanh": (("min_val", "max_val"), (-1.0, 1.0)),
    "hardswish": ((), ()),
    "hardsigmoid": ((), ()),
    "sigmoid": ((), ()),
    "tanh": ((), ()),
    "logsigmoid": ((), ()),
    "softsign": ((), ()),
}

NAMES: tuple[str, ...] = tuple(sorted(_SIGNATURES))

# Not non-decreasing: each has one interior minimum (decreasing, then increasing).
NON_MONOTONE = frozenset({"gelu", "gelu_tanh", "silu", "mish", "hardswish"})

# deep-ei's default output ranges (independent of the pre-activation range).
DEEP_EI_RANGES: dict[str, tuple[float, float]] = {
    "identity": (-10.0, 10.0), "sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "relu": (0.0, 10.0),
}

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def _elu(x, alpha):
    return jnp.where(x > 0, x, alpha * jnp.expm1(x))


def _softplus(x, beta, threshold):
    scaled = x * beta
    safe = jnp.where(scaled > threshold, 0.0, scaled)   # no overflow in the branch not taken
    return jnp.where(scaled > threshold, x, jnp.log1p(jnp.exp(safe)) / beta)


def _relu6(x):
    return jnp.clip(x, 0.0, 6.0)


_FUNCTIONS = {
    "identity": lambda x: x,
    "relu": lambda x: jnp.maximum(x, 0.0),
    "relu6": _relu6,
    "leaky_relu": lambda x, slope: jnp.where(x > 0, x, x * slope),
    "elu": _elu,
    "selu": lambda x: SELU_SCALE * _elu(x, SELU_ALPHA),
    "celu": lambda x, alpha: jnp.maximum(x, 0.0) + jnp.minimum(0.0, alpha * jnp.expm1(x / alpha)),
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0)))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi)
                                                     * (x + 0.044715 * x * x * x))),
    "silu": lambda x: x * jax.nn.sigmoid(x),
    "mish": lambda x: x * jnp.tanh(_softplus(x, 1.0, 20.0)),
    "softplus": _softplus,
    "hardtanh": lambda x, low, high: jnp.clip(x, low, high),
    "hardswish": lambda x: x * _relu6(x + 3.0) / 6.0,
    "hardsigmoid": lambda x: _relu6(x + 3.0) / 6.0,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "logsigmoid": jax.nn.log_sigmoid,
    "softsign": lambda x: x / (1.0 + jnp.abs(x)),
}


class Activation(NamedTuple):
    """An elementwise activation: a name from `NAMES` and its numeric arguments (all filled in).

    Build one with `activation(name, *args)`, which checks the name and fills in defaults, so that
    equal activations compare and hash equal. Calling it maps an array elementwise.
    """

    name: str
    args: tuple = ()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the activation elementwise. x: any shape; returns the same shape."""
        return _FUNCTIONS[self.name](x, *self.args)


def activation(name: str, *args: float) -> Activation:
    """The activation `name` with arguments `args` (missing trailing ones take torch's defaults).

    Args:
      name: one of `NAMES`, e.g. "leaky_relu".
      *args: its numeric arguments in torch's order, e.g. `activation("softplus", 2.0, 20.0)`.

    Returns:
      An `Activation` with every argument filled in, as floats.
    """
    if not isinstance(name, str) or name not in _SIGNATURES:
        raise ValueError(f"activation name must be one of {list(NAMES)}; got {name!r}")
    names, defaults = _SIGNATURES[name]
    if len(args) > len(names):
        raise ValueError(f"activation {name!r} takes at most {len(names)} arguments "
                         f"{names}; got {len(args)}: {args}")
    values = []
    for arg_name, value in zip(names, tuple(args) + defaults[len(args):]):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating,
                                                             np.integer)):
            raise TypeError(f"argument {arg_name} of activation {name!r} must be a number; "
                            f"got {value!r}")
        values.append(float(value))
    if name == "hardtanh" and not values[0] < values[1]:
        raise ValueError(f"hardtanh needs min_val < max_val; got {values[0]}, {values[1]}")
    if name in ("celu", "softplus") and values[0] == 0.0:
        raise ValueError(f"{name} needs a nonzero {names[0]}; got 0")
    return Activation(name, tuple(values))


def _checked(a) -> Activation:
    if a is None:
        return Activation("identity")
    if not isinstance(a, Activation):
        raise TypeError(f"activation must be an Activation (see activation()) or None; got "
                        f"{type(a).__name__}")
    return a


def is_monotone(a: Activation | None) -> bool:
    """Whether `a` is non-decreasing everywhere (all but gelu, gelu_tanh, silu, mish, hardswish).

    leaky_relu with a negative slope and elu/celu with a negative alpha are not, either.
    """
    a = _checked(a)
    if a.name in NON_MONOTONE:
        return False
    return not (a.name in ("leaky_relu", "elu", "celu") and a.args[0] < 0)


def default_range(a: Activation | None, pre_range: tuple[float, float] = (-10.0, 10.0)
                  ) -> tuple[float, float]:
    """The default output range of a layer followed by `a` (see the module docstring).

    Args:
      a: the activation, or None for none.
      pre_range: (low, high), the range assumed for the pre-activation values.

    Returns:
      (low, high) as floats.
    """
    a = _checked(a)
    low, high = (float(v) for v in pre_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"pre_range must be finite (low, high) with low < high; got {pre_range}")
    if a.name in DEEP_EI_RANGES:
        return DEEP_EI_RANGES[a.name]
    if is_monotone(a):
        ends = np.asarray(a(jnp.asarray([low, high], jnp.float32)))
        return float(ends[0]), float(ends[1])
    return _image(a, low, high)


def _image(a: Activation, low: float, high: float) -> tuple[float, float]:
    """(min, max) of `a` on [low, high]: a dense grid, then a finer one around its minimum."""
    grid = np.linspace(low, high, 4097)
    values = np.asarray(a(jnp.asarray(grid, jnp.float32)), np.float64)
    i = int(np.argmin(values))
    fine = np.linspace(grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)], 4097)
    fine_values = np.asarray(a(jnp.asarray(fine, jnp.float32)), np.float64)
    return (float(min(values.min(), fine_values.min())),
            float(max(values.max(), fine_values.max())))


# ---------------------------------------------------------------- pre-activation thresholds

_FLOAT64_MAX = float(np.finfo(np.float64).max)
_INT64_MIN = np.int64(np.iinfo(np.int64).min)


def threshold(a: Activation | None, levels, *, inclusive: bool = False) -> np.ndarray:
    """The pre-activation threshold of each output level of a non-decreasing activation.

    With `inclusive=False`, t is such that `a(z) < level  <=>  z < t`; with `inclusive=True`,
    `a(z) <= level  <=>  z <= t`. Where no finite t exists the answer is -inf (the event never
    happens: the level lies at or below the activation's infimum, e.g. relu and level 0 strictly)
    or +inf (it always happens: the level lies at or above the supremum, e.g. sigmoid and level 1,
    relu6 and level 6 inclusively). Flat regions are handled by the definitions: for relu6,
    `a(z) < 6 <=> z < 6`, `a(z) <= 0 <=> z <= 0`.

    identity, relu, sigmoid and tanh use their closed-form inverses. Every other monotone
    activation is inverted by bisection over the float64 numbers (at most 64 steps, on their
    ordered bit patterns) against `a` evaluated in float64: t is the exact boundary of the
    float64 function, where `a(z) >= level` first holds (strict) or `a(z) <= level` last holds
    (inclusive). Limits that the function approaches but never reaches (elu's -alpha,
    softsign's -1 and 1, softplus's 0, logsigmoid's 0) are treated as the mathematics says, not
    as float64 rounding says (float64 elu is exactly -1 below z = -37.4): a level at or beyond
    such a limit gets -inf or +inf. softplus's own threshold switch (torch's: x itself once
    beta x > threshold) makes it jump down by about exp(-threshold) / beta there; a level inside
    that jump gets one of the two crossing points, a difference of that size.

    Args:
      a: a monotone activation (`is_monotone(a)`), or None for the identity.
      levels: output levels, any shape (converted to float64).
      inclusive: the inclusive comparison (`<=`) instead of the strict one (`<`).

    Returns:
      float64 NumPy array of the thresholds, the shape of `levels`.
    """
    a = _checked(a)
    if not is_monotone(a):
        raise ValueError(f"threshold needs a non-decreasing activation; {a.name}{a.args} is not "
                         "monotone")
    levels = np.asarray(levels, np.float64)
    if a.name == "identity":
        return levels.copy()
    if a.name == "relu":
        # max(z, 0) < e is impossible for e <= 0; max(z, 0) <= e needs e >= 0 (then z <= e)
        never = (levels <= 0) if not inclusive else (levels < 0)
        return np.where(never, -np.inf, levels)
    if a.name in ("sigmoid", "tanh"):
        low, high = (0.0, 1.0) if a.name == "sigmoid" else (-1.0, 1.0)
        inside = (levels > low) & (levels < high)
        safe = np.where(inside, levels, (low + high) / 2)
        inverse = (np.log(safe) - np.log1p(-safe)) if a.name == "sigmoid" else np.arctanh(safe)
        return np.where(inside, inverse, np.where(levels <= low, -np.inf, np.inf))
    return _bisect(a, levels, inclusive)


@functools.partial(jax.jit, static_argnums=0)
def _jitted(a: Activation, z: jax.Array) -> jax.Array:
    return a(z)


def _float64(a: Activation, z: np.ndarray) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(_jitted(a, jnp.asarray(z, jnp.float64)), np.float64)


def _limits_not_reached(a: Activation) -> tuple[bool, bool]:
    """Whether a(-inf) and a(+inf), the float64 values at -+max, are limits that a never
    reaches at a finite point (elu's -alpha, softsign's -1 and 1, ...), as opposed to values it
    takes on a flat region (relu6's 0 and 6) or at no level a bin edge can have (leaky_relu's
    -1.8e306 and more)."""
    if a.name in ("relu6", "hardtanh", "hardsigmoid"):
        return False, False
    if a.name in ("leaky_relu", "elu", "celu"):
        return a.args[0] > 0, True      # a zero slope or alpha makes it relu
    return True, True                   # selu, softplus, logsigmoid, softsign


def _ordered_key(z: np.ndarray) -> np.ndarray:
    """float64 -> int64, order-preserving (-0.0 and 0.0 both to 0)."""
    bits = np.asarray(z, np.float64).view(np.int64)
    return np.where(bits >= 0, bits, _INT64_MIN - np.minimum(bits, -1))


def _from_key(key: np.ndarray) -> np.ndarray:
    bits = np.where(key >= 0, key, _INT64_MIN - np.minimum(key, -1))
    return np.asarray(bits, np.int64).view(np.float64)


def _bisect(a: Activation, levels: np.ndarray, inclusive: bool) -> np.ndarray:
    """`threshold` for any non-decreasing `a`, by bisection on the ordered float64 keys."""
    def above(values):   # the event's complement: a(z) >= e (strict) or a(z) > e (inclusive)
        return values > levels if inclusive else values >= levels

    ends = _float64(a, np.array([-_FLOAT64_MAX, _FLOAT64_MAX]))
    open_low, open_high = _limits_not_reached(a)
    low = np.broadcast_to(_ordered_key(np.float64(-_FLOAT64_MAX)), levels.shape).copy()
    high = np.broadcast_to(_ordered_key(np.float64(_FLOAT64_MAX)), levels.shape).copy()
    while np.any(high > low + 1):   # invariant: not above at low, above at high
        middle = (low >> 1) + (high >> 1) + (low & high & 1)   # floor of the mean, no overflow
        up = above(_float64(a, _from_key(middle)))
        high, low = np.where(up, middle, high), np.where(up, low, middle)
    found = _from_key(low if inclusive else high)
    never = above(ends[0]) | (open_low & (levels <= ends[0]))
    always = ~above(ends[1]) | (open_high & (levels >= ends[1]))
    return np.where(never, -np.inf, np.where(always, np.inf, found))
