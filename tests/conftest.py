import json
import pathlib

import jax
import numpy as np
import pytest

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"
LOCAL = pathlib.Path(__file__).resolve().parent / "data"


def _reference_dir():
    for candidate in (SHARED, LOCAL):
        if (candidate / "deep_ei_0_6_4.json").exists():
            return candidate
    pytest.skip("reference values not found")


@pytest.fixture(scope="session")
def reference():
    """(cases dict, weights npz) measured with deep-ei 0.6.4."""
    directory = _reference_dir()
    cases = json.loads((directory / "deep_ei_0_6_4.json").read_text())["cases"]
    return cases, dict(np.load(directory / "weights.npz"))


@pytest.fixture
def key():
    return jax.random.key(0)
