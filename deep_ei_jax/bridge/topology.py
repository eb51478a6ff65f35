"""topology_of: the connectivity of a torch model, as deep-ei records it, plus what we cannot measure.

One forward pass with hooks on every leaf module. Nodes are the measurable modules (Linear, Conv2d,
AvgPool2d, MaxPool2d, Flatten) in call order, with an edge from each to the next, and per node
`{"input": {"activation", "shape"}, "output": {"activation", "shape"}}` (batch dimension kept).
Unlike deep-ei, shapes are the real ones for Conv2d too, and anything between two nodes that is not
one supported activation (a BatchNorm, a Dropout in train mode, a functional op such as a skip
connection, a second activation, a module called twice) is recorded in the node's `"barrier"`
attribute; measuring across it raises an error that names it.
"""
from __future__ import annotations

import networkx as nx
import torch
from torch import nn

MODULES = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)
ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu"}
# deep-ei's default ranges by the activation before/after a layer (None: no activation).
ACTIVATION_RANGES = {"sigmoid": (0, 1), "tanh": (-1, 1), "relu": (0, 10), None: (-10, 10)}


def supported_names() -> str:
    return ", ".join(t.__name__ for t in (*MODULES, *ACTIVATIONS))


def _is_transparent(module: nn.Module) -> bool:
    """Modules that leave values unchanged: Identity, and dropout in eval mode."""
    if type(module) is nn.Identity:
        return True
    dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    return isinstance(module, dropouts) and not module.training


def _same_data(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def topology_of(model: nn.Module, input: torch.Tensor) -> nx.DiGraph:
    """Runs `input` through `model` once and returns its graph of measurable modules.

    Args:
      model: a feed-forward torch module.
      input: a valid input batch for it, e.g. `torch.zeros((1, 20))`.

    Returns:
      networkx.DiGraph whose nodes are the model's Linear, Conv2d, AvgPool2d, MaxPool2d and
      Flatten modules, with deep-ei's node attributes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor batch; got {type(input).__name__}")
    calls = []

    def hook(module, args, output):
        calls.append((module, args[0] if args else None, output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    # a train-mode forward updates buffers (BatchNorm running statistics): put them back after
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            model(input)
    except Exception as error:
        raise ValueError(f"input of shape {tuple(input.shape)} does not fit the model: running it "
                         f"raised {type(error).__name__}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return _graph(calls, model_input=input)


def _graph(calls, model_input) -> nx.DiGraph:
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
    return graph
