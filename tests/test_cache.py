"""The persistent compilation cache is opt-in: importing the package changes no JAX setting; the
function and the environment variable turn it on (each case in a fresh interpreter, since the
settings are process-wide)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import deep_ei_jax
from deep_ei_jax import _cache

ENV = "DEEP_EI_JAX_COMPILATION_CACHE"
SNAPSHOT = ("import jax, json, sys;"
            "snapshot = lambda: {k: repr(v) for k, v in jax.config.values.items()};")
REPORT = ("print(json.dumps({'changed': sorted(k for k in set(before) | set(after) "
          "if before.get(k) != after.get(k)), 'dir': jax.config.jax_compilation_cache_dir, "
          "'min_time': jax.config.jax_persistent_cache_min_compile_time_secs, "
          "'torch': 'torch' in sys.modules}))")
MEASURE = ("import numpy as np; from deep_ei_jax import pure;"
           "pure.ei_parts(jax.random.key(0), pure.Chain((pure.Dense(),), (2,)), "
           "({'w': np.eye(2, dtype='float32')},), samples=100, in_bins=4, out_bins=4);")


def run(code, tmp_path, setting=None):
    """Runs `code` in a fresh interpreter with the variable set to `setting` (None: unset) and
    XDG_CACHE_HOME in tmp_path; returns the JSON it prints."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    if setting is not None:
        env[ENV] = setting
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_report(tmp_path, setting=None, then=""):
    return run(SNAPSHOT + "before = snapshot(); import deep_ei_jax;" + then +
               "after = snapshot();" + REPORT, tmp_path, setting)


@pytest.mark.parametrize("setting", [None, "0"])  # other spellings: test_environment_setting
def test_import_leaves_jax_config_unchanged(tmp_path, setting):
    report = import_report(tmp_path, setting)
    assert report["changed"] == []
    assert report["torch"] is False  # the torch bridge loads on first use only
    assert not (tmp_path / "xdg").exists()


def test_environment_variable_names_the_folder(tmp_path):
    folder = tmp_path / "cache"
    report = import_report(tmp_path, str(folder), then=MEASURE)
    assert report["dir"] == str(folder) and report["min_time"] == 0.0
    assert sorted(report["changed"]) == ["jax_compilation_cache_dir",
                                         "jax_persistent_cache_min_compile_time_secs"]
    assert any(folder.iterdir())  # compiled programs were written there


def test_environment_variable_on_uses_the_default_folder(tmp_path):
    report = import_report(tmp_path, "1")
    assert report["dir"] == str(tmp_path / "xdg" / "deep_ei_jax" / "jax")


def test_function_turns_the_cache_on(tmp_path):
    folder = tmp_path / "mine"
    report = import_report(tmp_path, then=f"deep_ei_jax.enable_compilation_cache({str(folder)!r});"
                           + MEASURE)
    assert report["dir"] == str(folder) and report["min_time"] == 0.0
    assert any(folder.iterdir())
    # without a path: a folder already given to JAX is kept, else the default one
    kept = import_report(tmp_path, then=f"jax.config.update('jax_compilation_cache_dir', "
                         f"{str(folder)!r}); deep_ei_jax.enable_compilation_cache();")
    assert kept["dir"] == str(folder)
    default = import_report(tmp_path, then="deep_ei_jax.enable_compilation_cache();")
    assert default["dir"] == str(tmp_path / "xdg" / "deep_ei_jax" / "jax")


def test_programs_opt_in_unless_told_not_to(tmp_path):
    # what `deep-ei-jax` runs first: on by default, off with 0, moved by a folder
    code = "deep_ei_jax._cache.enable_from_environment(default=True);"
    assert import_report(tmp_path, then=code)["dir"] == \
        str(tmp_path / "xdg" / "deep_ei_jax" / "jax")
    assert import_report(tmp_path, "0", then=code)["changed"] == []
    assert import_report(tmp_path, str(tmp_path / "f"), then=code)["dir"] == str(tmp_path / "f")


@pytest.mark.parametrize("path", [3, b"folder", ""])
def test_bad_path_is_refused(path):
    with pytest.raises(TypeError, match="path must be a folder"):
        deep_ei_jax.enable_compilation_cache(path)


def test_environment_setting(monkeypatch):
    for value, expected in ((None, None), ("  ", None), ("0", False), ("off", False),
                            ("False", False), ("no", False), ("1", True), ("on", True),
                            ("TRUE", True), ("yes", True), (" /tmp/x ", "/tmp/x")):
        if value is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, value)
        assert _cache.environment_setting() == expected
