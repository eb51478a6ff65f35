"""JAX's persistent compilation cache, opt-in: a second process then reuses compiled programs.

Importing deep_ei_jax changes no JAX setting. Two ways to opt in:

* `deep_ei_jax.enable_compilation_cache(path=None)` in a program;
* the environment variable `DEEP_EI_JAX_COMPILATION_CACHE`, read once when deep_ei_jax is
  imported: `1` (or on/true/yes) for the default folder, any other value for that folder;
  unset, empty or `0` (off/false/no) leaves JAX's settings alone.

The default folder is $XDG_CACHE_HOME/deep_ei_jax/jax, else ~/.cache/deep_ei_jax/jax.
"""
from __future__ import annotations

import os

import jax

ENV = "DEEP_EI_JAX_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")


def default_cache_dir() -> str:
    """The folder `enable_compilation_cache()` uses when given none and JAX has none set."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deep_ei_jax", "jax")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turns on JAX's persistent compilation cache for this process.

    It sets two JAX options for the whole process: `jax_compilation_cache_dir` and
    `jax_persistent_cache_min_compile_time_secs` (to 0, since this library's programs compile in
    well under JAX's default threshold of 1 s and would otherwise not be cached). Call it once,
    early, in a program (the command line `deep-ei-jax` does); a library should leave it to its
    user.

    Args:
      path: the cache folder (created by JAX when it first writes). None keeps a folder already
        given to JAX, else uses `default_cache_dir()`.

    Returns:
      The folder in use.

    Raises:
      TypeError: `path` is not None, a str or an os.PathLike.
    """
    if path is None:
        path = jax.config.jax_compilation_cache_dir or default_cache_dir()
    elif not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"path must be a folder (a non-empty str or os.PathLike) or None; "
                        f"got {path!r}")
    path = os.fspath(path)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def environment_setting() -> bool | str | None:
    """What `DEEP_EI_JAX_COMPILATION_CACHE` asks for: None when unset or empty, False for off
    (0/off/false/no), True for the default folder (1/on/true/yes), else the folder named."""
    value = os.environ.get(ENV)
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.lower() in _OFF:
        return False
    if value.lower() in _ON:
        return True
    return value


def enable_from_environment(*, default: bool = False) -> str | None:
    """Turns the cache on when `DEEP_EI_JAX_COMPILATION_CACHE` asks for it, or, when the variable
    is unset, if `default` is True (a program that opts in unless told not to).

    Returns:
      The folder in use, or None when the cache was left off (JAX's settings unchanged).
    """
    setting = environment_setting()
    if setting is None:
        setting = default
    if setting is False:
        return None
    return enable_compilation_cache(None if setting is True else setting)
