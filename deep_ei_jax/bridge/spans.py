"""span_function: any submodule's part of a captured graph as a pure JAX function of (params, x).

The span of a module call runs from the call's inputs to its outputs (`in_module=` starts it at
another call's inputs instead). As in deep-ei, a layer is the module followed by the elementwise
activation that comes next; the span's function stops before that activation, which is returned
as `out_activation`:
- If the span has one output and the next node that uses it (its only user) is a named activation
  (`deep_ei_jax.activations`: an ATen activation op, or softsign's x / (1 + |x|)), that is
  `out_activation`. Eval-mode BatchNorm, elementwise affine ops with a constant operand (add, sub,
  mul, div by a parameter, buffer or number) and value-preserving ops (eval dropout, clone) between
  the module and that activation belong to the span; when no activation follows, they do not.
- Otherwise, if the span's own last op is a named activation (a container that ends with its
  ReLU, or an activation module measured alone), it is split off: the function stops before it
  and it is `out_activation`.
- Otherwise `out_activation` is None.
`in_activation` is the named activation whose output is the span's input (through
value-preserving ops only, as deep-ei's topology), or None; None too when there are several
inputs.

Values that depend on the model's inputs only through something other than the span's inputs (a
skip connection from earlier in the model) raise a ValueError naming that tensor and the module
that made it. Values computed from parameters and constants alone (masks, position ids) are
computed inside the span. Ops outside the table raise NotImplementedError naming the op and the
module it sits in.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from torch import nn

from ..activations import Activation, activation
from .graph import CapturedGraph, ModuleCall, Ref, refs, tensor_of
from .ops import VALUE_PRESERVING, UnsupportedOp, activation_of_op, translation
from .program import (Const, GraphFunction, Param, Program, Step, TranslationError, Val,
                      function_for)

AFFINE_OPS = frozenset({"aten.add", "aten.sub", "aten.mul", "aten.div", "aten.rsub"})
BATCH_NORMS = frozenset({"aten.batch_norm", "aten._native_batch_norm_legit_no_training"})
NO_VALUE_OPS = frozenset({"aten._assert_tensor_metadata", "aten._assert_scalar"})


class GraphSpan(NamedTuple):
    """A measurable span of a captured graph.

    Attributes:
      fn: `GraphFunction`, fn(params, x) with x `[N, *in_shape]` -> `[N, *out_shape]`, pure JAX;
        one object per span structure (models of one architecture share it).
      params: key -> float32 numpy array, every parameter and buffer the span uses (weights,
        BatchNorm running statistics), read from the model when the span was made.
      param_targets: key -> the tensor's qualified name in the model (e.g. "layer1.0.bn1.weight").
      in_shapes: per-sample shape of each input (the captured shape less a leading axis of 1).
      out_shapes: per-sample shape of each output.
      in_shape: what fn takes per sample: `in_shapes[0]`, or `(n,)` for several inputs.
      out_shape: what fn returns per sample: `out_shapes[0]`, or `(n,)` for several outputs.
      in_activation: the named activation the input comes out of, or None.
      out_activation: the named activation that follows the span's function, or None.
      name: the span's name for messages: "fc1", "pool#1" (second call), "conv1..fc3".
      inputs: names of the graph values the span starts from.
      outputs: names of the graph values fn returns.
      nodes: names of the graph nodes fn computes, in order.
    """

    fn: GraphFunction
    params: dict
    param_targets: dict
    in_shapes: tuple
    out_shapes: tuple
    in_shape: tuple
    out_shape: tuple
    in_activation: Activation | None
    out_activation: Activation | None
    name: str
    inputs: tuple
    outputs: tuple
    nodes: tuple


def module_calls(captured: CapturedGraph, module) -> list[ModuleCall]:
    """The calls of `module` (a submodule object or its qualified name) in graph order."""
    if isinstance(module, str):
        found = [c for c in captured.calls.values() if c.name == module]
    elif isinstance(module, nn.Module):
        found = [c for c in captured.calls.values() if c.module is module]
    else:
        raise TypeError(f"module must be a submodule of the model or its qualified name; got "
                        f"{type(module).__name__}")
    if not found:
        names = sorted({c.name for c in captured.calls.values()})
        raise ValueError(f"module {module if isinstance(module, str) else type(module).__name__!r}"
                         f" makes no call with ops in the captured forward pass (not a submodule"
                         f" of the model, never called, or an identity); calls: {names}")
    return found


def _call(captured, module, index: int, argument: str) -> ModuleCall:
    calls = module_calls(captured, module)
    if not isinstance(index, int) or not 0 <= index < len(calls):
        raise ValueError(f"{argument} must be an int in [0, {len(calls)}) for "
                         f"{calls[0].name!r} (called {len(calls)} times); got {index!r}")
    return calls[index]


def _call_name(call: ModuleCall) -> str:
    name = call.name or "<model>"
    return f"{name}#{call.index}" if call.index else name


def where(captured: CapturedGraph, name: str) -> str:
    """Where node `name` sits: the innermost module call that made it, or the model's input."""
    node = captured.nodes[name]
    if node.op == "input":
        return f"the model's input {name!r}"
    if not node.stack:
        return "the model's top level"
    call = captured.calls[node.stack[-1]]
    return f"{_call_name(call)} ({call.type_name.rsplit('.', 1)[-1]})"


