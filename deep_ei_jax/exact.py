"""Exact (infinite-sample) binned EI_parts and sensitivity of an affine layer y = act(x @ w + b).

The sampled measures estimate I(x_A; y_B) from histograms; here the same binned quantity is
computed from the distribution itself, for a layer whose pre-activation is affine in the inputs
and whose activation is elementwise and monotone (every non-decreasing activation of
`deep_ei_jax.activations`: identity, relu, sigmoid, tanh, leaky_relu, elu, selu, celu, softplus,
relu6, hardtanh, hardsigmoid, logsigmoid, softsign).

Which layers. One affine map z = x @ w + b and the activation: a Dense layer; a Conv2d on its
receptive field; a chain of Dense, Conv2d, AvgPool2d, Flatten and `Function` layers with identity
activations between them, where a Function counts when its fn is affine in its input
(`deep_ei_jax.affine` walks its jaxpr: a translated torch span with an eval-mode BatchNorm folded
in, a residual x + x @ w + b, one restricted output position of a conv span). `affine_map`
reads (w, b) off the chain's images of 0 and of the basis vectors, in float64. Anything else
raises NotImplementedError saying why (the primitive that makes a span nonlinear; for a
non-monotone activation such as gelu, that an output bin is then the image of several
pre-activation intervals, so a table cell is not the length ratio of one interval).

The target. Inputs are independent and uniform on `in_range`; `x_A` is binned into `in_bins`
equal-width bins and `y_B` into `out_bins` equal-width bins over `out_range` (top edge inclusive).
Values of `y_B` outside `out_range` are dropped per pair, as the sampled measures do, so the limit
of their plug-in estimates (and what these functions return) is the mutual information, in bits, of
the joint distribution of (bin of x_A, bin of y_B) *conditioned on y_B in out_range*. With
`return_coverage=True` the probability of that event is returned too (1 - the expected dropped
fraction). `policy="clip"` instead counts them in the end bins, as the sampled measures' clip.

EI_parts, pair (A, B). The pre-activation is z = w_AB x_A + s with s = b_B + sum_{k != A} w_kB x_k,
a shifted sum of independent uniforms of widths abs(w_kB) (in_high - in_low). Because act is
monotone, y_B < e  <=>  z < t(e) for a threshold t(e) = act^-1(e) (+-inf where e lies beyond the
activation's range; ReLU maps all z <= 0 to 0, so the bin holding 0 takes all that mass; flat
regions and the inclusive top edge as `activations.threshold` defines them). Hence

    P(x_A in bin i, y_B < e) = (1 / D) * integral over bin i of F_s(t(e) - w x) dx
                             = (G_s(t - w x_i) - G_s(t - w x_{i+1})) / (w D),

with D the input range's width, F_s the CDF of s and G_s(t) = integral_{-inf}^t F_s = E[(t - s)_+].
The integral over the input bin is done in closed form, so there is no quadrature error in x; the
only approximation is in the distribution of s.

The distribution of s: why a grid and an FFT. The density of a sum of uniforms of different widths
is a piecewise polynomial whose closed form has 2^(n-1) terms of alternating sign (useless past a
handful of inputs), and inverting the characteristic function pointwise converges slowly when few
inputs are summed. Instead each uniform is put on a lattice of step `delta` by linear ("hat")
splitting: a point x between nodes m and m+1 gives weight (1 - u) to m and u to m + 1. This keeps
every mean exact, is exact for point masses (zero weights), and adds at most delta^2/4 of variance
per input. The lattice distributions are convolved by FFT (the characteristic functions of all
inputs but A multiplied, for every A at once, with prefix and suffix products), and the lattice
law of s is read back as a piecewise-linear CDF (each node's mass spread over its cell), whose
integral G_s is piecewise quadratic and evaluated exactly. Every error term is second order in
`delta`: halving the grid step divides the error by about 4 (tests check the convergence).

One lattice serves each output neuron: its step is delta_B = H_B / L with H_B = D sum_k abs(w_kB)
the width of the support of z_B and L = grid_points - n_in - 2 (the margin keeps the circular
convolution from wrapping). `grid_step` bounds delta_B from above for every output and picks
grid_points, the FFT length (a power of two), from the weights. Cost per output neuron: 2 n_in
real FFTs of length grid_points, memory O(n_in * grid_points).

Sensitivity needs no grid: with only A noised and the other inputs 0, y_B = act(w_AB x_A + b_B)
is a deterministic monotone map, so p(i, j) is the length of input bin i mapped into output bin j,
divided by D, exactly.

Precision. Cell probabilities are differences of differences of G_s; float32 would lose them to
cancellation, so the computation runs in float64 in a scoped `jax.enable_x64(True)` (the caller's
x64 setting is untouched) and returns float64 arrays.

Differentiability. Everything is a composition of smooth (almost everywhere) JAX operations of the
weights, the bias and the ranges: `jax.grad` of EI_parts with respect to `w` and `b` works (the
grid size must then be static: pass `grid_points`, e.g. from `exact_grid_points`).
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, activations, affine, information
from .layers import (AvgPool2d, Chain, Conv2d, Dense, Flatten, Function, apply, layers_out_shape,
                     param_shapes)

# Every monotone activation of `deep_ei_jax.activations` (by name: torch's default arguments;
# or as an `activations.Activation` object with its own).
EXACT_ACTIVATIONS = tuple(name for name in activations.NAMES
                          if name not in activations.NON_MONOTONE)
DEFAULT_GRID_STEP = 1e-3
_MEMORY_BUDGET = 256 * 2 ** 20  # bytes of per-column temporaries held at once
_MIN_GRID_POINTS = 64
# Below this |w| * (input bin width), relative to the pre-activation's scale, the bin integral of
# the CDF uses the midpoint rule instead of a difference of G values (which would cancel).
_SMALL_SPAN = 1e-7

_SAMPLING_HINT = ("use the sampling measures instead (deep_ei_jax.pure.ei_parts, ei_parts_matrix, "
                  "sensitivity, sensitivity_matrix, ei, eis_between_groups)")


# ---------------------------------------------------------------- shared pieces (float64)

def _thresholds(activation: activations.Activation, edges: np.ndarray) -> np.ndarray:
    """Pre-activation thresholds of the output bin edges (NumPy float64, on the host): y < e_j <=>
    z < t_j for j < B, and y <= e_B <=> z <= t_B for the inclusive top edge; +-inf where the edge
    lies beyond the activation's range (`activations.threshold`: closed forms for identity,
    relu, sigmoid and tanh, float64 bisection for the other monotone activations, flat regions
    such as relu's z <= 0 and relu6's z >= 6 included). Shape [B + 1] -> same.

    They depend on the binning only, not on the weights, so the kernels take them as data and
    one compiled program serves every activation.
    """
    strict = activations.threshold(activation, edges[:-1])
    top = activations.threshold(activation, edges[-1:], inclusive=True)
    return np.concatenate([strict, top])


def _mutual_information_bits(p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(MI in bits of p [..., Bx, By] normalised to its total, that total); rounding below 0 is
    cut off first. An empty table has MI 0."""
    p = jnp.maximum(p, 0.0)
    return information.mutual_information(p), p.sum(axis=(-2, -1))


