"""capture: a torch model's forward graph, by PyTorch's own tracer (torch.export), as plain data.

`capture(model, example_inputs)` runs `torch.export.export` on the model and keeps, for every ATen
node, the op, its arguments (other nodes appear as `Ref(name)`), the shape and dtype of its value,
and the stack of module calls it was made from (`nn_module_stack`: a module called twice, like the
tutorial CNN's `pool`, makes two calls). Parameters, buffers and lifted constants are not copied:
the graph names them by their qualified target (`conv1.weight`), and `tensor_of` reads the live
tensor from the model when a span needs it, so a captured graph serves every later checkpoint.

Mode: the graph is captured in eval mode, whatever the model's mode: dropout is the identity and
BatchNorm normalises with its running statistics, a fixed affine map per channel. A train-mode
forward would make every sample depend on the rest of its batch, which is no function of one input
to measure. Every module's `training` flag is restored afterwards (`CapturedGraph.was_training`
records whether the model was in train mode).

Batch: the graph is traced at the example inputs' exact shapes, and a span's function
(`spans.py`) is a function of one such evaluation, batched over a new leading axis. Pass one
sample with a batch axis of 1, as deep-ei does (`torch.zeros((1, 20))`), or a batch with
`first_sample=True`; a span's per-sample shapes drop a leading axis of 1 ((1, 20) -> (20,)) and
keep any other (a sequence-first (5, 1, 4) stays (5, 1, 4): the whole sequence is one sample).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn


class Ref(NamedTuple):
    """A reference to the value of another node, by name, inside a node's arguments."""

    name: str


class DType(NamedTuple):
    """A torch dtype in a node's arguments, by its numpy name (e.g. "float32")."""

    name: str


class Ignored(NamedTuple):
    """An argument with no meaning for a JAX translation (device, layout, memory format)."""

    text: str


class Node(NamedTuple):
    """One ATen node of the graph.

    Attributes:
      name: the node's unique name (e.g. "conv2d_1").
      op: the op's name without overload, e.g. "aten.conv2d" or "getitem".
      args: positional arguments; other nodes' values appear as `Ref`, lists as tuples.
      kwargs: keyword arguments as sorted (name, value) pairs.
      shape: the shape of its value (None when not a tensor: a tuple of tensors, a number).
      dtype: numpy name of its dtype (None when not a tensor).
      stack: the keys of the module calls it was made from, outermost first (see `calls`).
      writes: the op changes its first argument in place (aten.relu_, aten.add_).
      aliases: the op's value is a view of its first argument (aten.view, aten.transpose).
    """

    name: str
    op: str
    args: tuple
    kwargs: tuple
    shape: tuple | None
    dtype: str | None
    stack: tuple
    writes: bool = False
    aliases: bool = False


class ModuleCall(NamedTuple):
    """One call of a submodule in the forward pass.

    Attributes:
      name: the module's qualified name in the model ("" for the model itself).
      module: the module object.
      index: 0 for the module's first call in the forward pass, 1 for its second, ...
      type_name: the module's class, qualified (e.g. "torch.nn.modules.conv.Conv2d").
      nodes: names of the nodes made inside the call, in graph order.
      inputs: names of the values from outside the call that it uses and that depend on the
        model's inputs, in graph order (for the model's own inputs: argument order). Parameters,
        buffers and values computed from them alone are not inputs.
      outputs: names of the values made inside the call and used after it, in graph order (in
        return order when they are all values the model returns).
    """

    name: str
    module: nn.Module
    index: int
    type_name: str
    nodes: tuple
    inputs: tuple
    outputs: tuple


class CapturedGraph(NamedTuple):
    """A model's forward graph (see `capture`).

    Attributes:
      model: the model captured.
      nodes: name -> `Node`, in graph (topological) order; user inputs and parameters are nodes
        with op "input" and "param".
      inputs: names of the model's input nodes, in argument order (nested tuples flattened).
      outputs: names of the values the model returns, in order.
      params: name of each parameter/buffer/constant node -> its qualified target in the model.
      calls: call key -> `ModuleCall`, in the order the calls began.
      data_dependent: names of the nodes whose value depends on the model's inputs.
      was_training: whether the model was in train mode when captured (it is traced in eval).
      constants: lifted constant tensors that are not attributes of the model, by target.
      mutations: name of a value -> names of the in-place ops that change it, directly or
        through a view of it.
    """

    model: nn.Module
    nodes: dict
    inputs: tuple
    outputs: tuple
    params: dict
    calls: dict
    data_dependent: frozenset
    was_training: bool
    constants: dict
    mutations: dict


class CaptureError(RuntimeError):
    """torch.export could not trace the model; the message says why."""


