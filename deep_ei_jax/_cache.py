"""JAX's persistent compilation cache, on by default so a second process reuses compiled code.

`DEEP_EI_JAX_COMPILATION_CACHE=0` (or off/false/no) turns it off; any other value is the cache
folder (default: $XDG_CACHE_HOME/deep_ei_jax/jax, else ~/.cache/deep_ei_jax/jax). A cache folder
the user already gave JAX is left alone.
"""
from __future__ import annotations

import os

import jax

ENV = "DEEP_EI_JAX_COMPILATION_CACHE"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deep_ei_jax", "jax")


def enable_compilation_cache() -> str | None:
    """Points JAX's persistent compilation cache at our folder unless turned off or already set.

    Returns the folder in use, or None when the cache is off.
    """
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = setting or default_cache_dir()
    jax.config.update("jax_compilation_cache_dir", path)
    # our programs compile in well under JAX's default 1 s threshold; cache them anyway
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
