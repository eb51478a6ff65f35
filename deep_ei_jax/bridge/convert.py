"""Torch modules of a span (in_layer ... layer) -> a deep_ei_jax Chain and its params.

The span follows the topology's edges from `in_layer` to `layer`; each module but the last keeps
the activation the network has after it, the last gets `activation` (or the network's). A span of
Conv2d and pooling modules only is measured on one receptive field (SPEC): the input is the
C_in x rh x rw patch that one output position sees, padding is dropped (an interior position sees
none), and the outputs are the channels at that position.

`graph_span` makes the span of any submodule from the captured forward graph instead
(`bridge.spans.span_function`): one `Function` layer, restricted to one output position where the
output has positions (`deep_ei_jax.positions`). Feature axis of a per-sample output with
positions: axis 0 (channels first) when it has 3 or more axes, or 2 axes and the module that made
it is a convolution, pooling or normalization over channels (Conv1d: [C, L]); otherwise the last
axis (tokens: [T, D]).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import torch
from torch import nn

from .. import activations
from ..layers import (ACTIVATIONS as LAYER_ACTIVATIONS, AvgPool2d, Chain, Conv2d, Dense, Flatten,
                      Function, MaxPool2d, receptive_field)
from ..positions import restrict
from .spans import span_function
from .topology import ACTIVATIONS, supported_names

# torch activation modules -> the JAX activation (deep_ei_jax.activations) with the module's
# arguments, so an explicit `activation=nn.GELU()` runs in JAX, not through a host callback.
_MODULE_ACTIVATIONS = {
    nn.ReLU6: lambda m: ("relu6",), nn.LeakyReLU: lambda m: ("leaky_relu", m.negative_slope),
    nn.ELU: lambda m: ("elu", m.alpha), nn.SELU: lambda m: ("selu",),
    nn.CELU: lambda m: ("celu", m.alpha),
    nn.GELU: lambda m: ("gelu",) if m.approximate == "none" else ("gelu_tanh",),
    nn.SiLU: lambda m: ("silu",), nn.Mish: lambda m: ("mish",),
    nn.Softplus: lambda m: ("softplus", m.beta, m.threshold),
    nn.Hardtanh: lambda m: ("hardtanh", m.min_val, m.max_val),
    nn.Hardswish: lambda m: ("hardswish",), nn.Hardsigmoid: lambda m: ("hardsigmoid",),
    nn.LogSigmoid: lambda m: ("logsigmoid",), nn.Softsign: lambda m: ("softsign",),
}
# modules whose 2-axis outputs are [C, L] (channels first); see the module docstring
_CHANNELS_FIRST = ("Conv", "ConvTranspose", "MaxPool", "AvgPool", "AdaptiveAvgPool",
                   "AdaptiveMaxPool", "LPPool", "BatchNorm", "InstanceNorm", "GroupNorm")

_FUNCTION_NAMES = {
    torch.sigmoid: "sigmoid", torch.tanh: "tanh", torch.relu: "relu",
    nn.functional.sigmoid: "sigmoid", nn.functional.tanh: "tanh", nn.functional.relu: "relu",
    jax.nn.sigmoid: "sigmoid", jnp.tanh: "tanh", jax.nn.relu: "relu",
}


class Span(NamedTuple):
    """A measurable span: the chain, its params, and the topology facts the API defaults need.

    Attributes:
      chain, params: what the pure-JAX measures take.
      in_activation, out_activation: the activation before in_layer / after layer: a torch
        module (or None) for a span of the modules deep-ei knew, a
        `deep_ei_jax.activations.Activation` (or None) for a span of the captured graph.
      receptive_field: a Conv2d/pooling span measured on one receptive field.
      name: the span's name in messages ("fc1", "conv1..fc3"); None for deep-ei's modules.
      position: the output position measured (a tuple), 'all', or None (the output has no
        positions, or a receptive-field span: its interior position).
      graph: the `spans.GraphSpan` it was made from, or None.
      inputs: for a span restricted to a position, the flat indices of the inputs measured
        (into the per-sample input of `graph.in_shape`); None otherwise.
    """

    chain: Chain
    params: tuple
    in_activation: Any
    out_activation: Any
    receptive_field: bool
    name: str | None = None
    position: Any = None
    graph: Any = None
    inputs: Any = None


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _array(tensor: torch.Tensor, module: nn.Module, name: str) -> np.ndarray:
    array = tensor.detach().to("cpu", torch.float32).numpy()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{module!r} has non-finite values (NaN or inf) in its {name}")
    return array


def _unsupported(module, why: str):
    return NotImplementedError(f"{module!r} is not supported: {why}. Supported modules: "
                               f"{supported_names()}")


def _convert(module: nn.Module, activation, receptive: bool):
    """One torch module -> (layer spec, params dict)."""
    kind = type(module)
    if kind is nn.Linear:
        params = {"w": _array(module.weight, module, "weight").T}
        if module.bias is not None:
            params["b"] = _array(module.bias, module, "bias")
        return Dense(activation=activation), params
    if kind is nn.Conv2d:
        if module.padding_mode != "zeros":
            raise _unsupported(module, f"padding_mode={module.padding_mode!r}")
        if isinstance(module.padding, str):
            if module.padding == "same" and not receptive:
                raise _unsupported(module, "padding='same' outside a receptive-field span")
            padding = (0, 0)
        else:
            padding = (0, 0) if receptive else _pair(module.padding)
        params = {"w": _array(module.weight, module, "weight")}
        if module.bias is not None:
            params["b"] = _array(module.bias, module, "bias")
        return Conv2d(stride=_pair(module.stride), padding=padding,
                      dilation=_pair(module.dilation), groups=module.groups,
                      activation=activation), params
    if kind in (nn.AvgPool2d, nn.MaxPool2d):
        if module.ceil_mode:
            raise _unsupported(module, "ceil_mode=True")
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        padding = (0, 0) if receptive else _pair(module.padding)
        if kind is nn.AvgPool2d:
            if module.divisor_override is not None:
                raise _unsupported(module, "divisor_override")
            if not module.count_include_pad and padding != (0, 0):
                raise _unsupported(module, "count_include_pad=False with padding")
            return AvgPool2d(kernel_size=kernel, stride=stride, padding=padding,
                             activation=activation), {}
        if module.return_indices:
            raise _unsupported(module, "return_indices=True")
        return MaxPool2d(kernel_size=kernel, stride=stride, padding=padding,
                         dilation=_pair(module.dilation), activation=activation), {}
    if kind is nn.Flatten:
        if module.end_dim != -1:
            raise _unsupported(module, f"end_dim={module.end_dim} (only -1)")
        return Flatten(start_dim=module.start_dim, activation=activation), {}
    raise _unsupported(module, "not a measurable module")


def activation_of(activation) -> Any:
    """A torch activation module, torch/JAX function or other callable -> a JAX activation.

    Known activations become their names; a callable that JAX can trace is used as it is; any
    other callable (torch code) runs on the host through `jax.pure_callback`.
    """
    if activation is None:
        return "identity"
    if isinstance(activation, str):
        return activation
    if type(activation) in ACTIVATIONS:
        return ACTIVATIONS[type(activation)]
    if type(activation) is nn.Identity:
        return "identity"
    if type(activation) in _MODULE_ACTIVATIONS:
        return jax_activation(activations.activation(*_MODULE_ACTIVATIONS[type(activation)](
            activation)))
    if isinstance(activation, activations.Activation):
        return jax_activation(activation)
    try:
        if activation in _FUNCTION_NAMES:
            return _FUNCTION_NAMES[activation]
    except TypeError:  # unhashable callable
        pass
    if not callable(activation):
        raise TypeError(f"activation must be None, a torch activation module or a callable; "
                        f"got {activation!r}")
    if not isinstance(activation, nn.Module):
        try:
            probe = jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3)
            result = jax.jit(activation)(probe)
            if isinstance(result, jax.Array) and result.shape == probe.shape:
                return activation
        except Exception:  # not JAX-traceable: run it with torch
            pass
    return TorchActivation(activation)


class TorchActivation:
    """Runs a torch callable elementwise on the host from inside jit (via jax.pure_callback)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        def host(values):
            with torch.no_grad():
                out = self.fn(torch.from_numpy(np.asarray(values, np.float32).copy()))
            return np.asarray(out.detach().cpu().numpy(), np.float32).reshape(values.shape)
        return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, jnp.float32), x,
                                 vmap_method="sequential")

    def __hash__(self):
        return hash(("torch", id(self.fn)))

    def __eq__(self, other):
        return isinstance(other, TorchActivation) and other.fn is self.fn

    def __repr__(self):
        return f"TorchActivation({self.fn!r})"


