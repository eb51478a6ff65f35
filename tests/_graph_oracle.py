"""Test oracle for the graph bridge: torch's own values of every node, and of every module call.

`node_values` runs the exported ATen graph with torch (fx's Interpreter, eager ATen kernels): the
value of each node, independent of our JAX translation. `module_outputs` runs the model eagerly
with forward hooks: each module call's real output, independent of torch.export.
"""
import jax
import numpy as np
import torch

from deep_ei_jax.bridge.graph import capture
from deep_ei_jax.bridge.spans import span_function


def _flat(values):
    if values is None or isinstance(values, (str, bool, int, float)):
        return []
    if isinstance(values, dict):    # a library's output record (transformers' ModelOutput)
        values = list(values.values())
    if isinstance(values, torch.Tensor):
        return [values]
    return [t for v in values for t in _flat(v)]


def _copy(value):
    """A copy of a node's value: a later in-place op must not change what was recorded."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value


def node_values(model, args) -> dict:
    """name -> torch value of every node of the exported graph, run by torch."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        program = torch.export.export(model, args)
    finally:
        for module, mode in modes:
            module.training = mode
    state = {**program.state_dict, **program.constants}
    flat = [state[spec.target] for spec in program.graph_signature.input_specs
            if spec.kind.name != "USER_INPUT"] + _flat(args)
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            values[n.name] = _copy(result)
            return result

    with torch.no_grad():
        Recorder(program.graph_module).run(*flat)
    return values


def module_outputs(model, args) -> dict:
    """module -> list of its calls' outputs (eager forward in eval mode, hooks)."""
    outputs = {}

    def hook(module, inputs, output):
        outputs.setdefault(module, []).append(_copy(output))   # before any in-place op

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    return outputs


def _joint(tensors, sample_shapes):
    """Torch values of one evaluation (batch axis of 1) -> one sample of fn's input layout."""
    if len(tensors) == 1:
        return tensors[0].numpy().reshape((1,) + tuple(sample_shapes[0]))
    return np.concatenate([t.numpy().reshape(1, -1) for t in tensors], axis=1)


def check_every_call(model, args, *, rtol=1e-5, atol=1e-5, skip=(), only=None):
    """Every module call's span: fn on torch's input values gives torch's output values.

    `skip`: module class names to leave out; `only`: if given, a predicate on the qualified name
    choosing the calls to check (big models: a few blocks and the whole model).

    Also, where the span is exactly the module (no activation split off or absorbed), the eager
    module's output (hooks) equals fn's. Returns the spans, by (name, call index).
    """
    args = args if isinstance(args, tuple) else (args,)
    captured = capture(model, args)
    values = node_values(model, args)
    eager = module_outputs(model, args)
    spans = {}
    for call in captured.calls.values():
        if call.type_name.rsplit(".", 1)[-1] in skip or (only and not only(call.name)):
            continue
        span = span_function(captured, call.module, call=call.index)
        spans[(call.name, call.index)] = span
        x = _joint([values[n] for n in span.inputs], span.in_shapes)
        run = jax.jit(span.fn) if len(span.nodes) > 10 else span.fn   # compiling costs more
        got = np.asarray(run(span.params, x))
        want = _joint([values[n] for n in span.outputs], span.out_shapes)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=span.name)
        real = _flat(eager[call.module][call.index])
        if tuple(span.outputs) == tuple(call.outputs) and len(real) == len(span.outputs):
            np.testing.assert_allclose(got, _joint(real, span.out_shapes), rtol=rtol, atol=atol,
                                       err_msg=f"{span.name} (eager)")
    return captured, spans