def model_arguments(value, name: str) -> tuple:
    """A model's positional arguments: a tensor, or a non-empty tuple of tensors (a cell's
    `(x, h)`; nested tuples allowed). Anything else raises a TypeError naming `name`."""
    if isinstance(value, torch.Tensor):
        return (value,)
    expected = (f"{name} must be a torch.Tensor batch or a tuple of tensors (a cell's (x, h); "
                f"nested tuples allowed)")
    if isinstance(value, (tuple, list)) and value:
        def check(item, where):
            if isinstance(item, (tuple, list)):
                for i, v in enumerate(item):
                    check(v, f"{where}[{i}]")
            elif not isinstance(item, torch.Tensor):
                raise TypeError(f"{expected}; {where} is a {type(item).__name__}")
        check(value, name)
        return tuple(value)
    raise TypeError(f"{expected}; got {type(value).__name__}")


def _first_sample(values):
    if isinstance(values, torch.Tensor):
        if values.ndim == 0 or values.shape[0] == 0:
            raise ValueError(f"first_sample=True needs example tensors with a non-empty leading "
                             f"(batch) axis; got shape {tuple(values.shape)}")
        return values[:1]
    return tuple(_first_sample(v) for v in values)


def _export(model: nn.Module, args: tuple):
    """torch.export in eval mode; every module's train/eval flag is put back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return torch.export.export(model, args)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CaptureError(f"torch.export could not trace {type(model).__name__}: "
                           f"{type(error).__name__}: {reason}") from error
    finally:
        for module, mode in modes:
            module.training = mode


def capture(model: nn.Module, example_inputs, *, first_sample: bool = False) -> CapturedGraph:
    """Traces `model` on `example_inputs` with torch.export and returns its graph.

    Args:
      model: any torch module that torch.export can trace.
      example_inputs: a tensor, or a tuple of tensors passed as separate arguments (a cell's
        `(x, h)`, or `(x, (h, c))` for an LSTM cell). One sample: a batch axis of 1.
      first_sample: trace on `t[:1]` of every example tensor instead (for a batch whose leading
        axis is the batch axis, as deep-ei's `topology_of(model, batch)` takes it).

    Returns:
      A `CapturedGraph`.

    Raises:
      CaptureError: torch.export failed (data-dependent control flow, unsupported Python); the
        message gives torch's reason.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    args = model_arguments(example_inputs, "example_inputs")
    if first_sample:
        args = _first_sample(args)
    was_training = model.training
    program = _export(model, args)
    signature = program.graph_signature
    kinds = {spec.arg.name: spec for spec in signature.input_specs}
    nodes, params, inputs, frames = {}, {}, [], {}
    outputs = ()
    for fx_node in program.graph.nodes:
        if fx_node.op == "placeholder":
            spec = kinds[fx_node.name]
            if spec.kind.name == "USER_INPUT":
                inputs.append(fx_node.name)
                op = "input"
            else:
                params[fx_node.name] = spec.target
                op = "param"
            nodes[fx_node.name] = _node(fx_node, op, frames)
        elif fx_node.op == "call_function":
            nodes[fx_node.name] = _node(fx_node, op_name(fx_node.target), frames)
        elif fx_node.op == "get_attr":
            params[fx_node.name] = fx_node.target
            nodes[fx_node.name] = _node(fx_node, "param", frames)
        elif fx_node.op == "output":
            outputs = tuple(ref.name for ref in _convert(fx_node.args[0]) if isinstance(ref, Ref))
        else:
            raise CaptureError(f"unexpected node {fx_node.op} {fx_node.target} in the exported "
                               f"graph of {type(model).__name__}")
    dependent = _data_dependent(nodes, inputs)
    calls = _calls(model, nodes, outputs, dependent, frames)
    constants = {k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}
    return CapturedGraph(model=model, nodes=nodes, inputs=tuple(inputs), outputs=outputs,
                         params=params, calls=calls, data_dependent=dependent,
                         was_training=was_training, constants=constants,
                         mutations=_mutations(nodes))


def _mutations(nodes: dict) -> dict:
    """value -> the in-place ops that change it, following views back to their base."""
    changed = {}
    for node in nodes.values():
        if not (node.writes and node.args and isinstance(node.args[0], Ref)):
            continue
        target = node.args[0].name
        while target is not None:
            changed.setdefault(target, []).append(node.name)
            source = nodes[target]
            target = (source.args[0].name if source.aliases and source.args
                      and isinstance(source.args[0], Ref) else None)
    return {name: tuple(ops) for name, ops in changed.items()}


def op_name(target) -> str:
    """The table name of an fx call target: "aten.conv2d" for aten.conv2d.default, "getitem"."""
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(packet)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if module in ("_operator", "operator") and name:
        return name
    return f"{module}.{name}" if name else str(target)


def tensor_of(captured: CapturedGraph, node_name: str) -> torch.Tensor:
    """The current tensor of a parameter/buffer/constant node, read from the model now."""
    target = captured.params[node_name]
    if target in captured.constants:
        return captured.constants[target]
    module_name, _, attribute = target.rpartition(".")
    owner = captured.model.get_submodule(module_name)
    value = getattr(owner, attribute)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{target} of the model is a {type(value).__name__}, not a tensor")
    return value


def _convert(value) -> Any:
    """An fx argument -> hashable plain data (nodes become Refs)."""
    if isinstance(value, torch.fx.Node):
        return Ref(value.name)
    if isinstance(value, (list, tuple)):
        return tuple(_convert(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _convert(v)) for k, v in value.items()))
    if isinstance(value, torch.dtype):
        return DType(str(value).removeprefix("torch."))
    if isinstance(value, (torch.device, torch.layout, torch.memory_format)):
        return Ignored(str(value))
    if isinstance(value, torch.Tensor):
        raise CaptureError(f"a tensor constant inside a node's arguments: {tuple(value.shape)}")
    return value