def span_modules(layer, topology: nx.DiGraph, in_layer=None) -> list:
    """The modules from in_layer to layer along the topology's edges."""
    if not isinstance(topology, nx.DiGraph):
        raise TypeError(f"topology must be the networkx.DiGraph from topology_of; "
                        f"got {type(topology).__name__}")
    for name, module in (("layer", layer), ("in_layer", in_layer)):
        if module is not None and module not in topology:
            raise ValueError(f"{name} {module!r} is not in the topology; pass a module of the "
                             f"model that topology_of was called on")
    in_layer = layer if in_layer is None else in_layer
    path = [in_layer]
    while path[-1] is not layer:
        following = list(topology.successors(path[-1]))
        if not following:
            raise ValueError(f"in_layer {in_layer!r} does not come before layer {layer!r} in "
                             f"the topology")
        path.append(following[0])
    for module in path[:-1]:
        barrier = topology.nodes[module].get("barrier")
        if barrier:
            raise NotImplementedError(f"cannot measure a span across {barrier}")
    return path


def layer_chain(layer, topology: nx.DiGraph, in_layer=None, activation=None) -> Span:
    """Converts the span in_layer ... layer to a Chain and params.

    Args:
      layer: the last module of the span (a node of `topology`).
      topology: from `topology_of`.
      in_layer: the first module (default: `layer`).
      activation: the activation after `layer`; None means the network's (identity if none).
    """
    path = span_modules(layer, topology, in_layer)
    nodes = [topology.nodes[m] for m in path]
    if activation is None and nodes[-1].get("barrier"):
        raise NotImplementedError(f"cannot infer the activation after {layer!r}: there is "
                                  f"{nodes[-1]['barrier']}; pass activation= explicitly")
    receptive = all(type(m) in (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d) for m in path)
    specs, params = [], []
    for i, (module, node) in enumerate(zip(path, nodes)):
        if i < len(path) - 1:
            act = activation_of(node["output"]["activation"])
        else:
            act = activation_of(activation if activation is not None
                                else node["output"]["activation"])
        spec, p = _convert(module, act, receptive)
        specs.append(spec)
        params.append(p)
    in_shape = tuple(nodes[0]["input"]["shape"][1:])
    chain = Chain(layers=tuple(specs), in_shape=in_shape)
    if receptive:
        height, width = receptive_field(chain, params)
        if height > in_shape[-2] or width > in_shape[-1]:
            raise ValueError(f"the receptive field {height}x{width} of {layer!r} is larger than "
                             f"its input {in_shape[-2]}x{in_shape[-1]}")
        chain = Chain(layers=chain.layers, in_shape=(in_shape[0], height, width))
    return Span(chain=chain, params=tuple(params), in_activation=nodes[0]["input"]["activation"],
                out_activation=nodes[-1]["output"]["activation"], receptive_field=receptive)