def _edges(low: float, high: float, bins: int) -> np.ndarray:
    """bins + 1 equal-width edges (NumPy float64; input and output edges share the formula, so an
    identity layer's edges coincide exactly)."""
    return low + (high - low) * (np.arange(bins + 1, dtype=np.float64) / bins)


def _hat_masses(width_cells: jax.Array, grid_points: int) -> jax.Array:
    """Lattice masses of U[0, a] (a in units of the lattice step) under linear splitting.

    Node j gets (1/a) * integral_0^a hat(u - j) du = (T(a - j) - T(-j)) / a, with T the CDF of the
    triangular density on [-1, 1]; for a <= 1 that is exactly (1 - a/2, a/2) on nodes 0 and 1,
    which also covers a = 0 (a point mass). Shape [n] -> [n, grid_points].
    """
    a = width_cells[:, None]
    j = jnp.arange(grid_points, dtype=jnp.float64)[None, :]

    def tri_cdf(v):
        v = jnp.clip(v, -1.0, 1.0)
        return jnp.where(v <= 0, 0.5 * (1 + v) ** 2, 1 - 0.5 * (1 - v) ** 2)

    wide = a > 1
    safe_a = jnp.where(wide, a, 1.0)
    general = (tri_cdf(safe_a - j) - tri_cdf(-j)) / safe_a
    narrow = jnp.where(j == 0, 1 - a / 2, jnp.where(j == 1, a / 2, 0.0))
    return jnp.where(wide, general, narrow)


def _leave_one_out(spectra: jax.Array) -> jax.Array:
    """prod_{k != A} spectra[k] for every A, by exclusive prefix and suffix products. [n, F]."""
    ones = jnp.ones_like(spectra[:1])
    prefix = jnp.concatenate([ones, jnp.cumprod(spectra[:-1], axis=0)], axis=0)
    suffix = jnp.concatenate([jnp.cumprod(spectra[::-1][:-1], axis=0)[::-1], ones], axis=0)
    return prefix * suffix