def _node(fx_node, op: str, frames: dict) -> Node:
    value = fx_node.meta.get("val")
    if isinstance(value, torch.Tensor):
        shape, dtype = tuple(int(s) for s in value.shape), str(value.dtype).removeprefix("torch.")
    else:
        shape = dtype = None
    stack = tuple((fx_node.meta.get("nn_module_stack") or {}).items())
    for key, (qualname, type_name) in stack:
        frames[key] = (qualname, type_name if isinstance(type_name, str)
                       else f"{type_name.__module__}.{type_name.__qualname__}")
    # the op's schema (torch has no public accessor; OpOverload._schema is what torch documents)
    # says whether its first argument is written to or aliased by its value
    schema = getattr(fx_node.target, "_schema", None) if fx_node.op == "call_function" else None
    first = schema.arguments[0].alias_info if schema is not None and schema.arguments else None
    return Node(name=fx_node.name, op=op, args=_convert(fx_node.args),
                kwargs=_convert(dict(fx_node.kwargs)), shape=shape, dtype=dtype,
                stack=tuple(key for key, _ in stack) if op not in ("input", "param") else (),
                writes=bool(first is not None and first.is_write),
                aliases=bool(first is not None and not first.is_write))


def refs(node: Node) -> list:
    """Names of the nodes whose values `node` uses, in argument order."""
    found = []

    def walk(value):
        if isinstance(value, Ref):
            found.append(value.name)
        elif isinstance(value, tuple) and not isinstance(value, (DType, Ignored)):
            for v in value:
                walk(v)
    walk(node.args)
    walk(node.kwargs)
    return found


def _data_dependent(nodes: dict, inputs: list) -> frozenset:
    dependent = set(inputs)
    for node in nodes.values():
        if any(name in dependent for name in refs(node)):
            dependent.add(node.name)
    return frozenset(dependent)


def _calls(model: nn.Module, nodes: dict, outputs: tuple, dependent: frozenset,
           frames: dict) -> dict:
    """Groups nodes by module call (each nn_module_stack key is one call)."""
    members = {}
    for node in nodes.values():
        for key in node.stack:
            members.setdefault(key, []).append(node.name)
    used_by = {}
    for node in nodes.values():
        for name in refs(node):
            used_by.setdefault(name, set()).add(node.name)
    for name in outputs:
        used_by.setdefault(name, set()).add("<output>")
    position = {name: i for i, name in enumerate(nodes)}
    calls, counts = {}, {}
    for key, names in members.items():
        qualname, type_name = frames[key]
        index = counts.get(qualname, 0)
        counts[qualname] = index + 1
        inside = set(names)
        inputs = sorted({ref for name in names for ref in refs(nodes[name])
                         if ref not in inside and ref in dependent}, key=position.__getitem__)
        made = [name for name in names if used_by.get(name, set()) - inside]
        if made and all(name in outputs for name in made):   # the model's: in return order
            made = [name for name in outputs if name in made]
        try:
            module = model.get_submodule(qualname)
        except AttributeError as error:
            raise CaptureError(f"module {qualname!r} of the exported graph is not a submodule "
                               f"of {type(model).__name__}") from error
        calls[key] = ModuleCall(name=qualname, module=module, index=index, type_name=type_name,
                                nodes=tuple(names), inputs=tuple(inputs), outputs=tuple(made))
    return calls
