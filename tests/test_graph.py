"""The graph bridge on torch's own modules: capture, op table, span functions, activations, errors.

Every span's JAX function is compared with torch on the same values (tests/_graph_oracle.py):
torch's ATen kernels run the exported graph, and the eager forward pass gives each module's output.
"""
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from deep_ei_jax.activations import activation  # noqa: E402
from deep_ei_jax.bridge import ops  # noqa: E402
from deep_ei_jax.bridge.graph import CaptureError, capture  # noqa: E402
from deep_ei_jax.bridge.spans import every_span, span_function  # noqa: E402

from _graph_oracle import check_every_call  # noqa: E402
from _models import TutorialCNN  # noqa: E402


class BasicBlock(nn.Module):
    """A residual basic block, conv-bn-relu-conv-bn plus a downsampling shortcut."""

    def __init__(self, c_in=4, c_out=8, stride=2):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                        nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return torch.sigmoid(self.b(h) + x)


def randomize_batch_norms(model, seed=0):
    """Non-trivial running statistics and affine parameters in every BatchNorm."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=generator))
                m.bias.copy_(torch.randn(m.num_features, generator=generator))
    return model


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_tutorial_cnn_every_call_and_activations():
    model = TutorialCNN()
    captured, spans = check_every_call(model, torch.randn(1, 3, 32, 32))
    assert {name for name, _ in spans} == {"", "conv1", "pool", "conv2", "fc1", "fc2", "fc3"}
    assert ("pool", 1) in spans and spans[("pool", 1)].in_shape == (16, 10, 10)
    relu = activation("relu")
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert spans[(name, 0)].out_activation == relu, name
    assert spans[("fc3", 0)].out_activation is None
    assert spans[("fc2", 0)].in_activation == relu
    assert spans[("conv1", 0)].in_activation is None
    assert spans[("conv1", 0)].in_shape == (3, 32, 32)
    assert spans[("conv1", 0)].out_shape == (6, 28, 28)
    # a span of several modules, batched over random inputs, against the model itself
    span = span_function(captured, model.fc3, in_module=model.conv1)
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(span.fn(span.params, x), want, rtol=1e-5, atol=1e-5)
    assert span.name == "conv1..fc3"


def test_batch_norm_eval_joins_the_span_and_mode_is_restored():
    model = randomize_batch_norms(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6),
                                                nn.Sigmoid())).train()
    before = model[1].running_mean.clone()
    captured, _ = check_every_call(model, torch.randn(1, 5))
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)
    span = span_function(captured, model[0])
    assert span.out_activation == activation("sigmoid")
    # keys: qualified names, less the span's own module prefix ("0.")
    assert sorted(span.params) == ["1.bias", "1.running_mean", "1.running_var", "1.weight",
                                   "bias", "weight"]
    assert span.param_targets["weight"] == "0.weight"
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    with torch.no_grad():
        model.eval()
        want = model(torch.from_numpy(x)).numpy()
        model.train()
    got = span.out_activation(span.fn(span.params, x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


ACTIVATION_MODULES = [
    (nn.ReLU(), activation("relu")), (nn.ReLU6(), activation("relu6")),
    (nn.LeakyReLU(0.2), activation("leaky_relu", 0.2)), (nn.ELU(0.5), activation("elu", 0.5)),
    (nn.SELU(), activation("selu")), (nn.CELU(0.7), activation("celu", 0.7)),
    (nn.GELU(), activation("gelu")), (nn.GELU("tanh"), activation("gelu_tanh")),
    (nn.SiLU(), activation("silu")), (nn.Mish(), activation("mish")),
    (nn.Softplus(2.0, 5.0), activation("softplus", 2.0, 5.0)),
    (nn.Hardtanh(-2.0, 3.0), activation("hardtanh", -2.0, 3.0)),
    (nn.Hardswish(), activation("hardswish")), (nn.Hardsigmoid(), activation("hardsigmoid")),
    (nn.Sigmoid(), activation("sigmoid")), (nn.Tanh(), activation("tanh")),
    (nn.LogSigmoid(), activation("logsigmoid")), (nn.Softsign(), activation("softsign")),
]
ACTIVATION_FUNCTIONS = [
    (F.relu, "relu"), (F.relu6, "relu6"), (lambda x: F.leaky_relu(x, 0.3), ("leaky_relu", 0.3)),
    (F.elu, "elu"), (F.selu, "selu"), (F.celu, "celu"), (F.gelu, "gelu"),
    (lambda x: F.gelu(x, approximate="tanh"), "gelu_tanh"), (F.silu, "silu"), (F.mish, "mish"),
    (F.softplus, "softplus"), (F.hardtanh, "hardtanh"), (F.hardswish, "hardswish"),
    (F.hardsigmoid, "hardsigmoid"), (torch.sigmoid, "sigmoid"), (torch.tanh, "tanh"),
    (F.logsigmoid, "logsigmoid"), (F.softsign, "softsign"),
]


class Functional(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.fc(x))


def _check_linear_then(model, expected):
    captured = capture(model, torch.randn(1, 6))
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    span = span_function(captured, linear)
    assert span.out_activation == expected
    x = np.random.default_rng(2).normal(scale=3.0, size=(9, 6)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = span.out_activation(span.fn(span.params, x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module,expected", ACTIVATION_MODULES,
                         ids=[type(m).__name__ + str(i) for i, (m, _) in
                              enumerate(ACTIVATION_MODULES)])
def test_linear_then_activation_module(module, expected):
    _check_linear_then(nn.Sequential(nn.Linear(6, 5), module), expected)


@pytest.mark.parametrize("fn,expected", ACTIVATION_FUNCTIONS,
                         ids=[e if isinstance(e, str) else e[0] for _, e in ACTIVATION_FUNCTIONS])
def test_linear_then_activation_function(fn, expected):
    expected = activation(expected) if isinstance(expected, str) else activation(*expected)
    _check_linear_then(Functional(fn), expected)


def test_activation_module_alone_is_split_off():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.GELU())
    _, spans = check_every_call(model, torch.randn(1, 3))
    span = spans[("2", 0)]
    assert span.out_activation == activation("gelu") and span.nodes == ()
    assert spans[("0", 0)].out_activation == activation("gelu")   # through eval dropout
    assert spans[("", 0)].out_activation == activation("gelu")    # the model ends with it


def test_residual_block():
    block = randomize_batch_norms(BasicBlock())
    _, spans = check_every_call(block, torch.randn(1, 4, 8, 8))
    assert spans[("conv1", 0)].out_activation == activation("relu")   # conv1 + bn1, then relu
    assert "bn1.running_var" in spans[("conv1", 0)].params
    assert spans[("conv2", 0)].out_activation is None                 # bn2 then the residual add
    assert spans[("", 0)].out_activation == activation("relu")        # the block ends with relu
    assert spans[("relu", 1)].in_shape == (8, 4, 4)


def test_skip_connection_is_named():
    block = randomize_batch_norms(BasicBlock())
    model = nn.Sequential(block, nn.Conv2d(8, 8, 3, padding=1))
    captured = capture(model, torch.randn(1, 4, 8, 8))
    # the shortcut branch computes from the block's input, which the span does not start from
    with pytest.raises(ValueError, match=r"depends on tensor 'batch_norm_2' \(shape \(1, 8, 4, "
                                         r"4\)\), made by 0.downsample.1 \(BatchNorm2d\)"):
        span_function(captured, model[1], in_module=block.conv2)
    model = Skip()
    captured = capture(model, torch.randn(1, 4))
    span_function(captured, model.b)   # fine: b alone
    with pytest.raises(ValueError, match=r"depends on tensor 'x' .* the model's input 'x'.*"
                                         r"skip connection\), used by 'add'"):
        span_function(captured, model, in_module=model.b)
    span = span_function(captured, model, in_module=model.a)  # the whole block from a's input
    assert span.out_activation == activation("sigmoid")


def test_depthwise_separable_block():
    model = randomize_batch_norms(nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU6(),
        nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()))
    _, spans = check_every_call(model, torch.randn(1, 4, 6, 6))
    assert spans[("0", 0)].out_activation == activation("relu6")
    assert spans[("3", 0)].out_activation == activation("relu")


def test_convolutions_and_pools():
    model = nn.Sequential(
        nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2), nn.Tanh(), nn.AvgPool1d(2),
        nn.MaxPool1d(2, padding=1), nn.Conv1d(6, 4, 3, padding="same"),
        nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.LayerNorm(12), nn.Linear(12, 3))
    check_every_call(model, torch.randn(1, 4, 16))
    model = nn.Sequential(
        nn.Conv3d(2, 4, 3, stride=2, padding=1), nn.SiLU(), nn.Conv3d(4, 4, 2, dilation=2),
        nn.AdaptiveAvgPool3d(1), nn.Flatten())
    check_every_call(model, torch.randn(1, 2, 7, 7, 7))
    model = nn.Sequential(
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0)), nn.GroupNorm(2, 4),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.AdaptiveAvgPool2d((2, 3)), nn.Softmax(dim=1))
    check_every_call(model, torch.randn(1, 3, 9, 8))


def test_transformer_encoder_layer():
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
    _, spans = check_every_call(layer, torch.randn(1, 4, 16))
    whole = spans[("", 0)]
    x = np.random.default_rng(3).normal(size=(3, 4, 16)).astype(np.float32)
    with torch.no_grad():
        want = layer.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(whole.fn(whole.params, x), want, rtol=1e-5, atol=1e-5)
    assert spans[("linear1", 0)].out_activation == activation("relu")


def test_multihead_attention():
    attention = nn.MultiheadAttention(16, 4, batch_first=True)
    q = torch.randn(1, 4, 16)
    check_every_call(attention, (q, q, q))   # returns (output, averaged weights)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = attention

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    model = SelfAttention()
    _, spans = check_every_call(model, q)
    assert spans[("attention", 0)].in_shape == (4, 16)


def test_recurrent_cells():
    gru = nn.GRUCell(3, 5)
    _, spans = check_every_call(gru, (torch.randn(1, 3), torch.randn(1, 5)))
    span = spans[("", 0)]
    assert span.in_shapes == ((3,), (5,)) and span.in_shape == (8,) and span.out_shape == (5,)
    x = np.random.default_rng(4).normal(size=(6, 8)).astype(np.float32)   # [x | h] per sample
    with torch.no_grad():
        want = gru(torch.from_numpy(x[:, :3]), torch.from_numpy(x[:, 3:])).numpy()
    np.testing.assert_allclose(span.fn(span.params, x), want, rtol=1e-5, atol=1e-6)
    lstm = nn.LSTMCell(3, 5)
    _, spans = check_every_call(lstm, (torch.randn(1, 3),
                                       (torch.randn(1, 5), torch.randn(1, 5))))
    span = spans[("", 0)]
    assert span.in_shape == (13,) and span.out_shapes == ((5,), (5,)) and span.out_shape == (10,)
    assert span.out_activation is None


def test_same_architecture_shares_one_function():
    first, second = TutorialCNN(), TutorialCNN()
    example = torch.randn(1, 3, 32, 32)
    a = span_function(capture(first, example), first.fc1)
    b = span_function(capture(second, example), second.fc1)
    assert a.fn is b.fn
    assert not np.array_equal(a.params["weight"], b.params["weight"])
    # two identical blocks of one model share theirs too
    model = nn.Sequential(BasicBlock(4, 4, 1), BasicBlock(4, 4, 1))
    captured = capture(model, torch.randn(1, 4, 6, 6))
    assert span_function(captured, model[0]).fn is span_function(captured, model[1]).fn
    # and the compiled program is reused: one trace for both weight sets
    traces = []

    def count(params, x):
        traces.append(1)
        return a.fn(params, x)

    jitted = jax.jit(count)
    x = np.zeros((2, 400), np.float32)
    jitted(a.params, x)
    jitted(b.params, x)
    assert len(traces) == 1


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.inner = nn.Sequential(nn.Linear(4, 4))

    def forward(self, x):
        return torch.cumsum(self.inner(self.fc(x)), dim=1)


def test_unsupported_op_names_op_and_module():
    model = Unsupported()
    captured = capture(model, torch.randn(1, 4))
    span_function(captured, model.inner)   # fine
    listed = every_span(captured)
    assert list(listed) == [("", 0), ("fc", 0), ("inner", 0), ("inner.0", 0)]
    assert isinstance(listed[("", 0)], NotImplementedError)
    assert all(not isinstance(v, Exception) for k, v in listed.items() if k != ("", 0))
    with pytest.raises(NotImplementedError, match=r"aten\.cumsum .* <model> \(Unsupported\)"):
        span_function(captured, model)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True))
    captured = capture(model, torch.randn(1, 1, 7, 7))
    with pytest.raises(NotImplementedError, match=r"aten\.max_pool2d \(ceil_mode=True\) in 1 "
                                                  r"\(MaxPool2d\)"):
        span_function(captured, model[1])


def test_bad_arguments():
    model = TutorialCNN()
    captured = capture(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"call must be an int in \[0, 2\) for 'pool'"):
        span_function(captured, model.pool, call=2)
    with pytest.raises(ValueError, match="makes no call"):
        span_function(captured, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="CapturedGraph"):
        span_function(model, model.fc1)
    with pytest.raises(TypeError, match="example_inputs"):
        capture(model, [torch.zeros(1, 3, 32, 32), 3])
    with pytest.raises(ValueError, match="does not come before"):
        span_function(captured, model.conv1, in_module=model.fc1)


def test_first_sample_of_a_batch():
    model = TutorialCNN()
    captured = capture(model, torch.randn(8, 3, 32, 32), first_sample=True)
    span = span_function(captured, model.fc1)
    assert span.in_shape == (400,) and captured.nodes[captured.inputs[0]].shape[0] == 1
    whole = capture(model, torch.randn(2, 3, 32, 32))     # as given: a sample is both examples
    assert span_function(whole, model.fc1).in_shape == (2, 400)
    with pytest.raises(ValueError, match="first_sample=True needs .* got shape \\(\\)"):
        capture(model, torch.tensor(1.0), first_sample=True)


def test_untraceable_model_says_why():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    with pytest.raises(CaptureError, match="torch.export could not trace DataDependent"):
        capture(DataDependent(), torch.ones(1, 3))


def test_supported_ops_listed():
    names = ops.supported_ops()
    assert names == sorted(names)
    for name in ("aten.linear", "aten.conv2d", "aten.batch_norm", "aten.gelu", "aten.relu_",
                 "aten.scaled_dot_product_attention", "aten.lstm_cell", "getitem"):
        assert name in names
    with pytest.raises(NotImplementedError, match="aten.cumsum"):
        ops.translation("aten.cumsum")


def test_core_activations_module_never_imports_torch():
    code = "import sys, deep_ei_jax.activations; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_captured_graph_serves_later_checkpoints():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh())
    captured = capture(model, torch.randn(1, 4))
    before = span_function(captured, model[0])
    model.load_state_dict(randomize_batch_norms(
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh())).state_dict())
    after = span_function(captured, model[0])        # params are read from the model now
    assert after.fn is before.fn
    np.testing.assert_array_equal(after.params["weight"], model[0].weight.detach().numpy())
    np.testing.assert_array_equal(after.params["1.running_var"], model[1].running_var.numpy())
    x = np.random.default_rng(5).normal(size=(4, 4)).astype(np.float32)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(after.out_activation(after.fn(after.params, x)), want,
                               rtol=1e-5, atol=1e-6)


class KitchenSink(nn.Module):
    """Shape, indexing, reduction and elementwise ops that the other tests do not reach."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 12)
        self.register_buffer("offset", torch.linspace(-1.0, 1.0, 12))
        self.register_buffer("order", torch.tensor([2, 0, 1]))

    def forward(self, x):
        h = self.fc(x) + self.offset                                  # [1, 12]
        a, b = h.chunk(2, dim=1)                                      # 2 x [1, 6]
        c, d, e = torch.split(h, [3, 4, 5], dim=1)
        grid = h.view(1, 3, 4).permute(0, 2, 1).transpose(1, 2)       # [1, 3, 4]
        grid = grid[:, self.order]                                    # index by a buffer
        rows = grid.unbind(1)
        s = torch.stack([rows[0], rows[2].flip(-1)], dim=1).mean(dim=1)   # [1, 4]
        t = grid.amax(dim=-1) - grid.sum(dim=-1, keepdim=True).squeeze(-1) / 4   # [1, 3]
        u = torch.where(a > 0, a.abs().sqrt(), -torch.exp(b.clamp(-3, 3)))
        v = torch.log1p(b.pow(2)) * torch.rsqrt(c.square().sum(1, keepdim=True) + 1)
        w = F.log_softmax(d, dim=-1) + F.softmax(e, dim=1)[:, :4] - e[:, 1:]
        z = grid.select(1, 1).unsqueeze(1).expand(1, 2, 4).reshape(1, 8)
        z = F.pad(z, (1, 2), value=0.5).masked_fill(z.new_ones(1, 11).tril(2).bool()[:, :11] == 0,
                                                    -1.0)
        mask = torch.ones(3, 3).triu(1)                              # from constants only
        t = t + (mask @ t.unsqueeze(-1)).squeeze(-1) - t.neg() / (t.abs() + 2)
        return torch.cat([u, v, w, s, t, z.repeat(1, 2)[:, ::3]], dim=1)