def _pair_table(masses, s_low, delta, degenerate, weight, x_edges, thresholds, top, scale):
    """The joint table p(i, j) = P(x_A in bin i, y_B in bin j) of one pair.

    Args:
      masses: lattice masses of s (nodes s_low + m * delta), [N].
      s_low, delta: the lattice's origin and step.
      degenerate: whether s is a point mass at s_low (then its CDF is used exactly).
      weight: w_AB.
      x_edges: input bin edges [Bx + 1]; thresholds: pre-activation output edges [By + 1] (finite);
      top: [By + 1] bool, the inclusive top edge; scale: a bound on |z| (for the small-w switch).

    Returns:
      [Bx, By] probabilities (unnormalised: they sum to P(y_B in range)).
    """
    n = masses.shape[0]
    cdf = jnp.cumsum(masses)
    cdf_before = jnp.concatenate([jnp.zeros(1), cdf])              # F at the start of cell m
    mass_pad = jnp.concatenate([masses, jnp.zeros(1)])
    g_before = jnp.concatenate([jnp.zeros(1), jnp.cumsum(cdf - masses / 2)])  # G/delta there

    def locate(t):
        v = (t - s_low) / delta + 0.5
        m = jnp.clip(jnp.floor(v), 0, n).astype(jnp.int32)
        return v, m, v - m

    def cdf_at(t):
        v, m, r = locate(t)
        smooth = jnp.where(v > 0, cdf_before[m] + r * mass_pad[m], 0.0)
        step = jnp.where(top, t >= s_low, t > s_low).astype(t.dtype)
        return jnp.where(degenerate, step, smooth)

    def integral_at(t):
        v, m, r = locate(t)
        smooth = jnp.where(v > 0, delta * (g_before[m] + r * cdf_before[m] + 0.5 * r * r
                                           * mass_pad[m]), 0.0)
        return jnp.where(degenerate, jnp.maximum(t - s_low, 0.0), smooth)

    width = x_edges[-1] - x_edges[0]
    small = jnp.abs(weight) * (x_edges[1] - x_edges[0]) < _SMALL_SPAN * scale
    safe_weight = jnp.where(small, 1.0, weight)
    g = integral_at(thresholds[None, :] - safe_weight * x_edges[:, None])     # [Bx + 1, By + 1]
    below_by_integral = (g[:-1] - g[1:]) / (safe_weight * width)
    middle = (x_edges[:-1] + x_edges[1:]) / 2
    below_by_midpoint = (cdf_at(thresholds[None, :] - weight * middle[:, None])
                         * ((x_edges[1:] - x_edges[:-1]) / width)[:, None])
    below = jnp.where(small, below_by_midpoint, below_by_integral)   # P(x in bin i, z < t_j)
    return below[:, 1:] - below[:, :-1]


@functools.partial(jax.jit, static_argnames=("grid_points", "column_batch", "tables"))
def _ei_parts_kernel(w, b, x_edges, thresholds, *, grid_points, column_batch, tables=False):
    """EI_parts terms and coverage, [n_in, n_out] each (with `tables`, the joint probability
    tables [n_in, n_out, in_bins, out_bins] instead of the terms).

    Args: w [n_in, n_out]; b [n_out]; x_edges [in_bins + 1]; thresholds [n_out, out_bins + 1]
    (pre-activation output edges, may be +-inf).
    """
    n_in = w.shape[0]
    in_low, in_high = x_edges[0], x_edges[-1]
    width = in_high - in_low
    lattice = grid_points - n_in - 2
    others = 1.0 - jnp.eye(n_in, dtype=w.dtype)
    top = jnp.arange(thresholds.shape[-1]) == thresholds.shape[-1] - 1

    def column(args):
        w_col, bias, column_thresholds = args
        spans = jnp.abs(w_col) * width                                  # widths of w_k x_k
        lows = jnp.minimum(w_col * in_low, w_col * in_high)
        total = spans.sum()
        delta = jnp.where(total > 0, total, width) / lattice
        spectra = jnp.fft.rfft(_hat_masses(spans / delta, grid_points), axis=-1)
        s_masses = jnp.fft.irfft(_leave_one_out(spectra), n=grid_points, axis=-1)   # [n_in, N]
        s_lows = bias + lows.sum() - lows
        degenerate = (others @ spans) == 0
        # |z| < scale for every input: thresholds beyond it are clipped to it (F = 0 or 1 there)
        scale = jnp.abs(bias) + jnp.maximum(jnp.abs(in_low), jnp.abs(in_high)) * jnp.abs(
            w_col).sum() + 1.0
        clipped = jnp.clip(column_thresholds, -scale, scale)
        p = jax.vmap(_pair_table, in_axes=(0, 0, None, 0, 0, None, None, None, None))(
            s_masses, s_lows, delta, degenerate, w_col, x_edges, clipped, top, scale)
        if tables:
            p = jnp.maximum(p, 0.0)  # rounding leaves -1e-17 where a cell is empty
            return p, p.sum(axis=(-2, -1))
        return _mutual_information_bits(p)

    columns = (w.T, b, thresholds)
    if column_batch >= w.shape[1]:   # all at once: a plain vmap compiles faster than a 1-step scan
        value, mass = jax.vmap(column)(columns)
    else:
        value, mass = jax.lax.map(column, columns, batch_size=column_batch)
    return jnp.swapaxes(value, 0, 1), mass.T


