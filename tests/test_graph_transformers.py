"""The graph bridge on third-party architectures (Hugging Face transformers), tiny configs, no
download: every submodule call's JAX function matches torch (tests/_graph_oracle.py)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from deep_ei_jax.activations import activation  # noqa: E402
from deep_ei_jax.bridge.graph import capture  # noqa: E402
from deep_ei_jax.bridge.spans import span_function  # noqa: E402

from _graph_oracle import check_every_call  # noqa: E402


def randomize_batch_norms(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=generator))
    return model


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_resnet_basic_blocks_with_downsampling_shortcut():
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[1, 1], layer_type="basic")
    model = randomize_batch_norms(transformers.ResNetModel(config))
    captured, spans = check_every_call(model, torch.randn(1, 3, 32, 32))
    block = "encoder.stages.1.layers.0"
    assert type(model.get_submodule(block + ".shortcut")).__name__ == "ResNetShortCut"
    # a conv layer (conv + BatchNorm + ReLU module): the ReLU is split off as its activation
    assert spans[(block + ".layer.0", 0)].out_activation == activation("relu")
    assert spans[(block + ".layer.0.convolution", 0)].out_activation == activation("relu")
    assert f"{block}.layer.0.normalization.running_mean" in \
        spans[(block + ".layer.0.convolution", 0)].param_targets.values()
    assert spans[(block, 0)].out_activation == activation("relu")
    # the block's second conv cannot start a span that reaches the block's output: the shortcut
    with pytest.raises(ValueError, match=r"skip connection"):
        span_function(captured, block, in_module=block + ".layer.1")


def test_mobilenet_v1_depthwise_separable():
    config = transformers.MobileNetV1Config(num_channels=3, image_size=32, depth_multiplier=0.25)
    model = randomize_batch_norms(transformers.MobileNetV1Model(config))
    # the whole model, the stem and the first depthwise-separable pair (27 conv layers in all)
    chosen = ("conv_stem", "layer.0", "layer.1")
    _, spans = check_every_call(model, torch.randn(1, 3, 32, 32), only=lambda name: name == ""
                                or name in chosen
                                or name.startswith(tuple(c + "." for c in chosen)))
    depthwise = model.layer[0].convolution
    assert depthwise.groups == depthwise.in_channels > 1
    assert spans[("layer.0", 0)].out_activation == activation("relu6")


def test_mobilenet_v2_inverted_residuals():
    config = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25)
    model = randomize_batch_norms(transformers.MobileNetV2Model(config))
    # the whole model, the stem, and every module of two blocks (one with a residual add)
    residual = next(i for i, b in enumerate(model.layer) if b.use_residual)
    blocks = ("conv_stem", "layer.0", f"layer.{residual}")
    _, spans = check_every_call(model, torch.randn(1, 3, 32, 32), only=lambda name: name == ""
                                or name in blocks
                                or name.startswith(tuple(b + "." for b in blocks)))
    assert (f"layer.{residual}.expand_1x1.convolution", 0) in spans
    assert spans[(f"layer.{residual}.expand_1x1", 0)].out_activation == activation("relu6")


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_gpt2_block(attention):
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    config = transformers.GPT2Config(n_embd=16, n_head=4, n_layer=1, n_positions=8)
    config._attn_implementation = attention
    block = GPT2Block(config)
    _, spans = check_every_call(block, torch.randn(1, 4, 16))
    whole = spans[("", 0)]
    x = np.random.default_rng(0).normal(size=(3, 4, 16)).astype(np.float32)
    with torch.no_grad():
        want = block.eval()(torch.from_numpy(x))
    want = (want[0] if isinstance(want, tuple) else want).numpy()
    np.testing.assert_allclose(whole.fn(whole.params, x), want, rtol=1e-5, atol=1e-5)
    assert type(block.mlp.c_fc).__name__ == "Conv1D"    # the library's own Conv1D is a layer
    assert spans[("mlp.c_fc", 0)].in_shape == (4, 16)


def test_bert_layer():
    from transformers.models.bert.modeling_bert import BertLayer
    config = transformers.BertConfig(hidden_size=16, num_attention_heads=4,
                                     intermediate_size=32, num_hidden_layers=1)
    config._attn_implementation = "eager"
    layer = BertLayer(config)
    _, spans = check_every_call(layer, torch.randn(1, 4, 16))
    assert spans[("intermediate.dense", 0)].out_activation == activation("gelu")
    captured = capture(layer, torch.randn(1, 4, 16))
    assert span_function(captured, layer.output.dense).out_activation is None