def _users(captured: CapturedGraph) -> dict:
    users = {}
    for node in captured.nodes.values():
        if node.op in NO_VALUE_OPS:
            continue
        for name in refs(node):
            users.setdefault(name, []).append(node.name)
    for name in captured.outputs:
        users.setdefault(name, []).append("<output>")
    return users


def node_activation(captured: CapturedGraph, name: str) -> Activation | None:
    """The named activation that node `name` applies, or None (see `ops.activation_of_op`)."""
    node = captured.nodes[name]
    if node.op in ("input", "param"):
        return None
    if not any(isinstance(a, Ref) for a in node.args[1:]):
        found = activation_of_op(node.op, node.args, node.kwargs)
        if found is not None:
            return found
    if node.op != "aten.div" or len(node.args) != 2 or node.kwargs:
        return None
    numerator, denominator = node.args            # softsign: x / (abs(x) + 1)
    add = captured.nodes.get(denominator.name) if isinstance(denominator, Ref) else None
    if add is None or add.op != "aten.add" or len(add.args) != 2 or add.args[1] != 1:
        return None
    absolute = captured.nodes.get(add.args[0].name) if isinstance(add.args[0], Ref) else None
    if absolute is not None and absolute.op == "aten.abs" and absolute.args[0] == numerator:
        return activation("softsign")
    return None


def _next_activation(captured, users, value: str):
    """The named activation applied to `value` next (its only use; softsign uses it twice)."""
    following = [u for u in users.get(value, []) if u != "<output>"]
    if len(following) != len(users.get(value, [])):
        return None
    for name in following:
        node = captured.nodes[name]
        found = node_activation(captured, name)
        if found is None or node.args[:1] != (Ref(value),):
            continue
        if len(following) == 1:
            return found
        if found == activation("softsign") and len(following) == 2:   # abs(x) is the other use
            return found
    return None


def _absorbable(captured, name: str, value: str) -> bool:
    """Whether node `name`, applied to `value`, is a fixed affine or value-preserving map."""
    node = captured.nodes[name]
    used = refs(node)
    if used.count(value) != 1 or any(r in captured.data_dependent for r in used if r != value):
        return False
    if node.op in VALUE_PRESERVING:
        return node.args[:1] == (Ref(value),) and not (node.op.endswith("dropout")
                                                       and node.args[2:3] == (True,))
    if node.op in BATCH_NORMS:
        return node.args[:1] == (Ref(value),)
    if node.op in AFFINE_OPS and node.shape == captured.nodes[value].shape:
        return node.op != "aten.div" or node.args[:1] == (Ref(value),)
    return False


def _extend(captured, users, value: str):
    """(the value the activation is applied to, the activation) after `value`, or (value, None).

    Follows single uses through eval BatchNorm, constant affine and value-preserving ops."""
    current = value
    while True:
        found = _next_activation(captured, users, current)
        if found is not None:
            return current, found
        following = users.get(current, [])
        if len(following) != 1 or following[0] == "<output>":
            return value, None
        name = following[0]
        if not _absorbable(captured, name, current):
            return value, None
        if captured.nodes[name].op == "aten._native_batch_norm_legit_no_training":
            parts = users.get(name, [])
            if len(parts) != 1 or captured.nodes[parts[0]].args != (Ref(name), 0):
                return value, None
            name = parts[0]
        current = name


def _reach(captured, sources) -> set:
    reach = set(sources)
    for node in captured.nodes.values():
        if node.name not in reach and any(r in reach for r in refs(node)):
            reach.add(node.name)
    return reach


def _collect(captured, inputs: tuple, outputs: tuple, span: str) -> tuple[list, list]:
    """(the span's nodes in graph order, the parameter nodes they use); raises on skips."""
    reach = _reach(captured, inputs)
    needed, used_params = set(), set()
    stack = [(name, None) for name in outputs]
    while stack:
        name, user = stack.pop()
        if name in needed or name in inputs:
            continue
        node = captured.nodes[name]
        if node.op == "param":
            used_params.add(name)
            continue
        if name in captured.data_dependent and name not in reach:
            shape = node.shape if node.shape is not None else "?"
            use = (f"used by {user!r} in {where(captured, user)}" if user is not None
                   else "returned by the span")
            raise ValueError(
                f"the output of {span} depends on tensor {name!r} (shape {shape}), made by "
                f"{where(captured, name)}, which is not an input of the span but comes from "
                f"earlier in the model (a skip connection), {use}; start the span earlier with "
                f"in_module=, or measure a module that contains both")
        needed.add(name)
        stack.extend((ref, name) for ref in refs(node))
    order = [name for name in captured.nodes if name in needed]
    params = [name for name in captured.nodes if name in used_params]
    return order, params


