"""Values -> bin indices: equal-width bins over [low, high], both ends inclusive.

A value equal to `high` falls in the last bin (a sigmoid that rounds to exactly 1.0 counts). Values
outside the range (and NaN) are *out of range*: with `policy="drop"` they are flagged invalid and
the caller leaves them out of the counts; with `policy="clip"` they go to the nearest end bin.
Either way the caller can count them from the returned mask.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

POLICIES = ("drop", "clip")


def bin_indices(values: jax.Array, low: jax.Array, high: jax.Array, bins: jax.Array,
                policy: str = "drop") -> tuple[jax.Array, jax.Array]:
    """Bins values.

    Args:
      values: any shape [..., n]; `low`, `high`, `bins` broadcast against it (per-neuron ranges and
        bin counts are allowed).
      low, high: range ends, high > low.
      bins: number of bins (int, or int array for per-neuron bins).
      policy: "drop" or "clip" (static).

    Returns:
      (indices int32 in [0, bins), in_range bool). Where `in_range` is False and policy is "drop",
      the index is 0 and must not be counted.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
    bins = jnp.asarray(bins, jnp.int32)
    in_range = (values >= low) & (values <= high)
    scaled = jnp.floor((values - low) / (high - low) * bins.astype(values.dtype))
    # Clip in float first: casting a huge or NaN float to int is undefined.
    scaled = jnp.nan_to_num(scaled, nan=0.0)
    indices = jnp.clip(scaled, 0, bins - 1).astype(jnp.int32)
    if policy == "drop":
        indices = jnp.where(in_range, indices, 0)
    return indices, in_range
