"""positions: dependencies traced through JAX functions, one output position as a Function layer.

Equalities. The restricted layer takes the receptive patch's inputs in flat (C, H, W) order, the
order of today's receptive-field chain (Chain with in_shape (C_in, rh, rw), padding dropped), and
the samples depend only on the key and the number of inputs, so both see the same numbers. The
centre output is then computed by the same convolution windows over the same values (the rest of
the image is zeros the window never reaches), so the values are asserted identical (==); XLA's CPU
convolution accumulates each output in the same order whatever the image size.
"""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import positions, pure

BINNING = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8)


def _patch_oracle(chain, params, position):
    """Input (c, h, w) elements one output position reads, walking back layer by layer with the
    window formula: output o of a layer reads o * stride - padding + dilation * k, k < kernel,
    where that lies inside its input."""
    shapes = [tuple(chain.in_shape)]
    for i in range(len(chain.layers)):
        shapes.append(pure.out_shape(pure.Chain(chain.layers[:i + 1], chain.in_shape),
                                     params[:i + 1]))
    rows, cols = {position[0]}, {position[1]}
    for spec, p, shape in zip(reversed(chain.layers), reversed(params), reversed(shapes[:-1])):
        kernel = p["w"].shape[2:] if isinstance(spec, pure.Conv2d) else spec.kernel_size
        dilation = getattr(spec, "dilation", (1, 1))
        new = []
        for axis, coords in enumerate((rows, cols)):
            reached = {o * spec.stride[axis] - spec.padding[axis] + dilation[axis] * k
                       for o in coords for k in range(kernel[axis])}
            new.append({r for r in reached if 0 <= r < shape[1 + axis]})
        rows, cols = new
    c_in, h, w = chain.in_shape
    return np.sort([(c * h + r) * w + q for c in range(c_in) for r in rows for q in cols])


def _conv(rng, c_out, c_in, k, groups=1):
    return {"w": rng.normal(size=(c_out, c_in // groups) + k).astype(np.float32),
            "b": rng.normal(size=c_out).astype(np.float32)}


# (name, layers, params factory, in_shape, gap-free: the patch is the receptive-field rectangle)
CASES = [
    ("conv padded", (pure.Conv2d(padding=(1, 1), activation="sigmoid"),),
     lambda r: (_conv(r, 3, 2, (3, 3)),), (2, 7, 7), True),
    ("conv stride 2 groups 2", (pure.Conv2d(stride=(2, 2), groups=2, activation="tanh"),),
     lambda r: (_conv(r, 4, 2, (3, 2), groups=2),), (2, 9, 8), True),
    ("conv -> maxpool padded", (pure.Conv2d(padding=(1, 1), activation="relu"),
                                pure.MaxPool2d((2, 2), (2, 2), padding=(1, 1),
                                               activation="sigmoid")),
     lambda r: (_conv(r, 3, 2, (3, 3)), {}), (2, 8, 8), True),
    ("conv stride 2 -> avgpool", (pure.Conv2d(stride=(2, 2), activation="relu"),
                                  pure.AvgPool2d((3, 3), (1, 1), padding=(1, 1),
                                                 activation="sigmoid")),
     lambda r: (_conv(r, 2, 3, (3, 3)), {}), (3, 11, 11), True),
    ("conv dilated -> maxpool dilated", (pure.Conv2d(dilation=(2, 2), activation="relu"),
                                         pure.MaxPool2d((2, 2), (1, 1), dilation=(2, 1),
                                                        activation="sigmoid")),
     lambda r: (_conv(r, 2, 2, (3, 3)), {}), (2, 9, 9), False),
]


def _receptive_chain(chain, params):
    """Today's bridge rule (bridge/convert.py): padding dropped, in_shape the receptive patch."""
    height, width = pure.receptive_field(chain, params)
    layers = tuple(spec._replace(padding=(0, 0)) for spec in chain.layers)
    return pure.Chain(layers=layers, in_shape=(chain.in_shape[0], height, width))


@pytest.mark.parametrize("name, layers, make, in_shape, gap_free", CASES,
                         ids=[case[0] for case in CASES])
def test_centre_dependencies_are_the_receptive_patch(name, layers, make, in_shape, gap_free):
    params = make(np.random.default_rng(0))
    chain = pure.Chain(layers=layers, in_shape=in_shape)
    out = pure.out_shape(chain, params)
    restriction = positions.restrict(chain, params, feature_axis=0)
    centre = tuple(n // 2 for n in out[1:])
    assert restriction.position == centre
    np.testing.assert_array_equal(restriction.inputs, _patch_oracle(chain, params, centre))
    grid = np.arange(math.prod(out)).reshape(out)
    np.testing.assert_array_equal(restriction.outputs, grid[(slice(None),) + centre])
    height, width = pure.receptive_field(chain, params)
    full_patch = in_shape[0] * height * width
    if gap_free:
        assert len(restriction.inputs) == full_patch  # the centre sees a whole patch, no padding
    else:
        assert len(restriction.inputs) < full_patch  # the dilated windows' holes are not read
    # the restricted layer computes the original's outputs at that position
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, len(restriction.inputs))),
                    jnp.float32)
    full = np.zeros((5, math.prod(in_shape)), np.float32)
    full[:, restriction.inputs] = x
    expected = np.asarray(pure.apply(chain, params, full.reshape((5,) + in_shape))
                          ).reshape(5, -1)[:, restriction.outputs]
    np.testing.assert_allclose(pure.apply(restriction.chain, restriction.params, x), expected,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, layers, make, in_shape",
                         [case[:4] for case in CASES if case[4]], ids=[c[0] for c in CASES if c[4]])