def jax_activation(found) -> Any:
    """A graph's activation (`activations.Activation` or None) as a layer activation: the name
    for identity, sigmoid, tanh and relu (the very functions deep-ei's modules get), else the
    Activation itself (a hashable JAX callable)."""
    if found is None:
        return "identity"
    if found.name in LAYER_ACTIVATIONS and not found.args:
        return found.name
    return found


def feature_axis(captured, found) -> int:
    """The feature axis of a span's per-sample output with positions (module docstring)."""
    if len(found.out_shape) >= 3:
        return 0
    stack = captured.nodes[found.outputs[0]].stack if len(found.outputs) == 1 else ()
    kind = captured.calls[stack[-1]].type_name.rsplit(".", 1)[-1] if stack else ""
    return 0 if kind.startswith(_CHANNELS_FIRST) else -1


def check_position(position) -> None:
    """`position` is None, 'all' or a tuple of ints (checked against the output when used)."""
    if position is None or (isinstance(position, str) and position == "all"):
        return
    if isinstance(position, (str, bytes)) or not isinstance(position, (tuple, list)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in position):
        raise ValueError(f"position must be None (the centre), 'all' (the whole output) or a "
                         f"tuple of ints, one per position axis of the layer's output; got "
                         f"{position!r}")


def _qualified(captured, module):
    """A module's qualified name in the captured model (the graph may be shared by another
    checkpoint of the architecture, whose module objects it does not hold), or `module`."""
    if module is None or isinstance(module, str):
        return module
    for name, candidate in captured.model.named_modules():
        if candidate is module:
            return name
    return module


def graph_span(captured, layer, *, in_layer=None, activation=None, position=None) -> Span:
    """The span of any submodule (from `in_layer`'s input) on the captured graph.

    Args:
      captured: `bridge.graph.capture`'s graph of the model.
      layer, in_layer: submodules (objects or qualified names); a module called several times
        is taken at its first call.
      activation: the activation after `layer`; None: the graph's (identity if none).
      position: which output position to measure when the output has positions: None (the
        centre), a tuple (one index per position axis) or 'all' (the whole output).

    Raises:
      ValueError: a skip connection (naming the tensor), a bad `position`;
      NotImplementedError: an op with no JAX translation (naming it).
    """
    check_position(position)
    found = span_function(captured, _qualified(captured, layer),
                          in_module=_qualified(captured, in_layer))
    act = activation_of(activation) if activation is not None else \
        jax_activation(found.out_activation)
    chain = Chain(layers=(Function(fn=found.fn, name=found.name, activation=act),),
                  in_shape=tuple(found.in_shape))
    params = (found.params,)
    if len(found.out_shape) < 2:
        if position is not None and not isinstance(position, str):
            raise ValueError(f"position {tuple(position)} was given, but the output of "
                             f"{found.name} (per-sample shape {tuple(found.out_shape)}) has no "
                             f"positions; pass position=None or 'all'")
        return Span(chain=chain, params=params, in_activation=found.in_activation,
                    out_activation=found.out_activation, receptive_field=False,
                    name=found.name, graph=found)
    axis = feature_axis(captured, found)
    try:
        restriction = restrict(chain, params, feature_axis=axis, position=position,
                               name=found.name)
    except (ValueError, TypeError) as error:
        raise ValueError(f"position {position!r} for {found.name} (per-sample output "
                         f"{tuple(found.out_shape)}, feature axis {axis}): {error}") from None
    inputs = None if restriction.position == "all" else restriction.inputs
    return Span(chain=restriction.chain, params=restriction.params,
                in_activation=found.in_activation, out_activation=found.out_activation,
                receptive_field=False, name=found.name, position=restriction.position,
                graph=found, inputs=inputs)
