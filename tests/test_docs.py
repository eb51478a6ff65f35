"""The documentation builds without a single warning (skipped without the `docs` extra)."""
from __future__ import annotations

import html
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sphinx_build_has_no_warnings(tmp_path):
    env = dict(os.environ, DEEP_EI_JAX_COMPILATION_CACHE="0")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    for page in ("index", "guide/estimates", "api/pure", "api/torch", "api/exact",
                 "api/adapters"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    # the API pages hold what autodoc generated from the docstrings
    pure_page = (tmp_path / "html" / "api" / "pure.html").read_text()
    assert 'id="deep_ei_jax.pure.ei_parts_matrix"' in pure_page
    torch_page = (tmp_path / "html" / "api" / "torch.html").read_text()
    assert 'id="deep_ei_jax.ei_of_layer"' in torch_page
    # the deep-ei measures, made from one specification, show their full signatures
    text = re.sub(r"<[^>]+>", "", html.unescape(torch_page))
    assert "deep_ei_jax.ei_of_layer(layer, topology, threshold=0.05, samples=None, " \
        "extrapolate=False, batch_size=20, in_layer=None, in_range=None, in_bins=64, " \
        "out_range=None, out_bins=64, activation=None, device='cpu', *, seed=None, " \
        "policy='drop', devices=None, return_info=False, position=None, **options)" in text
    assert "deep_ei_jax.eis_between_groups(layer, topology, groups, samples=None" in text
    assert 'id="deep_ei_jax.bridge.resolve_span"' in torch_page
    for page in ("architecture", "contributing"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