def test_restricted_measures_equal_the_receptive_field_chain(name, layers, make, in_shape):
    params = make(np.random.default_rng(0))
    chain = pure.Chain(layers=layers, in_shape=in_shape)
    restriction = positions.restrict(chain, params, feature_axis=0)
    receptive = _receptive_chain(chain, params)
    key, binning = jax.random.key(7), dict(BINNING, out_range=(-1, 1))  # tanh and sigmoid
    for measure, samples in ((pure.ei_parts_matrix, 8192), (pure.sensitivity_matrix, 200)):
        got, info = measure(key, restriction.chain, restriction.params, samples=samples,
                            **binning)
        want, want_info = measure(key, receptive, params, samples=samples, **binning)
        np.testing.assert_array_equal(got, want)
        assert info.dropped == want_info.dropped == 0 and got.sum() > 0
    binning["out_range"] = "dynamic"  # from the same first chunk of the same samples
    got, info = pure.ei(key, restriction.chain, restriction.params, samples=4096, **binning)
    want, _ = pure.ei(key, receptive, params, samples=4096, **binning)
    assert got == want and got > 0


def _attention(params, x):
    """Single-head softmax self-attention over tokens, x [N, T, D] -> [N, T, D]."""
    q, k, v = (x @ params[name] for name in ("q", "k", "v"))
    scores = jnp.einsum("ntd,nsd->nts", q, k) / math.sqrt(x.shape[-1])
    return jnp.einsum("nts,nsd->ntd", jax.nn.softmax(scores, axis=-1), v)


def test_attention_token_depends_on_every_input():
    rng = np.random.default_rng(2)
    params = {name: rng.normal(size=(3, 3)).astype(np.float32) for name in ("q", "k", "v")}
    chain = pure.Chain(layers=(pure.Function(_attention, name="attn", activation="tanh"),),
                       in_shape=(4, 3))
    restriction = positions.restrict(chain, (params,), feature_axis=-1)
    assert restriction.position == (2,)
    np.testing.assert_array_equal(restriction.inputs, np.arange(12))
    np.testing.assert_array_equal(restriction.outputs, [6, 7, 8])
    value, _ = pure.ei_parts(jax.random.key(0), restriction.chain, restriction.params,
                             samples=4096, in_range=(0, 1), out_range=(-1, 1), in_bins=8,
                             out_bins=8)
    assert np.isfinite(value) and value > 0
    # a token-wise map (no mixing) depends on its own token only
    def tokenwise(p, x):
        return jnp.tanh(x @ p["q"])
    np.testing.assert_array_equal(
        pure.dependencies(tokenwise, params, (4, 3), np.s_[1, :]), [3, 4, 5])