def _check_mutations(captured, order: list) -> None:
    """No node of the span reads a value after an in-place op changed it (say through a view:
    the graph then names the value, not the change). Reads of the in-place op's own value are
    fine: that is how the graph spells an in-place change of a fresh value."""
    position = {name: i for i, name in enumerate(captured.nodes)}
    for reader in order:
        for name in refs(captured.nodes[reader]):
            for changer in captured.mutations.get(name, ()):
                if changer != reader and position[changer] < position[reader]:
                    raise NotImplementedError(
                        f"{where(captured, reader)} reads {name!r} after the in-place "
                        f"{captured.nodes[changer].op} in {where(captured, changer)} changed it "
                        f"(through a view or an alias); such in-place changes do not translate")


def _sample_shape(shape: tuple) -> tuple:
    return tuple(shape[1:]) if shape and shape[0] == 1 else tuple(shape)


def _common_prefix(names) -> str:
    parts = [name.split(".") if name else [] for name in names]
    common = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common) + "." if common else ""


def _param_keys(captured, param_nodes: list, prefix: str) -> dict:
    """param node -> key: its qualified target, less the span's module prefix where unique."""
    targets = {name: captured.params[name] for name in param_nodes}
    keys = {name: t[len(prefix):] if prefix and t.startswith(prefix) else t
            for name, t in targets.items()}
    return keys if len(set(keys.values())) == len(keys) else targets


def _read_params(captured, keys: dict) -> tuple[dict, dict]:
    """(float params by key, non-float constants by node name) read from the model now."""
    params, constants = {}, {}
    for name, key in keys.items():
        tensor = tensor_of(captured, name).detach().cpu()
        if tensor.is_floating_point():
            params[key] = tensor.float().numpy()
        else:
            array = tensor.numpy()
            narrowed = {np.dtype("int64"): np.int32, np.dtype("uint64"): np.uint32}
            array = np.ascontiguousarray(array.astype(narrowed.get(array.dtype, array.dtype)))
            constants[name] = Const(str(array.dtype), array.shape, array.tobytes())
    return params, constants


def _program(captured, inputs, outputs, order, keys, constants) -> Program:
    index = {name: i for i, name in enumerate(inputs)}

    def convert(value):
        if isinstance(value, Ref):
            if value.name in index:
                return Val(index[value.name])
            if value.name in constants:
                return constants[value.name]
            return Param(keys[value.name])
        if isinstance(value, tuple) and type(value) is tuple:
            return tuple(convert(v) for v in value)
        return value

    steps = []
    for name in order:
        node = captured.nodes[name]
        steps.append(Step(node.op, convert(node.args), convert(node.kwargs)))
        index[name] = len(index)
    in_shapes = tuple(captured.nodes[name].shape for name in inputs)
    out_shapes = tuple(captured.nodes[name].shape for name in outputs)
    return Program(steps=tuple(steps), in_shapes=in_shapes,
                   sample_shapes=tuple(_sample_shape(s) for s in in_shapes),
                   outputs=tuple(Val(index[name]) for name in outputs), out_shapes=out_shapes,
                   out_sample_shapes=tuple(_sample_shape(s) for s in out_shapes),
                   param_keys=tuple(sorted(key for name, key in keys.items()
                                           if name not in constants)))


def _check_values(captured, names, what: str, span: str) -> None:
    for name in names:
        node = captured.nodes[name]
        if node.shape is None:
            raise ValueError(f"{what} {name!r} of {span} is not a tensor (made by "
                             f"{where(captured, name)}); only tensors can be measured")
        if not node.dtype.startswith(("float", "bfloat")):
            raise ValueError(f"{what} {name!r} of {span} has dtype {node.dtype} (made by "
                             f"{where(captured, name)}); only floating-point values can be "
                             f"measured")