@functools.partial(jax.jit, static_argnames=("tables",))
def _sensitivity_kernel(w, b, x_edges, thresholds, *, tables=False):
    """Sensitivity terms (or tables) and coverage, as `_ei_parts_kernel`; one input at a time."""
    in_low, in_high = x_edges[0], x_edges[-1]
    width = in_high - in_low
    top = jnp.arange(thresholds.shape[-1]) == thresholds.shape[-1] - 1

    def row(w_row):
        scale = jnp.abs(b) + jnp.maximum(jnp.abs(in_low), jnp.abs(in_high)) * jnp.abs(w_row) + 1
        t = jnp.clip(thresholds, -scale[:, None], scale[:, None])
        zero = w_row == 0
        safe_w = jnp.where(zero, 1.0, w_row)
        # z = w x + b < t  <=>  x < xi (w > 0) or x > xi (w < 0), xi = (t - b) / w
        xi = ((t - b[:, None]) / safe_w[:, None])[:, None, :]          # [m, 1, By + 1]
        lo, hi = x_edges[None, :-1, None], x_edges[None, 1:, None]
        clipped = jnp.clip(xi, lo, hi)
        below = jnp.where((w_row > 0)[:, None, None], clipped - lo, hi - clipped)
        constant = jnp.where(top, b[:, None] <= t, b[:, None] < t)[:, None, :] * (hi - lo)
        below = jnp.where(zero[:, None, None], constant, below) / width   # [m, Bx, By + 1]
        p = jnp.maximum(below[..., 1:] - below[..., :-1], 0.0)
        return (p, p.sum(axis=(-2, -1))) if tables else _mutual_information_bits(p)

    return jax.lax.map(row, w)


# Reverse-mode differentiation replays the kernel's transpose after the public function has
# returned, i.e. outside its `enable_x64` scope, where float64 temporaries would be demoted. The
# custom VJP runs both the forward pass and its pullback inside the scope.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _call_x64(kernel, static, *args):
    with jax.enable_x64(True):
        return kernel(*args, **dict(static))


def _call_x64_fwd(kernel, static, *args):
    with jax.enable_x64(True):
        out, pullback = jax.vjp(functools.partial(kernel, **dict(static)), *args)
    return out, pullback


def _call_x64_bwd(kernel, static, pullback, cotangent):
    with jax.enable_x64(True):
        cotangent = jax.tree_util.tree_map(lambda c: jnp.asarray(c, jnp.float64), cotangent)
        return pullback(cotangent)


_call_x64.defvjp(_call_x64_fwd, _call_x64_bwd)


# ---------------------------------------------------------------- argument handling

def _check_activation(activation) -> activations.Activation:
    """A name or an `activations.Activation` -> the Activation, if monotone; else a clear error."""
    if isinstance(activation, str):
        if activation not in activations.NAMES:
            raise ValueError(f"activation must be one of {EXACT_ACTIVATIONS} (or an "
                             f"activations.Activation); got {activation!r}")
        activation = activations.activation(activation)
    elif not isinstance(activation, activations.Activation):
        if callable(activation):
            raise NotImplementedError(
                "exact measures need a named monotone elementwise activation "
                f"{EXACT_ACTIVATIONS} (or an activations.Activation); got the callable "
                f"{activation!r}, whose inverse is unknown; " + _SAMPLING_HINT)
        raise TypeError(f"activation must be one of {EXACT_ACTIVATIONS} or an "
                        f"activations.Activation; got {activation!r}")
    if not activations.is_monotone(activation):
        raise NotImplementedError(
            f"the activation {activation.name}{activation.args or ''} is not monotone: an output "
            "bin is then the image of several pre-activation intervals, so the pairwise table is "
            "not the length ratio of one interval (nor one difference of the other inputs' "
            "distribution), which is what the exact method computes; exact measures need a "
            f"monotone activation {EXACT_ACTIVATIONS}; " + _SAMPLING_HINT)
    return activation


def _check_layer(w, b):
    """w -> float64 [n_in, n_out], b -> float64 [n_out] (zeros if None). Call under x64."""
    if not hasattr(w, "shape"):
        try:
            w = np.asarray(w, np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"w must be an array of shape [n_in, n_out]; got {type(w).__name__}") \
                from None
    if len(w.shape) != 2 or 0 in w.shape:
        raise ValueError(f"w must have shape [n_in, n_out] with n_in, n_out >= 1; got shape "
                         f"{tuple(w.shape)}")
    w = jnp.asarray(w, jnp.float64)
    if b is None:
        return w, jnp.zeros(w.shape[1], jnp.float64)
    b = jnp.asarray(b, jnp.float64)
    if b.shape != (w.shape[1],):
        raise ValueError(f"b must have shape [n_out] = ({w.shape[1]},) to match w of shape "
                         f"{tuple(w.shape)}; got {tuple(b.shape)}")
    return w, b


def _check_out_range(out_range):
    if isinstance(out_range, str):
        raise NotImplementedError(
            f"out_range={out_range!r}: a dynamic range is read off sampled outputs and has no "
            "infinite-sample counterpart; pass (low, high), or " + _SAMPLING_HINT)
    return _checks.check_range("out_range", out_range)