def test_dead_relu_unit_is_still_a_dependency():
    """Unit 0 reads inputs 0 and 1 and is off for every input in [0, 1) (bias -100): its
    Jacobian is 0 everywhere, yet the graph connects it to inputs 0 and 1 (a max(z, 0))."""
    def fn(p, x):
        dead = jax.nn.relu(x[:, 0] + x[:, 1] + p["b"])
        live = jax.nn.relu(x[:, 2])
        return jnp.stack([dead, live], axis=1)
    params = {"b": np.float32(-100.0)}
    jacobian = jax.jacrev(lambda x: fn(params, x[None])[0])(jnp.full(4, 0.5))
    assert not np.any(np.asarray(jacobian)[0])
    np.testing.assert_array_equal(pure.dependencies(fn, params, (4,), np.s_[0:1]), [0, 1])
    np.testing.assert_array_equal(pure.dependencies(fn, params, (4,), np.s_[1:2]), [2])


def test_a_select_depends_on_its_predicate_and_cases():
    """jnp.where(x > 0.5, x, 0): x reaches the output through the predicate and the case."""
    def fn(p, x):
        return jnp.where(x > 0.5, x, 0.0)[:, ::-1]
    np.testing.assert_array_equal(pure.dependencies(fn, {}, (5,), np.s_[1:3]), [2, 3])


def test_dependencies_of_a_large_input():
    """10^4 inputs (a 4 x 50 x 50 image): one reverse pass answers every input."""
    rng = np.random.default_rng(3)
    chain = pure.Chain(layers=(pure.Conv2d(padding=(1, 1)), pure.MaxPool2d((2, 2), (2, 2))),
                       in_shape=(4, 50, 50))
    params = (_conv(rng, 2, 4, (3, 3)), {})
    def fn(p, x):
        return pure.apply(chain, p, x)
    found = pure.dependencies(fn, params, chain.in_shape, np.s_[:, 12, 12])
    np.testing.assert_array_equal(found, _patch_oracle(chain, params, (12, 12)))


def test_position_selection():
    rng = np.random.default_rng(4)
    chain = pure.Chain(layers=(pure.Conv2d(),), in_shape=(1, 5, 6))
    params = (_conv(rng, 2, 1, (2, 2)),)  # output [2, 4, 5]
    default = positions.restrict(chain, params, feature_axis=0)
    assert default.position == (2, 2)
    corner = positions.restrict(chain, params, feature_axis=0, position=(-1, 0))
    assert corner.position == (3, 0)
    np.testing.assert_array_equal(corner.outputs, [15, 35])
    np.testing.assert_array_equal(corner.inputs, [18, 19, 24, 25])
    whole = positions.restrict(chain, params, feature_axis=0, position="all")
    assert whole.chain == chain and whole.position == "all"
    np.testing.assert_array_equal(whole.inputs, np.arange(30))
    np.testing.assert_array_equal(whole.outputs, np.arange(40))
    flat, position = positions.position_outputs((2, 4, 5), feature_axis=None)
    assert position == (1, 2, 2) and flat.tolist() == [32]
    flat, position = positions.position_outputs((4, 3), feature_axis=-1, position=(0,))
    assert position == (0,) and flat.tolist() == [0, 1, 2]
    # equal restrictions are equal functions: one compiled program serves both
    again = positions.restrict(chain, params, feature_axis=0)
    assert again.chain == default.chain and hash(again.chain) == hash(default.chain)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(feature_axis=3), ValueError, r"feature_axis must be an axis.*\[-3, 2\]; got 3"),
    (dict(feature_axis="0"), TypeError, "feature_axis must be an int"),
    (dict(feature_axis=0, position=(1,)), ValueError, r"one int per position axis.*sizes \(4, 5\)"),
    (dict(feature_axis=0, position=(4, 0)), ValueError, r"position \(4, 0\) is out of bounds"),
    (dict(feature_axis=0, position="centre"), ValueError, "position must be one of"),
    (dict(feature_axis=0, position=3), TypeError, "position must be a tuple of ints"),
])
def test_position_errors(kwargs, error, match):
    chain = pure.Chain(layers=(pure.Conv2d(),), in_shape=(1, 5, 6))
    params = (_conv(np.random.default_rng(0), 2, 1, (2, 2)),)
    with pytest.raises(error, match=match):
        positions.restrict(chain, params, **kwargs)


