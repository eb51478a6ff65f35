"""deep_ei_jax: effective information of neural network layers, in JAX.

Two APIs:

* `deep_ei_jax.pure`: layers described with arrays (`Chain`, `Dense`, ...) and jit-compiled
  measures that take a PRNG key first and return `(value, Info)`. Needs no torch.
* The deep-ei 0.6.4 API on torch models, at the top level (`topology_of`, `ei_of_layer`, ...,
  and the 0.7.0 names `ei`, `ei_parts`, ...). It lives in `deep_ei_jax.bridge` and is loaded on
  first use, so `import deep_ei_jax` never imports torch.

`import deep_ei_jax` changes no global state; `enable_compilation_cache()` (or the environment
variable `DEEP_EI_JAX_COMPILATION_CACHE`) turns on JAX's persistent compilation cache.
"""
from __future__ import annotations

import importlib

from . import _cache, pure
from ._cache import enable_compilation_cache
from .information import nats_to_bits

# JAX's persistent compilation cache is opt-in: this changes JAX's settings only when
# DEEP_EI_JAX_COMPILATION_CACHE asks for it (see `enable_compilation_cache`).
_cache.enable_from_environment()

__version__ = "0.1.0"

# Served by the torch bridge on first use.
_BRIDGE_NAMES = (
    # deep-ei 0.6.4
    "topology_of", "ei_of_layer", "ei_of_layer_matrix", "sensitivity_of_layer",
    "sensitivity_of_layer_matrix", "vector_ei_of_layer", "eis_between_groups",
    "vector_and_pairwise_ei", "MI",
    # deep-ei 0.7.0 names
    "ei", "ei_parts", "ei_parts_matrix", "sensitivity", "sensitivity_matrix",
    # ours
    "degeneracy_of_layer", "layer_chain", "sweep", "to_dataframe", "Tracker", "estimate_cost",
)

__all__ = ["enable_compilation_cache", "pure", "nats_to_bits", *_BRIDGE_NAMES]


def __getattr__(name):
    if name in _BRIDGE_NAMES:
        return getattr(importlib.import_module(".bridge", __name__), name)
    raise AttributeError(f"module 'deep_ei_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_BRIDGE_NAMES))
