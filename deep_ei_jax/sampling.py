"""Interventions: maximum-entropy noise injected into a layer's inputs.

Samples are drawn in fixed blocks of `SAMPLE_BLOCK` rows, block b from `fold_in(key, b)`, so sample
number i is the same whatever chunk size, step size or device count computes it: results depend on
the key and the number of samples only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SAMPLE_BLOCK = 1024


def uniform_inputs(key: jax.Array, first_block: jax.Array, num_blocks: int, in_shape: tuple,
                   low: jax.Array, high: jax.Array) -> jax.Array:
    """Every input uniform on [low, high): the intervention of EI and EI_parts.

    Args:
      key: PRNG key of the whole measurement.
      first_block: index of the first sample block (traced).
      num_blocks: how many consecutive blocks (static).
      in_shape: per-sample input shape (static).
      low, high: the input range (traced scalars).

    Returns:
      Inputs, shape [num_blocks * SAMPLE_BLOCK, *in_shape].
    """
    def block(b):
        return jax.random.uniform(jax.random.fold_in(key, b), (SAMPLE_BLOCK,) + tuple(in_shape),
                                  minval=low, maxval=high)
    blocks = jax.vmap(block)(first_block + jnp.arange(num_blocks))
    return blocks.reshape((num_blocks * SAMPLE_BLOCK,) + tuple(in_shape))


def single_input_noise(key: jax.Array, first_block: jax.Array, num_blocks: int, num_inputs: int,
                       input_index: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """Input `input_index` uniform on [low, high), every other input 0: the sensitivity intervention.

    Returns:
      Flat inputs, shape [num_blocks * SAMPLE_BLOCK, num_inputs].
    """
    input_key = jax.random.fold_in(key, input_index)

    def block(b):
        return jax.random.uniform(jax.random.fold_in(input_key, b), (SAMPLE_BLOCK,),
                                  minval=low, maxval=high)
    noise = jax.vmap(block)(first_block + jnp.arange(num_blocks)).reshape(-1)
    return jnp.zeros((noise.shape[0], num_inputs), noise.dtype).at[:, input_index].set(noise)


def sample_mask(first_block: jax.Array, num_blocks: int, start: jax.Array,
                stop: jax.Array) -> jax.Array:
    """True for the rows of a chunk whose global sample index lies in [start, stop)."""
    index = first_block * SAMPLE_BLOCK + jnp.arange(num_blocks * SAMPLE_BLOCK)
    return (index >= start) & (index < stop)