def test_dependencies_errors():
    with pytest.raises(ValueError, match=r"outputs must index the per-sample output of shape "
                                         r"\(3,\)"):
        pure.dependencies(lambda p, x: x, {}, (3,), np.s_[5])
    with pytest.raises(ValueError, match="selects no element"):
        pure.dependencies(lambda p, x: x, {}, (3,), np.s_[2:1])
    np.testing.assert_array_equal(
        pure.dependencies(lambda p, x: x[:, ::-1], {}, (3,), [0, 1], flat=True), [1, 2])


def test_sweep_over_a_restricted_layer_equals_single_calls():
    rng = np.random.default_rng(8)
    chain = pure.Chain(layers=(pure.Conv2d(padding=(1, 1), activation="sigmoid"),),
                       in_shape=(1, 4, 4))
    sets = [(_conv(rng, 2, 1, (2, 2)),) for _ in range(2)]
    restricted = [positions.restrict(chain, p, feature_axis=0) for p in sets]
    assert restricted[0].chain == restricted[1].chain  # same structure, one program
    stacked = pure.stack_params([r.params for r in restricted])
    key, binning = jax.random.key(5), dict(BINNING, in_bins=4, out_bins=4)
    result = pure.sweep(key, restricted[0].chain, stacked, samples=2048,
                        sensitivity_samples=100, **binning)
    for k, r in enumerate(restricted):
        parts, _ = pure.ei_parts(key, r.chain, r.params, samples=2048, **binning)
        # as tests/test_sweep.py: the same counts, float32 formula rounding per pair
        assert abs(result.ei_parts[k] - parts) <= \
            result.ei_parts_matrix[k].size * 4 * math.log2(2048) * 2.0 ** -24


