"""topology_of: the connectivity of a torch model, as deep-ei records it, plus what we cannot
measure.

One forward pass with hooks on every leaf module. Nodes are the measurable modules (Linear, Conv2d,
AvgPool2d, MaxPool2d, Flatten) in call order, with an edge from each to the next, and per node
`{"input": {"activation", "shape"}, "output": {"activation", "shape"}}` (batch dimension kept).
Unlike deep-ei, shapes are the real ones for Conv2d too, and anything between two nodes that is not
one supported activation (a BatchNorm, a Dropout in train mode, a functional op such as a skip
connection, a second activation, a module called twice, a functional op on the last module's
output) is recorded in the node's `"barrier"` attribute; measuring across it raises an error that
names it, and a layer with a barrier after it is measured on the captured graph instead.

The graph also keeps what measuring beyond those modules needs (`graph.graph`): "model", "input",
"called" (the leaf modules in the order of their first call) and, made on first need by
`captured_of` and cached there, "captured": the forward graph that `bridge.graph.capture` traces
with torch.export (None when torch.export cannot trace the model: hooks only, with one warning).
Capturing costs a second or more, so it is done only when a measure needs it.
"""
from __future__ import annotations

import warnings

import networkx as nx
import torch
from torch import nn

from .graph import CaptureError, capture, model_arguments

MODULES = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)
ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu"}
# deep-ei's default ranges by the activation before/after a layer (None: no activation).
ACTIVATION_RANGES = {"sigmoid": (0, 1), "tanh": (-1, 1), "relu": (0, 10), None: (-10, 10)}


def supported_names() -> str:
    return ", ".join(t.__name__ for t in (*MODULES, *ACTIVATIONS))


# torch's elementwise activation modules: passed as `layer`, they are refused (measure the module
# before them); the graph path recognises each (see deep_ei_jax.activations).
ACTIVATION_MODULES = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU,
                      nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardtanh,
                      nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Softsign)


def _is_transparent(module: nn.Module) -> bool:
    """Modules that leave values unchanged: Identity, and dropout in eval mode."""
    if type(module) is nn.Identity:
        return True
    dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    return isinstance(module, dropouts) and not module.training


def _same_data(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def _shapes(args: tuple):
    shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else _shapes(a) for a in args]
    return shapes[0] if len(shapes) == 1 else tuple(shapes)


def topology_of(model: nn.Module, input, *, capture: bool = True) -> nx.DiGraph:
    """Runs `input` through `model` once and returns its graph of measurable modules.

    Args:
      model: a torch module.
      input: a valid input batch for it, e.g. `torch.zeros((1, 20))`, or a tuple of tensors
        passed as separate arguments (a cell's `(x, h)`). The batch axis comes first; the
        captured graph (see the module docstring) is traced on the first sample.
      capture: False keeps to the hooks, as deep-ei: only deep-ei's modules, joined by its
        activation modules, can then be measured (no torch.export).

    Returns:
      networkx.DiGraph whose nodes are the model's Linear, Conv2d, AvgPool2d, MaxPool2d and
      Flatten modules, with deep-ei's node attributes; `graph.graph` holds the model, the input
      and, once `captured_of` made it, the captured forward graph.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    args = model_arguments(input, "input")
    calls, outputs = [], []

    def hook(module, arguments, output):
        calls.append((module, arguments[0] if arguments else None, output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    # a train-mode forward updates buffers (BatchNorm running statistics): put them back after
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            outputs.append(model(*args))
    except Exception as error:
        raise ValueError(f"input of shape {_shapes(args)} does not fit the model: running it "
                         f"raised {type(error).__name__}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    graph = _graph(calls, model_input=args[0], model_output=outputs[0])
    called = []
    for module, _, _ in calls:
        if module not in called:
            called.append(module)
    graph.graph.update(model=model, input=input, called=tuple(called))
    if not isinstance(capture, bool):
        raise TypeError(f"capture must be True or False; got {capture!r}")
    if not capture:
        graph.graph["captured"] = None
    return graph


def captured_of(topology):
    """The captured forward graph of the model `topology` was made from (made on first call).

    Returns:
      The `bridge.graph.CapturedGraph`, or None when the topology was not made by `topology_of`
      or torch.export cannot trace the model (a RuntimeWarning gives torch's reason, once).
    """
    attributes = getattr(topology, "graph", None)
    if not isinstance(attributes, dict) or "model" not in attributes:
        return None
    if "captured" not in attributes:
        try:
            attributes["captured"] = capture(attributes["model"], attributes["input"],
                                             first_sample=True)
        except CaptureError as error:
            attributes["captured"] = None
            attributes["capture_error"] = str(error)
            warnings.warn(f"measuring beyond the modules deep-ei knew needs torch.export; "
                          f"{error}. Only {supported_names()} can be measured on this model",
                          RuntimeWarning, stacklevel=3)
    return attributes["captured"]


def share_capture(topology, captured) -> None:
    """Gives `topology` the capture of another model of the same architecture (`captured`, of
    checkpoint 0), so that its spans read this model's weights without tracing it again."""
    topology.graph["captured"] = captured._replace(model=topology.graph["model"])


def _graph(calls, model_input, model_output) -> nx.DiGraph:
    graph = nx.DiGraph()
    node = None                  # the last measurable module seen
    pending_activation = None    # an activation run right before the next module
    after_node = []              # what ran since `node`
    last_output = model_input

    def block(reason):
        if node is not None and graph.nodes[node]["barrier"] is None:
            graph.nodes[node]["barrier"] = reason

    for module, inp, out in calls:
        kind = type(module)
        if _is_transparent(module):
            last_output = out
            continue
        if not _same_data(inp, last_output) and node is not None:
            block(f"a non-module operation (e.g. a skip connection or a functional call) between "
                  f"{node!r} and {module!r}")
        if kind in MODULES:
            if module in graph:
                block(f"{module!r} is called more than once (shared weights or recurrence)")
                break
            graph.add_node(module, input={"activation": pending_activation,
                                          "shape": tuple(inp.shape)},
                           output={"activation": None, "shape": tuple(out.shape)}, barrier=None)
            if node is not None:
                graph.add_edge(node, module)
            node, pending_activation, after_node = module, None, []
        elif kind in ACTIVATIONS:
            if node is not None and not after_node:
                graph.nodes[node]["output"]["activation"] = module
            elif node is not None:
                block(f"{module!r} follows {after_node[-1]!r} after {node!r}: only one supported "
                      f"activation may follow a module")
            pending_activation = module
            after_node.append(module)
        else:
            block(f"unsupported module {module!r} after {node!r}; supported: {supported_names()}")
            pending_activation = None
            after_node.append(module)
        last_output = out
    if node is not None and not _same_data(model_output, last_output):
        block(f"a non-module operation (e.g. a functional activation) between {node!r} and "
              f"the model's output")
    return graph