def test_kitchen_sink_of_ops():
    model = KitchenSink()
    _, spans = check_every_call(model, torch.randn(1, 6))
    whole = spans[("", 0)]
    x = np.random.default_rng(6).normal(size=(5, 6)).astype(np.float32)
    with torch.no_grad():   # the model is written for a batch of one (view(1, 3, 4))
        want = np.concatenate([model(torch.from_numpy(row[None])).numpy() for row in x])
    np.testing.assert_allclose(whole.fn(whole.params, x), want, rtol=1e-5, atol=1e-5)
    assert "offset" in whole.params and "order" not in whole.params   # an index buffer is static


class MaskedAttention(nn.Module):
    """A parent makes a causal mask from constants and passes it to its child module."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        mask = torch.ones(3, 3, dtype=torch.bool).triu(1)
        return self.attention(x, x, x, attn_mask=mask, need_weights=False)[0]


def test_values_made_from_constants_outside_the_span_join_it():
    model = MaskedAttention()
    _, spans = check_every_call(model, torch.randn(1, 3, 8))
    span = spans[("attention", 0)]
    assert span.in_shape == (3, 8)                       # the mask is no input: it is computed
    assert any(captured_op.startswith("ones") for captured_op in span.nodes)


def test_integer_inputs_and_views_changed_in_place_are_refused():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    captured = capture(model, torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"input 'input' of 0 has dtype int64 .* only "
                                         r"floating-point"):
        span_function(captured, model[0])
    span_function(captured, model[1])                    # its float output is measurable

    class ViewInPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            y.view(2, 2).relu_()
            return y * 2

    model = ViewInPlace()
    captured = capture(model, torch.randn(1, 4))
    with pytest.raises(NotImplementedError, match=r"<model> \(ViewInPlace\) reads 'linear' after "
                                                  r"the in-place aten.relu_"):
        span_function(captured, model)


@pytest.mark.parametrize("kind,kwargs", [
    (nn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    (nn.GRU, {"num_layers": 2}),
    (nn.RNN, {"nonlinearity": "relu", "bidirectional": True, "bias": False}),
])
def test_whole_recurrent_layers(kind, kwargs):
    layer = kind(3, 4, **kwargs)
    sequence = torch.randn(1, 5, 3) if kwargs.get("batch_first") else torch.randn(5, 1, 3)
    _, spans = check_every_call(layer, sequence)
    # the span's outputs: the sequence, then the final states; per-sample shapes drop a leading
    # axis of 1 only (a sequence-first layer keeps its (5, 1, ...) shape)
    hidden = 8 if kwargs.get("bidirectional") else 4
    expected = (5, hidden) if kwargs.get("batch_first") else (5, 1, hidden)
    assert spans[("", 0)].out_shapes[0] == expected


class ScaledLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.shift = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return torch.tanh(self.fc(x) * 0.5 + self.shift)


class ResidualSigmoid(nn.Module):
    """y = sigmoid(x + W x + b): as a container, the layer W + I with bias b."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(x + self.fc(x))


def test_constant_affine_ops_join_the_span_and_a_residual_container_is_w_plus_i():
    model = ScaledLinear()
    captured = capture(model, torch.randn(1, 4))
    span = span_function(captured, model.fc)
    assert span.out_activation == activation("tanh") and "shift" in span.params
    x = np.random.default_rng(7).normal(size=(6, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(span.out_activation(span.fn(span.params, x)), want, rtol=1e-5,
                               atol=1e-6)
    model = ResidualSigmoid()
    captured = capture(model, torch.randn(1, 4))
    assert span_function(captured, model.fc).out_activation is None   # then the residual add
    span = span_function(captured, model)
    assert span.out_activation == activation("sigmoid")
    weight, bias = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    np.testing.assert_allclose(span.fn(span.params, x), x @ (weight.T + np.eye(4)) + bias,
                               rtol=1e-5, atol=1e-5)