@pytest.mark.parametrize("name, fn, in_shape, outputs, expected", [
    ("layer norm: one token", lambda p, x: jax.nn.standardize(x, axis=-1), (3, 4), np.s_[1, :],
     [4, 5, 6, 7]),
    ("cumsum", lambda p, x: jnp.cumsum(x, axis=1), (5,), np.s_[2], [0, 1, 2]),
    ("fixed gather", lambda p, x: x[:, jnp.array([3, 0])], (4,), np.s_[0], [3]),
    ("sort", lambda p, x: jnp.sort(x, axis=-1), (2, 3), np.s_[1, 0], [3, 4, 5]),
    ("overwritten by a scatter", lambda p, x: x.at[:, 1].set(2 * x[:, 2]), (3,), np.s_[1], [2]),
    ("dynamic slice", lambda p, x: jax.lax.dynamic_slice_in_dim(x, 2, 2, axis=1), (5,),
     np.s_[1], [3]),
    ("pad and concatenate", lambda p, x: jnp.concatenate([jnp.pad(x, ((0, 0), (1, 0))), x], 1),
     (2,), np.s_[0:2], [0]),
    ("max", lambda p, x: jnp.max(x, axis=1, keepdims=True) + 0 * x[:, :1], (3,), np.s_[0],
     [0, 1, 2]),
    ("top_k", lambda p, x: jax.lax.top_k(x, 2)[0], (4,), np.s_[1], [0, 1, 2, 3]),
    ("no dependency", lambda p, x: jnp.ones_like(x) * p["c"], (3,), None, []),
])
def test_dependency_rules(name, fn, in_shape, outputs, expected):
    params = {"c": np.float32(2.0)}
    np.testing.assert_array_equal(pure.dependencies(fn, params, in_shape, outputs), expected)
    # wherever the Jacobian is nonzero at a random point, the graph has a path
    x = jax.random.uniform(jax.random.key(1), in_shape)
    jac = np.asarray(jax.jacfwd(lambda v: fn(params, v[None])[0])(x))
    grid = np.arange(jac.size // x.size).reshape(jac.shape[:jac.ndim - len(in_shape)])
    chosen = grid.reshape(-1) if outputs is None else np.asarray(grid[outputs]).reshape(-1)
    rows = jac.reshape(-1, x.size)[chosen]
    assert set(np.flatnonzero((rows != 0).any(axis=0))) <= set(expected)


def test_primitives_without_a_rule_are_conservative_and_named():
    def loop(p, x):
        return jax.lax.fori_loop(0, 2, lambda i, v: v * 2.0, x)
    with pytest.warns(UserWarning, match=r"no rule for the primitive.*\[.scan.\]"):
        found = pure.dependencies(loop, {}, (3,), np.s_[0])
    np.testing.assert_array_equal(found, [0, 1, 2])  # every input: the loop is opaque
    # a gather whose index is computed from the input (max pooling written with argmax)
    def pick(p, x):
        return jnp.take_along_axis(x, jnp.argmax(x, axis=1, keepdims=True), axis=1)
    with pytest.warns(UserWarning, match="gather \\(with indices that depend on the input\\)"):
        np.testing.assert_array_equal(pure.dependencies(pick, {}, (3,)), [0, 1, 2])


def test_a_position_without_inputs_is_an_error():
    def constant(p, x):
        return jnp.zeros_like(x[:, :2]) + p["c"]
    chain = pure.Chain(layers=(pure.Function(constant, name="c"),), in_shape=(3,))
    with pytest.raises(ValueError, match=r"position \(\) depend on no input element"):
        positions.restrict(chain, ({"c": np.ones(2, np.float32)},), feature_axis=0)


def test_custom_derivatives_and_library_activations_are_traced_through():
    @jax.custom_vjp
    def clip_gradient(x):
        return x

    clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -1, 1),))

    def fn(p, x):
        y = jax.nn.gelu(clip_gradient(x) @ p["w"])
        return jax.nn.softmax(y, axis=-1) * jax.nn.silu(x[:, :1])
    params = {"w": np.ones((3, 2), np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every primitive here has a rule
        np.testing.assert_array_equal(pure.dependencies(fn, params, (3,), np.s_[1]), [0, 1, 2])


def test_an_output_without_positions_is_measured_whole():
    """A Dense output [n] has no position axis: the restriction keeps every input and output,
    in order, and measures as the chain itself (scatter and gather move values exactly)."""
    rng = np.random.default_rng(9)
    chain = pure.Chain(layers=(pure.Dense(activation="relu"), pure.Dense(activation="sigmoid")),
                       in_shape=(5,))
    params = ({"w": rng.normal(size=(5, 4)).astype(np.float32)},
              {"w": rng.normal(size=(4, 3)).astype(np.float32),
               "b": rng.normal(size=3).astype(np.float32)})
    restriction = positions.restrict(chain, params, feature_axis=-1)
    assert restriction.position == ()
    np.testing.assert_array_equal(restriction.inputs, np.arange(5))
    np.testing.assert_array_equal(restriction.outputs, np.arange(3))
    key = jax.random.key(3)
    got, _ = pure.ei_parts(key, restriction.chain, restriction.params, samples=4096, **BINNING)
    want, _ = pure.ei_parts(key, chain, params, samples=4096, **BINNING)
    assert got == want


# ------------------------------------------------------- blocks as a translator writes them

def _conv_nchw(x, w, stride=1, pad=1):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _batch_norm(x, p, name):
    scale = p[name + ".weight"] / jnp.sqrt(p[name + ".var"] + 1e-5)
    shift = p[name + ".bias"] - p[name + ".mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _basic_block(p, x):
    """A ResNet basic block with a strided 1x1 downsampling shortcut, BatchNorm in eval."""
    y = jax.nn.relu(_batch_norm(_conv_nchw(x, p["conv1.weight"], 2), p, "bn1"))
    y = _batch_norm(_conv_nchw(y, p["conv2.weight"]), p, "bn2")
    return y + _batch_norm(_conv_nchw(x, p["down.weight"], 2, 0), p, "bnd")


def _encoder_layer(p, x, heads=2):
    """Pre-norm transformer encoder layer: multi-head attention and a GELU MLP."""
    n, t, d = x.shape

    def norm(v, name):
        v = (v - v.mean(-1, keepdims=True)) / jnp.sqrt(v.var(-1, keepdims=True) + 1e-5)
        return v * p[name + ".weight"] + p[name + ".bias"]

    def split_heads(v):
        return v.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)
    q, k, v = jnp.split(norm(x, "ln1") @ p["in_proj"].T, 3, axis=-1)
    scores = split_heads(q) @ split_heads(k).transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    attended = (jax.nn.softmax(scores, axis=-1) @ split_heads(v)).transpose(0, 2, 1, 3)
    x = x + attended.reshape(n, t, d) @ p["out_proj"].T
    return x + jax.nn.gelu(norm(x, "ln2") @ p["fc1"].T) @ p["fc2"].T


def _gru_step(p, xh):
    """One GRU cell step on the concatenation (x [3], h [4]), as torch.nn.GRUCell."""
    x, h = xh[:, :3], xh[:, 3:]
    ir, iz, i_n = jnp.split(x @ p["w_ih"].T, 3, -1)
    hr, hz, h_n = jnp.split(h @ p["w_hh"].T, 3, -1)
    reset, update = jax.nn.sigmoid(ir + hr), jax.nn.sigmoid(iz + hz)
    return (1 - update) * jnp.tanh(i_n + reset * h_n) + update * h


def _random(rng, shapes):
    return {k: (rng.uniform(0.5, 1.5, size=s) if k.endswith(("var", "weight")) and len(s) == 1
                else rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}


def test_blocks_as_a_translator_writes_them():
    rng = np.random.default_rng(10)
    c_in, c = 2, 4
    block = _random(rng, {"conv1.weight": (c, c_in, 3, 3), "conv2.weight": (c, c, 3, 3),
                          "down.weight": (c, c_in, 1, 1),
                          **{f"{n}.{s}": (c,) for n in ("bn1", "bn2", "bnd")
                             for s in ("weight", "bias", "mean", "var")}})
    d = 4
    encoder = _random(rng, {"in_proj": (3 * d, d), "out_proj": (d, d), "fc1": (8, d),
                            "fc2": (d, 8), **{f"ln{i}.{s}": (d,) for i in (1, 2)
                                              for s in ("weight", "bias")}})
    gru = _random(rng, {"w_ih": (12, 3), "w_hh": (12, 4)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every primitive of the three has a rule
        resnet = positions.restrict(pure.Chain((pure.Function(_basic_block, "layer1.0",
                                                              "relu"),), (c_in, 9, 9)),
                                    (block,), feature_axis=0)
        transformer = positions.restrict(
            pure.Chain((pure.Function(_encoder_layer, "encoder.0"),), (3, d)), (encoder,),
            feature_axis=-1)
        cell = pure.dependencies(_gru_step, gru, (7,), np.s_[0])
    # output 5 x 5, centre (2, 2): conv2 reads conv1 rows 1..3, which read input rows 1..7
    assert resnet.position == (2, 2)
    expected = [(ch * 9 + r) * 9 + q for ch in range(c_in) for r in range(1, 8)
                for q in range(1, 8)]
    np.testing.assert_array_equal(resnet.inputs, expected)
    np.testing.assert_array_equal(transformer.inputs, np.arange(3 * d))  # attention mixes all
    np.testing.assert_array_equal(transformer.outputs, np.arange(d, 2 * d))  # token 1
    np.testing.assert_array_equal(cell, np.arange(7))
    for restriction, out_range in ((resnet, (0, 10)), (transformer, (-10, 10))):
        value, _ = pure.ei_parts(jax.random.key(0), restriction.chain, restriction.params,
                                 in_range=(0, 1), out_range=out_range, in_bins=4, out_bins=4,
                                 samples=2048, policy="clip")
        assert np.isfinite(value) and value > 0
