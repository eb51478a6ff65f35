"""deep_ei_jax.activations: each activation against torch's own function, and default ranges."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import activations as acts
from deep_ei_jax.activations import Activation, activation, default_range, is_monotone

torch = pytest.importorskip("torch")
F = torch.nn.functional

# name, args, torch's function of a float32 tensor
CASES = [
    ("identity", (), lambda x: x),
    ("relu", (), F.relu),
    ("relu6", (), F.relu6),
    ("leaky_relu", (), F.leaky_relu),
    ("leaky_relu", (0.2,), lambda x: F.leaky_relu(x, 0.2)),
    ("elu", (), F.elu),
    ("elu", (0.5,), lambda x: F.elu(x, 0.5)),
    ("selu", (), F.selu),
    ("celu", (), F.celu),
    ("celu", (0.7,), lambda x: F.celu(x, 0.7)),
    ("gelu", (), F.gelu),
    ("gelu_tanh", (), lambda x: F.gelu(x, approximate="tanh")),
    ("silu", (), F.silu),
    ("mish", (), F.mish),
    ("softplus", (), F.softplus),
    ("softplus", (2.0, 5.0), lambda x: F.softplus(x, 2.0, 5.0)),
    ("hardtanh", (), F.hardtanh),
    ("hardtanh", (-2.0, 3.0), lambda x: F.hardtanh(x, -2.0, 3.0)),
    ("hardswish", (), F.hardswish),
    ("hardsigmoid", (), F.hardsigmoid),
    ("sigmoid", (), torch.sigmoid),
    ("tanh", (), torch.tanh),
    ("logsigmoid", (), F.logsigmoid),
    ("softsign", (), F.softsign),
]

# a grid over the interesting region, the kinks and the softplus threshold, and far tails
GRID = np.unique(np.concatenate([np.linspace(-12, 12, 4801), [-3, 0, 3, 6, 2.5, 10, 20, 40, -40]])
                 ).astype(np.float32)


def test_every_name_is_tested():
    assert sorted({name for name, _, _ in CASES}) == sorted(acts.NAMES)


@pytest.mark.parametrize("name,args,torch_fn", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_torch(name, args, torch_fn, jit):
    a = activation(name, *args)
    fn = jax.jit(lambda x: a(x)) if jit else a
    ours = np.asarray(fn(jnp.asarray(GRID)))
    theirs = torch_fn(torch.from_numpy(GRID)).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_hashable_and_defaults_filled():
    assert activation("leaky_relu") == Activation("leaky_relu", (0.01,))
    assert activation("softplus", 2) == Activation("softplus", (2.0, 20.0))
    assert hash(activation("gelu")) == hash(activation("gelu"))
    assert activation("elu", 0.5) != activation("elu")
    jitted = jax.jit(lambda x, a: a(x), static_argnums=1)
    assert jitted(jnp.ones(2), activation("tanh")).shape == (2,)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="one of .*got 'swish'"):
        activation("swish")
    with pytest.raises(ValueError, match="at most 1 arguments"):
        activation("elu", 1.0, 2.0)
    with pytest.raises(TypeError, match="negative_slope .* must be a number; got 'x'"):
        activation("leaky_relu", "x")
    with pytest.raises(ValueError, match="min_val < max_val"):
        activation("hardtanh", 1.0, -1.0)
    with pytest.raises(TypeError, match="Activation .* or None"):
        default_range("relu")
    with pytest.raises(ValueError, match="pre_range"):
        default_range(activation("gelu"), (1.0, 1.0))


def test_is_monotone_on_a_grid():
    for name, args, _ in CASES:
        a = activation(name, *args)
        values = np.asarray(a(jnp.asarray(GRID)))
        # float32 rounding can step back by an ulp (tanh near 1); a real dip is >= 1e-3 here
        nondecreasing = bool(np.all(np.diff(values) >= -1e-6))
        assert is_monotone(a) == nondecreasing, name
    assert is_monotone(None)
    assert not is_monotone(activation("leaky_relu", -0.5))


def test_deep_ei_table():
    assert default_range(None) == (-10.0, 10.0)
    assert default_range(activation("identity")) == (-10.0, 10.0)
    assert default_range(activation("sigmoid")) == (0.0, 1.0)
    assert default_range(activation("tanh")) == (-1.0, 1.0)
    assert default_range(activation("relu")) == (0.0, 10.0)
    assert default_range(activation("relu"), (-1.0, 1.0)) == (0.0, 10.0)  # deep-ei's, fixed


@pytest.mark.parametrize("pre_range", [(-10.0, 10.0), (-3.0, 0.5), (-1.0, 2.0)])
@pytest.mark.parametrize("name,args,torch_fn", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_default_range_is_the_image(name, args, torch_fn, pre_range):
    """Against torch's function on a dense float64 grid: its min/max can only be higher/lower than
    the true ones by f' * spacing / 2 <= 1.2 * 5e-7 (|f'| <= 1.2 for these), so 1e-5 is ample."""
    a = activation(name, *args)
    if name in acts.DEEP_EI_RANGES:
        pytest.skip("deep-ei's table, tested above")
    grid = torch.linspace(*pre_range, 2_000_001, dtype=torch.float64)
    values = torch_fn(grid).numpy()
    low, high = default_range(a, pre_range)
    np.testing.assert_allclose([low, high], [values.min(), values.max()], rtol=1e-5, atol=1e-5)


def test_interior_minima():
    for name, value in (("gelu", -0.16997), ("silu", -0.27846), ("mish", -0.30884),
                        ("hardswish", -0.375)):
        assert default_range(activation(name))[0] == pytest.approx(value, abs=1e-4)
    # a pre-range to the right of the minimum: the image starts at f(low)
    low = default_range(activation("silu"), (0.0, 1.0))[0]
    assert low == pytest.approx(0.0, abs=1e-7)


def test_module_never_imports_torch():
    code = ("import sys, deep_ei_jax.activations as a; "
            "a.default_range(a.activation('gelu')); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
