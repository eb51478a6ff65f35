"""Entropy and mutual information from exact counts, in bits (plug-in estimates).

The functions take NumPy arrays (computed in float64 on the host) or JAX arrays (float32 on the
device, usable under `jit`); the formula is written once for both.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def nats_to_bits(nats):
    """Converts information from nats to bits."""
    return nats / math.log(2)


def _xp(array):
    return np if isinstance(array, (np.ndarray, np.generic)) else jnp


def _float(xp, array):
    """float64 on the host; JAX's default float on the device (float64 only under x64)."""
    return array.astype(np.float64 if xp is np else jnp.result_type(float))


def entropy(counts, axis=-1):
    """Plug-in entropy in bits of the distribution given by `counts` along `axis` (0 if empty)."""
    xp = _xp(counts)
    counts = _float(xp, counts)
    total = counts.sum(axis=axis, keepdims=True)
    safe_total = xp.where(total > 0, total, 1)
    p = counts / safe_total
    terms = xp.where(counts > 0, p * xp.log2(xp.where(counts > 0, p, 1)), 0)
    return -terms.sum(axis=axis)


def mutual_information(joint_counts):
    """Plug-in mutual information in bits of each table in `joint_counts`.

    Args:
      joint_counts: counts (or any nonnegative weights, e.g. probabilities), shape [..., Bx, By];
        each table is normalised by its own total.

    Returns:
      Shape [...]: sum_ij p_ij log2(p_ij / (p_i p_j)), 0 for an empty table.
    """
    xp = _xp(joint_counts)
    counts = _float(xp, joint_counts)
    total = counts.sum(axis=(-2, -1), keepdims=True)
    row = counts.sum(axis=-1, keepdims=True)
    col = counts.sum(axis=-2, keepdims=True)
    nonzero = counts > 0
    # log(c N / (r k)) = (log c - log r) + (log N - log k): each difference is exactly 0 when
    # its two counts are equal (a constant output gives exactly 0, not rounding noise).
    log_ratio = ((xp.log2(xp.where(nonzero, counts, 1)) - xp.log2(xp.where(nonzero, row, 1)))
                 + (xp.log2(xp.where(total > 0, total, 1)) - xp.log2(xp.where(nonzero, col, 1))))
    terms = xp.where(nonzero, counts * log_ratio, 0)
    mi = terms.sum(axis=(-2, -1)) / xp.where(total > 0, total, 1)[..., 0, 0]
    return xp.maximum(mi, 0)


def mutual_information_from_states(x_counts, y_counts, joint_counts):
    """I(X;Y) = H(X) + H(Y) - H(X,Y) from the nonzero counts of each variable's distinct states."""
    return max(float(entropy(x_counts) + entropy(y_counts) - entropy(joint_counts)), 0.0)


def mutual_information_standard_error(joint_counts):
    """Delta-method standard error (bits) of the plug-in mutual information of each table.

    The plug-in estimate is a smooth function of the cell frequencies; to first order its variance
    is Var[log2 p(x,y) / (p(x) p(y))] / N under the joint distribution, estimated with the
    observed frequencies. Shape [..., Bx, By] -> [...].
    """
    xp = _xp(joint_counts)
    counts = _float(xp, joint_counts)
    total = counts.sum(axis=(-2, -1), keepdims=True)
    safe_total = xp.where(total > 0, total, 1)
    row = counts.sum(axis=-1, keepdims=True)
    col = counts.sum(axis=-2, keepdims=True)
    nonzero = counts > 0
    log_ratio = ((xp.log2(xp.where(nonzero, counts, 1)) - xp.log2(xp.where(nonzero, row, 1)))
                 + (xp.log2(safe_total) - xp.log2(xp.where(nonzero, col, 1))))
    p = counts / safe_total
    mean = xp.where(nonzero, p * log_ratio, 0).sum(axis=(-2, -1), keepdims=True)
    variance = xp.where(nonzero, p * (log_ratio - mean) ** 2, 0).sum(axis=(-2, -1))
    return xp.sqrt(variance / safe_total[..., 0, 0])