def exact_grid_points(w, *, in_range=(0.0, 1.0), grid_step: float = DEFAULT_GRID_STEP) -> int:
    """The FFT length that gives every output neuron's lattice a step of at most `grid_step`.

    Needs concrete weights. Use it to fix `grid_points` before `jax.grad` or `jax.jit`.

    Args:
      w: weights [n_in, n_out] (concrete).
      in_range: (low, high) of the uniform inputs.
      grid_step: the largest allowed lattice step, in pre-activation units.

    Returns:
      A power of two >= max_B D * sum_k abs(w_kB) / grid_step + n_in + 2 (and >= 64).
    """
    if isinstance(grid_step, bool) or not isinstance(grid_step, numbers.Real) or \
            not (math.isfinite(grid_step) and grid_step > 0):
        raise ValueError(f"grid_step must be a positive number; got {grid_step!r}")
    low, high = _checks.check_range("in_range", in_range)
    try:
        weights = np.asarray(w, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        raise ValueError(
            "grid_step sizes the grid from the weights, but w is traced here (inside jax.grad, "
            "jit or vmap); pass grid_points= instead, e.g. grid_points=exact_grid_points(w_value, "
            "in_range=..., grid_step=...) computed outside the transformation") from None
    if weights.ndim != 2:
        raise ValueError(f"w must have shape [n_in, n_out]; got shape {weights.shape}")
    support = (high - low) * float(np.abs(weights).sum(axis=0).max(initial=0.0))
    if not math.isfinite(support):
        raise ValueError("w must be finite")
    needed = math.ceil(support / grid_step) + weights.shape[0] + 2
    return max(_MIN_GRID_POINTS, 1 << max(0, needed - 1).bit_length())


def _resolve_grid(w, n_in, in_range, grid_step, grid_points):
    if grid_points is None:
        return exact_grid_points(w, in_range=in_range, grid_step=grid_step)
    if isinstance(grid_points, bool) or not isinstance(grid_points, (numbers.Integral, np.integer)):
        raise TypeError(f"grid_points must be an integer; got {grid_points!r}")
    if grid_points < 2 * (n_in + 2) or grid_points < _MIN_GRID_POINTS:
        raise ValueError(f"grid_points must be >= max({_MIN_GRID_POINTS}, 2 * (n_in + 2)) = "
                         f"{max(_MIN_GRID_POINTS, 2 * (n_in + 2))} for n_in = {n_in}; got "
                         f"{grid_points}")
    return int(grid_points)


def _common(w, b, activation, in_range, out_range, in_bins, out_bins, policy):
    """Checked (w, b) in float64 and the binning as arrays: (w, b, x_edges, thresholds)."""
    activation = _check_activation(activation)
    _checks.check_choice("policy", policy, ("drop", "clip"))
    in_low, in_high = _checks.check_range("in_range", in_range)
    out_low, out_high = _check_out_range(out_range)
    in_bins = _checks.check_bins("in_bins", in_bins)
    out_bins = _checks.check_bins("out_bins", out_bins)
    w, b = _check_layer(w, b)
    thresholds = _thresholds(activation, _edges(out_low, out_high, out_bins))
    if policy == "clip":  # everything below the range in bin 0, above it in the last bin
        thresholds = np.concatenate([[-np.inf], thresholds[1:-1], [np.inf]])
    thresholds = np.broadcast_to(thresholds, (w.shape[1], out_bins + 1))
    return w, b, jnp.asarray(_edges(in_low, in_high, in_bins)), jnp.asarray(thresholds)


# ---------------------------------------------------------------- public functions

def exact_ei_parts_matrix(w, b=None, *, activation, in_range=(0.0, 1.0),
                          out_range=(0.0, 1.0), in_bins: int = 64, out_bins: int = 64,
                          grid_step: float = DEFAULT_GRID_STEP, grid_points: int | None = None,
                          policy: str = "drop", return_coverage: bool = False):
    """The infinite-sample EI_parts matrix of y = act(x @ w + b) under uniform input noise.

    Entry [A, B] is I(bin of x_A; bin of y_B) in bits for the joint distribution conditioned on
    y_B in out_range (the limit of the sampled plug-in estimate with out-of-range values dropped).

    Args:
      w: weights [n_in, n_out] (a JAX or NumPy array; differentiable).
      b: bias [n_out] or None.
      activation: a monotone activation: a name from `EXACT_ACTIVATIONS` ('identity', 'sigmoid',
        'tanh', 'relu', 'leaky_relu', 'elu', 'softplus', ... with torch's default arguments) or
        an `activations.Activation` (e.g. `activations.activation('leaky_relu', 0.1)`).
      in_range: (low, high) of the uniform inputs and of the input bins.
      out_range: (low, high) of the output bins (top edge inclusive).
      in_bins, out_bins: numbers of equal-width bins.
      grid_step: the largest lattice step for the distribution of the other inputs' sum
        (pre-activation units); errors shrink as grid_step^2. Needs concrete `w`.
      grid_points: the FFT length, instead of grid_step (required under jax.grad / jit / vmap).
      policy: "drop" (out-of-range outputs left out, the joint conditioned on y_B in range) or
        "clip" (they count in the end bins), as in the sampling measures.
      return_coverage: also return P(y_B in out_range), [n_in, n_out] (equal along A up to
        discretisation; 1 under "clip").

    Returns:
      float64 [n_in, n_out] bits, or (that, coverage) with return_coverage.
    """
    mi, coverage = _ei_parts(w, b, activation, in_range, out_range, in_bins, out_bins,
                             grid_step, grid_points, policy, tables=False)
    return (mi, coverage) if return_coverage else mi


def exact_ei_parts_tables(w, b=None, *, activation, in_range=(0.0, 1.0),
                          out_range=(0.0, 1.0), in_bins: int = 64, out_bins: int = 64,
                          grid_step: float = DEFAULT_GRID_STEP, grid_points: int | None = None,
                          policy: str = "drop"):
    """The joint probability tables behind `exact_ei_parts_matrix` (same arguments).

    Returns:
      float64 [n_in, n_out, in_bins, out_bins]: entry [A, B, i, j] = P(x_A in bin i, y_B in bin j)
      under the all-inputs intervention, *not* conditioned on y_B in range (each table sums to
      P(y_B in out_range)). For expected estimator bias, power of tests, and plots.
    """
    tables, _ = _ei_parts(w, b, activation, in_range, out_range, in_bins, out_bins, grid_step,
                          grid_points, policy, tables=True)
    return tables


def _ei_parts(w, b, activation, in_range, out_range, in_bins, out_bins, grid_step, grid_points,
              policy, tables):
    with jax.enable_x64(True):
        w, b, x_edges, thresholds = _common(w, b, activation, in_range, out_range, in_bins,
                                            out_bins, policy)
        n_in, n_out = w.shape
        grid_points = _resolve_grid(w, n_in, in_range, grid_step, grid_points)
        per_column = n_in * grid_points * 64 + 1
        column_batch = int(max(1, min(n_out, _MEMORY_BUDGET // per_column)))
        static = (("column_batch", column_batch), ("grid_points", grid_points), ("tables", tables))
        return _call_x64(_ei_parts_kernel, static, w, b, x_edges, thresholds)


def exact_ei_parts(w, b=None, **kwargs):
    """EI_parts = the sum of `exact_ei_parts_matrix` (same arguments); a float64 scalar array
    (with return_coverage, (that, coverage [n_in, n_out]))."""
    return _summed(exact_ei_parts_matrix, w, b, kwargs)


def _summed(matrix_fn, w, b, kwargs):
    with jax.enable_x64(True):  # the sum in float64 too
        if kwargs.get("return_coverage"):
            mi, coverage = matrix_fn(w, b, **kwargs)
            return mi.sum(), coverage
        return matrix_fn(w, b, **kwargs).sum()


def exact_sensitivity_matrix(w, b=None, *, activation, in_range=(0.0, 1.0),
                             out_range=(0.0, 1.0), in_bins: int = 64, out_bins: int = 64,
                             policy: str = "drop", return_coverage: bool = False):
    """The exact sensitivity matrix: I(bin of x_A; bin of y_B) with x_A uniform on in_range and
    every other input 0, so y_B = act(w_AB x_A + b_B). No grid: each cell is a length ratio.

    Args and returns as `exact_ei_parts_matrix` (without grid arguments).
    """
    mi, coverage = _sensitivity(w, b, activation, in_range, out_range, in_bins, out_bins,
                                policy, tables=False)
    return (mi, coverage) if return_coverage else mi


def exact_sensitivity_tables(w, b=None, *, activation, in_range=(0.0, 1.0),
                             out_range=(0.0, 1.0), in_bins: int = 64, out_bins: int = 64,
                             policy: str = "drop"):
    """The joint probability tables behind `exact_sensitivity_matrix`: float64
    [n_in, n_out, in_bins, out_bins], entry [A, B, i, j] = P(x_A in bin i, y_B in bin j) with only
    A noised (unconditioned: each table sums to P(y_B in out_range))."""
    tables, _ = _sensitivity(w, b, activation, in_range, out_range, in_bins, out_bins, policy,
                             tables=True)
    return tables


def _sensitivity(w, b, activation, in_range, out_range, in_bins, out_bins, policy, tables):
    with jax.enable_x64(True):
        w, b, x_edges, thresholds = _common(w, b, activation, in_range, out_range, in_bins,
                                            out_bins, policy)
        return _call_x64(_sensitivity_kernel, (("tables", tables),), w, b, x_edges, thresholds)


def exact_sensitivity(w, b=None, **kwargs):
    """Sensitivity = the sum of `exact_sensitivity_matrix` (same arguments)."""
    return _summed(exact_sensitivity_matrix, w, b, kwargs)


# ---------------------------------------------------------------- chains

EXACT_MEASURES = ("ei_parts", "ei_parts_matrix", "sensitivity", "sensitivity_matrix")
_SAMPLED_ONLY = ("ei", "vector_ei", "ei_and_ei_parts", "groups", "eis_between_groups",
                 "degeneracy")


# The span's affine map is read off its images of the basis vectors, in float64.
BASIS_LIMIT = 2 ** 30       # bytes: w [n_in, n_out] in float64 larger than this is refused
BASIS_BATCH_BYTES = 256 * 2 ** 20   # bytes of one batch of basis evaluations (upper bound)


def affine_map(chain: Chain, params) -> tuple[jax.Array, jax.Array]:
    """(w [n_in, n_out], b [n_out]) of a chain that is affine before its last activation, over
    flattened inputs and outputs.

    Affine layers: Dense, Conv2d, AvgPool2d, Flatten, and `Function` layers whose fn is affine
    in its input (`deep_ei_jax.affine`: a translated torch span with an eval-mode BatchNorm, a
    residual x + x @ w + b, a `positions.Restricted` conv position, ...), with identity
    activations between them. The map comes back in float64 (as given for one Dense layer, whose
    b may then be None), read off the chain's images of 0 and of the n_in basis vectors,
    evaluated in float64 with the params cast to float64.

    Raises:
      NotImplementedError: a layer is not affine (the message says why: the layer type, the
        activation inside the span, or the primitive that makes a Function nonlinear).
      ValueError: w would take more than `BASIS_LIMIT` bytes.
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a deep_ei_jax Chain; got {type(chain).__name__}")
    if len(chain.layers) == 0:
        raise ValueError("chain must contain at least one layer")
    _check_affine_layers(chain, params)
    if len(chain.layers) == 1 and isinstance(chain.layers[0], Dense):
        return params[0]["w"], params[0].get("b")
    with jax.enable_x64(True):
        return _affine_by_basis(chain, jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, jnp.float64), tuple(params)))


def _is_identity(activation) -> bool:
    if isinstance(activation, activations.Activation):
        return activation.name == "identity"
    return isinstance(activation, str) and activation == "identity"


def _check_affine_layers(chain: Chain, params):
    """Raises NotImplementedError, saying why, unless every layer is affine and every
    activation but the last is the identity."""
    for position, spec in enumerate(chain.layers):
        if not isinstance(spec, (Dense, Conv2d, AvgPool2d, Flatten, Function)):
            raise NotImplementedError(
                f"layer {position} is {type(spec).__name__}, which is not affine (exact measures "
                "support Dense, Conv2d, AvgPool2d, Flatten and affine Function layers, nonlinear "
                "only in the last activation); " + _SAMPLING_HINT)
        if position < len(chain.layers) - 1 and not _is_identity(spec.activation):
            raise NotImplementedError(
                f"layer {position} ({type(spec).__name__}) is followed by the activation "
                f"{spec.activation!r} inside the span: the pairwise terms then depend on a "
                "nonlinear function of many inputs, not on one sum of uniforms; exact measures "
                "cover one affine layer (or an affine span) and its last activation; "
                + _SAMPLING_HINT)
        if isinstance(spec, Function):
            found = _function_affinity(chain, params, position)
            if found.reason is not None:
                raise NotImplementedError(
                    f"layer {position}, the Function layer {spec.name!r}, is not affine in its "
                    f"input: {found.reason}; the exact method needs an affine span (linear "
                    "maps, convolutions, eval-mode normalization with fixed statistics, sums, "
                    "reshapes) followed by a named monotone activation; " + _SAMPLING_HINT)
            if found.narrowed is not None:
                warnings.warn(
                    f"layer {position}, the Function layer {spec.name!r}: {found.narrowed}; its "
                    "affine map, read off in float64, carries that type's rounding",
                    RuntimeWarning, stacklevel=4)


def _function_affinity(chain: Chain, params, position: int) -> affine.Affinity:
    """`affine.affinity` of the Function layer at `position`, traced in float64 (cached by the
    fn, the params' shapes and the input shape when the fn hashes: a sweep traces it once)."""
    spec = chain.layers[position]
    in_shape = layers_out_shape(tuple(chain.layers[:position]), param_shapes(params[:position]),
                                tuple(chain.in_shape))
    shapes = param_shapes(params[position:position + 1])[0]
    try:
        hash(spec.fn)
        cached = True
    except TypeError:
        cached = False
    try:
        if cached:
            return _cached_affinity(spec.fn, shapes, in_shape)
        return affine.affinity(spec.fn, params[position], in_shape, dtype=jnp.float64)
    except (TypeError, ValueError) as error:
        raise NotImplementedError(
            f"layer {position}, the Function layer {spec.name!r}, could not be traced in float64, "
            f"which the exact method needs to read off its affine map ({type(error).__name__}: "
            f"{error}); " + _SAMPLING_HINT) from error


@functools.lru_cache(maxsize=256)
def _cached_affinity(fn, shapes: tuple, in_shape: tuple) -> affine.Affinity:
    params = {name: jax.ShapeDtypeStruct(shape, jnp.float64) for name, shape in shapes}
    return affine.affinity(fn, params, in_shape, dtype=jnp.float64)


@functools.partial(jax.jit, static_argnames=("chain",))
def _images(chain: Chain, params, x):
    """The chain (identity activations) on flat inputs x [k, n_in] -> flat outputs [k, n_out]."""
    out = apply(chain, params, x.reshape((x.shape[0],) + tuple(chain.in_shape)))
    return out.reshape(x.shape[0], -1)


def _affine_by_basis(chain: Chain, params):
    """The affine map's weights as the images of the basis vectors minus the image of 0, in
    batches of basis vectors small enough for `BASIS_BATCH_BYTES`. Call under x64."""
    n_in = math.prod(chain.in_shape)
    identity_chain = Chain(layers=tuple(spec._replace(activation="identity")
                                        for spec in chain.layers), in_shape=tuple(chain.in_shape))
    n_out = math.prod(layers_out_shape(identity_chain.layers, param_shapes(params),
                                       identity_chain.in_shape))
    if 8 * n_in * n_out > BASIS_LIMIT:
        raise ValueError(
            f"the exact method needs the span's affine map as a float64 [n_in, n_out] = "
            f"[{n_in}, {n_out}] matrix, {8 * n_in * n_out / 2 ** 30:.1f} GiB, more than its "
            f"limit of {BASIS_LIMIT / 2 ** 30:.0f} GiB; measure one output position "
            "(deep_ei_jax.positions.restrict) or use sampling: " + _SAMPLING_HINT)
    per_sample = affine.traced_bytes_per_sample(
        lambda p, x: apply(identity_chain, p, x), params, identity_chain.in_shape)
    batch = int(min(n_in, max(1, BASIS_BATCH_BYTES // per_sample)))
    bias = _images(identity_chain, params, jnp.zeros((1, n_in)))[0]
    rows = []
    for first in range(0, n_in, batch):
        # a full batch every time (one compiled program); rows past n_in are dropped
        index = jnp.minimum(first + jnp.arange(batch), n_in - 1)
        basis = jax.nn.one_hot(index, n_in, dtype=jnp.float64)
        rows.append(_images(identity_chain, params, basis)[:min(batch, n_in - first)])
    weights = jnp.concatenate(rows, axis=0) - bias[None, :]
    return weights, bias


def exact_for_chain(chain: Chain, params, *, measure: str = "ei_parts", activation=None,
                    in_range=(0.0, 1.0), out_range=(0.0, 1.0), in_bins: int = 64,
                    out_bins: int = 64, grid_step: float = DEFAULT_GRID_STEP,
                    grid_points: int | None = None, policy: str = "drop",
                    return_coverage: bool = False):
    """Exact EI_parts or sensitivity (matrix or sum) of a chain that is one affine map and an
    elementwise monotone activation: one Dense layer, one Conv2d (e.g. on its receptive field,
    where it is a dense layer over C_in*kH*kW inputs), a `Function` layer whose fn is affine (a
    translated torch span such as Linear -> BatchNorm1d in eval mode, a residual block without
    nonlinearity, one restricted output position of a conv span), or such layers chained with
    identity activations between them (and AvgPool2d / Flatten). See `affine_map`.

    Args:
      chain, params: as for the sampling measures.
      measure: 'ei_parts', 'ei_parts_matrix', 'sensitivity' or 'sensitivity_matrix'.
      activation: replaces the chain's last activation (a name or an `activations.Activation`),
        as in the sampling measures; it must be monotone (`EXACT_ACTIVATIONS`).
      in_range, out_range, in_bins, out_bins, grid_step, grid_points, policy, return_coverage:
        as in `exact_ei_parts_matrix` (grid arguments only matter for EI_parts).

    Returns:
      As the matching exact_* function.

    Raises:
      NotImplementedError: for vector EI / groups (joint states of many inputs), pooling by max,
        nonlinear activations inside a span, a Function layer that is not affine (the message
        names the primitive), non-monotone activations (gelu, silu, mish, hardswish) and
        callable activations: use sampling there.
    """
    if measure in _SAMPLED_ONLY:
        raise NotImplementedError(
            f"measure={measure!r} has no exact method here (it needs the joint distribution of "
            "whole binned vectors, not pairwise terms); " + _SAMPLING_HINT)
    _checks.check_choice("measure", measure, EXACT_MEASURES)
    last = activation if activation is not None else (
        chain.layers[-1].activation if isinstance(chain, Chain) and chain.layers else None)
    _check_activation(last)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        w, b = affine_map(chain, params)
    kwargs = dict(activation=last, in_range=in_range, out_range=out_range, in_bins=in_bins,
                  out_bins=out_bins, policy=policy, return_coverage=return_coverage)
    if measure.startswith("ei_parts"):
        kwargs.update(grid_step=grid_step, grid_points=grid_points)
        fn = exact_ei_parts_matrix if measure == "ei_parts_matrix" else exact_ei_parts
    else:
        fn = exact_sensitivity_matrix if measure == "sensitivity_matrix" else exact_sensitivity
    return fn(w, b, **kwargs)
