"""Interventions: maximum-entropy noise injected into a layer's inputs.

Samples are drawn in fixed blocks of `SAMPLE_BLOCK` rows, block b from `fold_in(key, b)`, so sample
number i is the same whatever chunk size, step size or device count computes it: results depend on
the key and the number of samples only.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_BLOCK = 1024

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array):
    """The Threefry-2x32 hash (20 rounds), written out round by round.

    JAX lowers its own hash on a CPU as a rolled 5-step loop that writes every intermediate array
    to memory (compiles fast, runs ~15x slower here); unrolled, XLA fuses all rounds into one
    vectorised pass. Same function, same bits.
    """
    keys = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for step in range(5):
        for rotation in _ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = ((x1 << jnp.uint32(rotation)) | (x1 >> jnp.uint32(32 - rotation))) ^ x0
        x0 = x0 + keys[(step + 1) % 3]
        x1 = x1 + keys[(step + 2) % 3] + jnp.uint32(step + 1)
    return x0, x1


def fast_uniform(key: jax.Array, shape: tuple, low: jax.Array, high: jax.Array) -> jax.Array:
    """float32 uniform on [low, high): bit for bit `jax.random.uniform(key, shape, minval=low,
    maxval=high)` for JAX's default (threefry, partitionable) keys, computed faster on a CPU.

    Other key kinds (e.g. jax.random.key(0, impl="rbg")) and the non-partitionable threefry mode
    go to `jax.random.uniform` itself.
    """
    size = math.prod(shape)
    if (str(jax.random.key_impl(key)) != "threefry2x32" or size >= 2 ** 32
            or not getattr(jax.config, "jax_threefry_partitionable", False)):
        return jax.random.uniform(key, shape, minval=low, maxval=high)
    k0, k1 = jax.random.key_data(key)
    counter = jax.lax.iota(jnp.uint32, size)  # the flat index; its high word is 0
    x0, x1 = _threefry2x32(k0, k1, jnp.zeros_like(counter), counter)
    mantissa = ((x0 ^ x1) >> jnp.uint32(32 - 23)) | jnp.uint32(np.float32(1.0).view(np.uint32))
    unit = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    return jnp.maximum(low, (unit * (high - low) + low).reshape(shape))


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
        return fast_uniform(jax.random.fold_in(key, b), (SAMPLE_BLOCK,) + tuple(in_shape), low,
                            high)
    # a loop over blocks stores each block once: with a vmap XLA would fuse the hash's 20 rounds
    # into every consumer of the inputs and compute them again for each
    blocks = jax.lax.map(block, first_block + jnp.arange(num_blocks))
    return blocks.reshape((num_blocks * SAMPLE_BLOCK,) + tuple(in_shape))


def single_input_noise(key: jax.Array, first_block: jax.Array, num_blocks: int, num_inputs: int,
                       input_index: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """Input `input_index` uniform on [low, high), every other input 0: the sensitivity
    intervention.

    Returns:
      Flat inputs, shape [num_blocks * SAMPLE_BLOCK, num_inputs].
    """
    input_key = jax.random.fold_in(key, input_index)

    def block(b):
        return fast_uniform(jax.random.fold_in(input_key, b), (SAMPLE_BLOCK,), low, high)
    noise = jax.lax.map(block, first_block + jnp.arange(num_blocks)).reshape(-1)
    return jnp.zeros((noise.shape[0], num_inputs), noise.dtype).at[:, input_index].set(noise)


def sample_mask(first_block: jax.Array, num_blocks: int, start: jax.Array,
                stop: jax.Array) -> jax.Array:
    """True for the rows of a chunk whose global sample index lies in [start, stop)."""
    index = first_block * SAMPLE_BLOCK + jnp.arange(num_blocks * SAMPLE_BLOCK)
    return (index >= start) & (index < stop)
