"""Single ops of the table against torch's own ATen kernels (torch.ops.aten) on random tensors,
for the ops and arguments that the model tests do not reach."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deep_ei_jax.bridge import ops  # noqa: E402
from deep_ei_jax.bridge.graph import DType  # noqa: E402

aten = torch.ops.aten
rng = np.random.default_rng(0)


def t(*shape):
    return torch.from_numpy(rng.normal(size=shape).astype(np.float32))


def _jax(value):
    if isinstance(value, torch.Tensor):
        return jnp.asarray(value.numpy())
    if isinstance(value, torch.dtype):
        return DType(str(value).removeprefix("torch."))
    if isinstance(value, (list, tuple)):
        return type(value)(_jax(v) for v in value)
    return value


CASES = [
    ("aten.convolution", aten.convolution.default,
     (t(1, 4, 9, 8), t(6, 2, 3, 2), t(6), [2, 1], [1, 0], [1, 2], False, [0, 0], 2), {}),
    ("aten.conv1d", aten.conv1d.default, (t(4, 9), t(6, 4, 3)), {}),              # unbatched
    ("aten._native_batch_norm_legit_no_training",
     aten._native_batch_norm_legit_no_training.default,
     (t(2, 3, 4), t(3), t(3), t(3), torch.rand(3) + 0.5, 0.1, 1e-3), {}),
    ("aten.native_layer_norm", aten.native_layer_norm.default, (t(2, 3, 4), [3, 4], t(3, 4),
                                                                t(3, 4), 1e-5), {}),
    ("aten.addmm", aten.addmm.default, (t(5), t(3, 4), t(4, 5)), {"beta": 0.5, "alpha": 2.0}),
    ("aten.baddbmm", aten.baddbmm.default, (t(2, 3, 5), t(2, 3, 4), t(2, 4, 5)),
     {"beta": 0.5, "alpha": 2.0}),
    ("aten.einsum", aten.einsum.default, ("bij,bjk->bik", [t(2, 3, 4), t(2, 4, 5)]), {}),
    ("aten.adaptive_avg_pool2d", aten.adaptive_avg_pool2d.default, (t(1, 2, 7, 5), [3, 2]), {}),
    ("aten.adaptive_avg_pool1d", aten.adaptive_avg_pool1d.default, (t(1, 2, 10), [4]), {}),
    ("aten.avg_pool2d", aten.avg_pool2d.default, (t(1, 2, 7, 7), [3, 3], [2, 2], [1, 1], False,
                                                  False), {}),
    ("aten.avg_pool2d", aten.avg_pool2d.default, (t(1, 2, 6, 6), [2, 2], [], [0, 0], False, True,
                                                  3), {}),
    ("aten.max_pool3d", aten.max_pool3d.default, (t(1, 2, 5, 6, 5), [2, 2, 2], [1, 2, 1],
                                                  [1, 1, 0], [1, 1, 2]), {}),
    ("aten.div", aten.div.Tensor_mode, (t(6) * 5, t(6)), {"rounding_mode": "floor"}),
    ("aten.div", aten.div.Tensor_mode, (t(6) * 5, t(6)), {"rounding_mode": "trunc"}),
    ("aten.rsub", aten.rsub.Scalar, (t(4), 2.0), {"alpha": 3}),
    ("aten.pow", aten.pow.Scalar, (2.0, t(4)), {}),
    ("aten.clamp", aten.clamp.Tensor, (t(5), t(5) - 1, t(5) + 1), {}),
    ("aten.scaled_dot_product_attention", aten.scaled_dot_product_attention.default,
     (t(1, 2, 3, 4), t(1, 2, 5, 4), t(1, 2, 5, 6)), {"scale": 0.3}),
    ("aten.scaled_dot_product_attention", aten.scaled_dot_product_attention.default,
     (t(1, 2, 4, 4), t(1, 2, 4, 4), t(1, 2, 4, 4)), {"is_causal": True}),
    ("aten.scaled_dot_product_attention", aten.scaled_dot_product_attention.default,
     (t(1, 2, 3, 4), t(1, 2, 5, 4), t(1, 2, 5, 4), torch.rand(3, 5) > 0.3), {}),
    ("aten.scaled_dot_product_attention", aten.scaled_dot_product_attention.default,
     (t(1, 2, 3, 4), t(1, 2, 5, 4), t(1, 2, 5, 4), t(3, 5)), {}),
    ("aten.embedding", aten.embedding.default, (t(10, 3), torch.tensor([[1, 4, 9]])), {}),
    ("aten.elu", aten.elu.default, (t(8), 0.7, 1.3, 0.5), {}),
    ("aten.split", aten.split.Tensor, (t(2, 7), 3, 1), {}),
    ("aten.chunk", aten.chunk.default, (t(7, 2), 3), {}),
    ("aten.slice", aten.slice.Tensor, (t(3, 9), 1, 1, 9223372036854775807, 3), {}),
    ("aten.narrow", aten.narrow.default, (t(3, 9), 1, 2, 4), {}),
    ("aten.index_select", aten.index_select.default, (t(4, 5), 1, torch.tensor([4, 0, 2])), {}),
    ("aten.pad", aten.pad.default, (t(1, 2, 3, 4), [1, 2, 0, 1], "constant", 0.5), {}),
    ("aten.constant_pad_nd", aten.constant_pad_nd.default, (t(2, 5), [-1, 2], 1.5), {}),
    ("aten.squeeze", aten.squeeze.default, (t(1, 3, 1, 2),), {}),
    ("aten.squeeze", aten.squeeze.dims, (t(1, 3, 1, 2), [0, 2]), {}),
    ("aten.expand", aten.expand.default, (t(3, 1), [2, -1, 4]), {}),
    ("aten.repeat", aten.repeat.default, (t(2, 3), [2, 1, 2]), {}),
    ("aten.flatten", aten.flatten.using_ints, (t(2, 3, 4, 5), 1, 2), {}),
    ("aten.unflatten", aten.unflatten.int, (t(2, 12), 1, [3, -1]), {}),
    ("aten.sum", aten.sum.dim_IntList, (t(2, 3, 4), [0, 2], True), {}),
    ("aten.mean", aten.mean.default, (t(2, 3),), {}),
    ("aten.amin", aten.amin.default, (t(2, 3, 4), [1]), {}),
    ("aten.to", aten.to.dtype, (t(3) * 4, torch.int64), {}),
    ("aten.arange", aten.arange.start_step, (1, 10, 3), {}),
    ("aten.full", aten.full.default, ([2, 3], 1.5), {}),
    ("aten.gru_cell", aten.gru_cell.default, (t(2, 3), t(2, 4), t(12, 3), t(12, 4)), {}),
    ("aten.rnn_tanh_cell", aten.rnn_tanh_cell.default, (t(2, 3), t(2, 4), t(4, 3), t(4, 4),
                                                        t(4), t(4)), {}),
    ("aten.group_norm", aten.group_norm.default, (t(2, 6, 5), 3, None, t(6), 1e-4), {}),
    ("aten.masked_fill", aten.masked_fill.Scalar, (t(3, 3), torch.eye(3, dtype=torch.bool),
                                                   -2.0), {}),
]


@pytest.mark.parametrize("name,op,args,kwargs", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op_matches_torch(name, op, args, kwargs):
    with torch.no_grad():
        want = op(*args, **kwargs)
    got = ops.translation(name)(*_jax(args), **_jax(kwargs))
    want = want if isinstance(want, (tuple, list)) else (want,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.numel() == 0:     # _native_batch_norm_legit_no_training's unused statistics
            continue
        assert tuple(g.shape) == tuple(w.shape)
        np.testing.assert_allclose(np.asarray(g), w.numpy(), rtol=1e-5, atol=1e-5)


def test_arguments_the_table_refuses():
    with pytest.raises(NotImplementedError, match="transposed convolution"):
        ops.translation("aten.convolution")(jnp.ones((1, 2, 4)), jnp.ones((2, 2, 3)), None, [1],
                                            [0], [1], True, [0], 1)
    with pytest.raises(NotImplementedError, match="batch statistics"):
        ops.translation("aten.batch_norm")(jnp.ones((2, 3)), None, None, jnp.zeros(3),
                                           jnp.ones(3), True, 0.1, 1e-5, False)
    with pytest.raises(NotImplementedError, match="dropout in train mode"):
        ops.translation("aten.dropout")(jnp.ones(3), 0.5, True)
    with pytest.raises(NotImplementedError, match="mode='reflect'"):
        ops.translation("aten.pad")(jnp.ones((1, 3)), [1, 1], "reflect")
