"""Third-party architectures through the public deep-ei API (issue 12): every submodule the
captured graph can measure is measured by `ei_of_layer` (finite, >= 0) at small sample counts, and
every one it cannot raises an error naming the op or tensor. Tiny transformers configurations, no
download; a recurrent cell step with (x, h) input."""
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch import nn  # noqa: E402

import deep_ei_jax as dei  # noqa: E402
from deep_ei_jax.bridge import resolve_span  # noqa: E402
from deep_ei_jax.bridge.spans import every_span  # noqa: E402
from deep_ei_jax.bridge.topology import ACTIVATION_MODULES, captured_of  # noqa: E402

FAST = dict(samples=64, in_bins=4, out_bins=4, seed=0)


def randomize_batch_norms(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model


def measure_every_submodule(model, example):
    """Measures each module call's span (first calls); returns (measured, refused) names."""
    top = dei.topology_of(model.eval(), example)
    spans = every_span(captured_of(top))
    measured, refused = [], []
    for (name, call), span in spans.items():
        if call or isinstance(model.get_submodule(name), ACTIVATION_MODULES):
            continue   # activation modules are what follows a layer, refused as the layer
        if isinstance(span, Exception):
            text = str(span)
            assert "op aten." in text or "depends on tensor" in text or "dtype" in text, text
            refused.append(name)
            continue
        value = dei.ei_of_layer(model.get_submodule(name), top, **FAST)
        assert math.isfinite(value) and value >= 0, (name, value)
        measured.append(name)
    return measured, refused


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_resnet_basic_block_with_downsampling_shortcut():
    from transformers.models.resnet.modeling_resnet import ResNetBasicLayer
    block = randomize_batch_norms(ResNetBasicLayer(8, 16, stride=2))
    assert type(block.shortcut).__name__ == "ResNetShortCut"
    measured, refused = measure_every_submodule(block, torch.randn(1, 8, 8, 8))
    assert {"", "shortcut", "shortcut.convolution", "layer.0", "layer.0.convolution",
            "layer.1.convolution"} <= set(measured)
    assert not refused


def test_mobilenet_depthwise_separable_block():
    config = transformers.MobileNetV1Config(num_channels=3, image_size=32, depth_multiplier=0.25)
    model = randomize_batch_norms(transformers.MobileNetV1Model(config))
    block = nn.Sequential(model.layer[0], model.layer[1])   # depthwise 3x3, then pointwise 1x1
    depthwise = block[0].convolution
    assert depthwise.groups == depthwise.in_channels > 1
    measured, refused = measure_every_submodule(block, torch.randn(1, 8, 8, 8))
    assert {"", "0", "0.convolution", "1", "1.convolution"} <= set(measured)
    assert not refused


def test_gpt2_transformer_block():
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    config = transformers.GPT2Config(n_embd=16, n_head=4, n_layer=1, n_positions=8)
    config._attn_implementation = "eager"
    measured, refused = measure_every_submodule(GPT2Block(config), torch.randn(1, 4, 16))
    assert {"", "ln_1", "attn", "attn.c_attn", "attn.c_proj", "ln_2", "mlp", "mlp.c_fc",
            "mlp.c_proj"} <= set(measured)
    assert not refused


class CellStep(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell, self.out = cell, nn.Linear(5, 3)

    def forward(self, x, h):
        h = self.cell(x, h)
        h = h[0] if isinstance(h, tuple) else h
        return torch.tanh(self.out(h))


@pytest.mark.parametrize("cell", [nn.GRUCell(4, 5), nn.LSTMCell(4, 5)])
def test_recurrent_cell_step_with_x_and_h(cell):
    state = torch.zeros(1, 5) if isinstance(cell, nn.GRUCell) else (torch.zeros(1, 5),
                                                                    torch.zeros(1, 5))
    model = CellStep(cell)
    measured, refused = measure_every_submodule(model, (torch.zeros(1, 4), state))
    assert {"", "cell", "out"} <= set(measured) and not refused
    top = dei.topology_of(model, (torch.zeros(1, 4), state))
    span, _, _ = resolve_span(model.cell, top)
    # the cell's inputs are x and h (and c) concatenated in call order
    assert span.chain.in_shape == (4 + (5 if isinstance(cell, nn.GRUCell) else 10),)


def test_unmeasurable_submodule_names_the_op():
    class Sorting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.sort(self.fc(x), dim=-1).values)

    measured, refused = measure_every_submodule(Sorting(), torch.zeros(1, 4))
    assert refused == [""] and set(measured) == {"fc", "head"}