def _validate(captured, span_fn: GraphFunction, params: dict, order: list, span: str) -> None:
    """Every op is in the table, and the function runs abstractly to the captured shapes."""
    for name in order:
        node = captured.nodes[name]
        try:
            translation(node.op)
        except UnsupportedOp as error:
            raise NotImplementedError(
                f"op {error.op} ({error.reason}) in {where(captured, name)}, node {name!r}, "
                f"cannot be translated to JAX for {span}; supported ops: see "
                f"deep_ei_jax.bridge.ops.supported_ops()") from error
    abstract = {k: jax.ShapeDtypeStruct(v.shape, np.float32) for k, v in params.items()}
    x = jax.ShapeDtypeStruct((2,) + span_fn.in_shape, np.float32)
    try:
        out = jax.eval_shape(span_fn, abstract, x)
    except TranslationError as error:
        name = order[error.step]
        if isinstance(error.error, UnsupportedOp):
            raise NotImplementedError(
                f"op {error.op} ({error.error.reason}) in {where(captured, name)}, node "
                f"{name!r}, cannot be translated to JAX for {span}") from error
        raise RuntimeError(f"translating op {error.op} in {where(captured, name)}, node "
                           f"{name!r}, for {span} failed: {error.error}") from error
    if tuple(out.shape) != (2,) + span_fn.out_shape:
        raise RuntimeError(f"the JAX function of {span} gives shape {tuple(out.shape)[1:]} per "
                           f"sample where torch gives {span_fn.out_shape}")


def span_function(captured: CapturedGraph, module, *, in_module=None, call: int = 0,
                  in_call: int = 0) -> GraphSpan:
    """The span of `module` (from `in_module`'s input) as a pure JAX function of (params, x).

    Args:
      captured: from `graph.capture`.
      module: a submodule of the captured model (object or qualified name); a leaf or a container.
      in_module: start the span at this module's input instead (a span of several modules).
      call: which call of `module` when the forward pass calls it several times (0: the first).
      in_call: which call of `in_module`.

    Returns:
      A `GraphSpan` (see its attributes and the module docstring for what the span holds).

    Raises:
      ValueError: the module is not called, its output depends on a tensor other than the
        span's inputs (a skip connection: the message names it), or a value is not a float tensor.
      NotImplementedError: an op is not in the op table (the message names the op and module).
    """
    if not isinstance(captured, CapturedGraph):
        raise TypeError(f"captured must be a CapturedGraph from capture(); got "
                        f"{type(captured).__name__}")
    end = _call(captured, module, call, "call")
    start = end if in_module is None else _call(captured, in_module, in_call, "in_call")
    span = _call_name(end) if start is end else f"{_call_name(start)}..{_call_name(end)}"
    inputs, outputs = start.inputs, end.outputs
    if not inputs:
        raise ValueError(f"{span} has no input that depends on the model's input")
    if start is not end and not set(outputs) & _reach(captured, inputs):
        raise ValueError(f"in_module {_call_name(start)} does not come before module "
                         f"{_call_name(end)} in the forward pass")
    users = _users(captured)
    out_activation = None
    if len(outputs) == 1:
        pre, out_activation = _extend(captured, users, outputs[0])
        if out_activation is not None:
            outputs = (pre,)
        elif outputs[0] not in inputs and node_activation(captured, outputs[0]) is not None:
            source = captured.nodes[outputs[0]].args[0]
            if isinstance(source, Ref) and source.name in captured.data_dependent:
                out_activation = node_activation(captured, outputs[0])
                outputs = (source.name,)
    _check_values(captured, inputs, "input", span)
    _check_values(captured, outputs, "output", span)
    order, param_nodes = _collect(captured, inputs, outputs, span)
    _check_mutations(captured, order)
    keys = _param_keys(captured, param_nodes, _common_prefix([start.name, end.name]))
    params, constants = _read_params(captured, keys)
    program = _program(captured, inputs, outputs, order, keys, constants)
    span_fn = function_for(program)
    _validate(captured, span_fn, params, order, span)
    in_activation = _in_activation(captured, inputs[0]) if len(inputs) == 1 else None
    return GraphSpan(fn=span_fn, params=params,
                     param_targets={keys[n]: captured.params[n] for n in keys
                                    if n not in constants},
                     in_shapes=program.sample_shapes, out_shapes=program.out_sample_shapes,
                     in_shape=span_fn.in_shape, out_shape=span_fn.out_shape,
                     in_activation=in_activation, out_activation=out_activation, name=span,
                     inputs=tuple(inputs), outputs=tuple(outputs), nodes=tuple(order))


def _in_activation(captured, name: str) -> Any:
    node = captured.nodes[name]
    while node.op in VALUE_PRESERVING and node.args and isinstance(node.args[0], Ref):
        node = captured.nodes[node.args[0].name]
    return node_activation(captured, node.name)


def every_span(captured: CapturedGraph) -> dict:
    """Each module call's span, or why it has none (for listing what a model offers).

    Returns:
      dict (qualified name, call index) -> `GraphSpan`, or the ValueError/NotImplementedError
      that `span_function` raised for that call, in call order ("" is the whole model).
    """
    found = {}
    for call in captured.calls.values():
        try:
            found[(call.name, call.index)] = span_function(captured, call.module,
                                                           call=call.index)
        except (ValueError, NotImplementedError) as error:
            found[(call.name, call.index)] = error
    return found
