"""JAX-native models to the library's `(Chain, params)`: Flax (linen and NNX) and Equinox MLPs.

Usage::

    chain, params = from_flax_linen(module, variables, in_shape=(4,))
    chain, params = from_flax_nnx(model, in_shape=(4,))
    chain, params = from_equinox(mlp, in_shape=(4,))
    value, info = pure.ei(jax.random.key(0), chain, params, in_bins=8, out_bins=8)

A converted model is one `Dense` layer per linear layer (params `{"w": [n_in, n_out], "b":
[n_out]}`, `b` left out where the layer has none), each followed by its activation: 'identity',
'sigmoid', 'tanh' or 'relu'. The whole chain is a span (its first layer's inputs noised, its last
layer's outputs measured); `split_layers` gives one single-layer chain per linear layer.

What converts: linear layers (`flax.linen.Dense`, `flax.nnx.Linear`, `equinox.nn.Linear`),
elementwise activations recognised by their values (any function equal to one of the four on a
probe, e.g. `jax.nn.sigmoid`, `nnx.relu`, `lambda x: 1 / (1 + jnp.exp(-x))`), dropout in
deterministic/inference mode (a no-op), and containers (`nn.Sequential`, `nnx.Sequential`,
`eqx.nn.Sequential`, `eqx.nn.MLP`, a list or tuple, or a module of your own whose `__call__`
chains these). Anything else a forward pass goes through (convolutions, normalisation, residual
connections, other activations, reshapes) raises `NotImplementedError` naming it: build the
`Chain` by hand for those (`pure.Dense(activation=any_jax_function)` accepts other activations).

How a Flax module is read. Flax modules with a `__call__` of their own are only visible through
what they compute, so the forward pass is run once with every linear layer's output replaced by
a known probe: the next linear layer's input (or the model's output) then shows which activation
came in between, and a linen interceptor (or, for NNX, a copy of the model whose linear layers
record their calls) shows every module called, in order. Finally every converted chain is checked
against the model's own forward pass on random inputs; a difference raises `ValueError`.

The adapters need the optional extras (`pip install 'deep_ei_jax[flax]'` or `[equinox]`); this
module imports Flax or Equinox only when the matching function is called.
"""
from __future__ import annotations

import contextvars
import functools
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .layers import ACTIVATIONS, Chain, Dense, apply

__all__ = ["from_flax_linen", "from_flax_nnx", "from_equinox", "split_layers"]

_BATCH = 16           # samples of the probe and check batches
_PROBE_RANGE = 8.0    # linear-layer outputs are replaced by values spread over [-8, 8]
_CHECK_RTOL, _CHECK_ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------- shared pieces

class _Linear(NamedTuple):
    """One linear layer as the model holds it: w [n_in, n_out], b [n_out] or None."""

    name: str
    w: np.ndarray
    b: np.ndarray | None


class _Activation(NamedTuple):
    """An elementwise function applied between linear layers, with where it was found."""

    name: str
    fn: Callable


def _check_in_shape(in_shape) -> tuple:
    if isinstance(in_shape, (numbers.Integral, np.integer)) and not isinstance(in_shape, bool):
        in_shape = (int(in_shape),)
    if not isinstance(in_shape, (tuple, list)) or not in_shape or not all(
            isinstance(d, (numbers.Integral, np.integer)) and not isinstance(d, bool) and d > 0
            for d in in_shape):
        raise ValueError("in_shape must be the per-sample input shape, a tuple of positive ints "
                         f"such as (4,); got {in_shape!r}")
    return tuple(int(d) for d in in_shape)


def _probe_values(shape) -> np.ndarray:
    """Deterministic values spread over [-8, 8] (both signs, zero included), of `shape`."""
    size = int(np.prod(shape))
    return np.linspace(-_PROBE_RANGE, _PROBE_RANGE, max(size, 2), dtype=np.float32)[
        np.arange(size) * 7919 % max(size, 2)].reshape(shape)


def _match_activation(z, y) -> str | None:
    """The name of the known activation that maps z to y (elementwise), or None."""
    z, y = np.asarray(z, np.float32), np.asarray(y, np.float32)
    if z.shape != y.shape:
        return None
    for name in ("identity", "relu", "sigmoid", "tanh"):
        expected = np.asarray(ACTIVATIONS[name](jnp.asarray(z)), np.float32)
        if np.allclose(y, expected, rtol=1e-5, atol=1e-6):
            return name
    return None


def _activation_name(activation: _Activation) -> str:
    """'identity', 'sigmoid', 'tanh' or 'relu' for an activation function, by its values."""
    for name, fn in ACTIVATIONS.items():
        if activation.fn is fn:
            return name
    z = _probe_values((4, 25))
    try:
        y = activation.fn(jnp.asarray(z))
    except Exception as error:  # noqa: BLE001 - reported with the activation's name
        raise NotImplementedError(
            f"cannot convert the activation {activation.name}: calling it on a batch failed "
            f"({type(error).__name__}: {error}); supported activations are identity, sigmoid, "
            "tanh and relu") from None
    name = _match_activation(z, y)
    if name is None:
        raise NotImplementedError(
            f"cannot convert the activation {activation.name}: it is not identity, sigmoid, tanh "
            "or relu; build the Chain by hand with pure.Dense(activation=<a JAX function>)")
    return name


def _assemble(items, in_shape: tuple) -> tuple[Chain, tuple]:
    """Linear layers and the activations after each -> (Chain, params).

    Args:
      items: _Linear and _Activation (with its name resolved) entries in forward order.
      in_shape: the per-sample input shape.
    """
    specs, params, names, current = [], [], [], None
    for item in items:
        if isinstance(item, _Linear):
            if current is not None:
                specs.append(Dense(activation=current))
            layer = {"w": np.asarray(item.w, np.float32)}
            if item.b is not None:
                layer["b"] = np.asarray(item.b, np.float32)
            params.append(layer)
            names.append(item.name)
            current = "identity"
            continue
        activation = _activation_name(item)
        if activation == "identity":
            continue
        if current is None:
            raise NotImplementedError(
                f"an activation ({item.name}) comes before the first linear layer: it transforms "
                "the model's inputs, which a Chain cannot; convert from the first linear layer on")
        if current != "identity":
            raise NotImplementedError(
                f"two activations ({current} and {item.name}) follow linear layer {names[-1]}; "
                "a Chain has one activation per layer")
        current = activation
    if current is None:
        raise ValueError("the model has no linear layer to convert")
    specs.append(Dense(activation=current))
    n_in = params[0]["w"].shape[0]
    if in_shape[-1] != n_in:
        raise ValueError(f"in_shape must end with the first linear layer's input size {n_in}; "
                         f"got {in_shape}")
    for (prev_name, prev), (name, layer) in zip(zip(names, params), zip(names[1:], params[1:])):
        if prev["w"].shape[1] != layer["w"].shape[0]:
            raise ValueError(f"linear layer {name} takes {layer['w'].shape[0]} inputs but "
                             f"{prev_name} gives {prev['w'].shape[1]}")
    return Chain(layers=tuple(specs), in_shape=in_shape), tuple(params)


def _check_against(chain: Chain, params: tuple, forward: Callable, what: str) -> None:
    """Raises ValueError unless the chain reproduces `forward` on random inputs."""
    x = np.random.default_rng(0).uniform(-2.0, 2.0, (_BATCH,) + chain.in_shape).astype(np.float32)
    expected = np.asarray(forward(jnp.asarray(x)), np.float32)
    got = np.asarray(apply(chain, params, jnp.asarray(x)), np.float32)
    if expected.shape != got.shape or not np.allclose(got, expected, rtol=_CHECK_RTOL,
                                                       atol=_CHECK_ATOL):
        detail = (f"output shape {got.shape} vs {expected.shape}" if expected.shape != got.shape
                  else f"max |difference| {float(np.max(np.abs(got - expected))):.3g}")
        raise ValueError(f"the converted chain does not reproduce {what} ({detail}): its forward "
                         "pass does something besides linear layers and elementwise activations")


def _run_probe(forward: Callable, in_shape: tuple):
    """Runs the probe forward pass; an error other than ours is blamed on the input shape."""
    try:
        return forward()
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - reported with the shape that was tried
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"the model does not run on inputs of in_shape {in_shape} "
                         f"({type(error).__name__}: {first_line}); check in_shape") from error


def _record_activations(records, model_input, model_output) -> list:
    """Linear calls recorded with probe outputs -> items with the activations in between.

    Args:
      records: (name, w, b, input seen, probe returned) per linear-layer call, in order.
      model_input, model_output: the model's input batch and its output with the probes.
    """
    if not records:
        raise ValueError("the model called no linear layer on its input")
    first_input = np.asarray(records[0][3])
    if first_input.shape != np.shape(model_input) or not np.allclose(first_input, model_input):
        raise NotImplementedError(
            f"the inputs reach the first linear layer ({records[0][0]}) transformed (shape "
            f"{first_input.shape}, model input {np.shape(model_input)}): only linear layers and "
            "activations can be converted; pass inputs of the first linear layer's shape")
    items = []
    for index, (name, w, b, _, probe) in enumerate(records):
        items.append(_Linear(name, w, b))
        seen = model_output if index + 1 == len(records) else records[index + 1][3]
        after = "the output" if index + 1 == len(records) else records[index + 1][0]
        activation = _match_activation(probe, seen)
        if activation is None:
            raise NotImplementedError(
                f"between linear layer {name} and {after} the model does something other than "
                "an identity, sigmoid, tanh or relu activation (another activation, a "
                "normalisation, a residual connection?); build the Chain by hand")
        items.append(_Activation(activation, ACTIVATIONS[activation]))
    return items


# ---------------------------------------------------------------- Flax linen

def from_flax_linen(module, params, in_shape) -> tuple[Chain, tuple]:
    """Converts a Flax linen MLP (Dense layers and activations) into `(Chain, params)`.

    Args:
      module: a `flax.linen.Module`: an `nn.Sequential` of `nn.Dense` layers and activation
        functions, or a module whose `__call__` applies Dense layers and activations in turn.
      params: its variables as `module.init` returns them (`{"params": ...}`), or the inner
        `"params"` dict.
      in_shape: the per-sample input shape, e.g. `(4,)` (or an int).

    Returns:
      (Chain of `Dense` layers, params: one `{"w": [n_in, n_out], "b": [n_out]}` per layer).

    Raises:
      NotImplementedError: naming a module other than Dense, Sequential or deterministic Dropout
        that the forward pass calls (Conv, BatchNorm, LayerNorm, ...), or an operation between
        two Dense layers that is not an identity, sigmoid, tanh or relu activation.
      ValueError: for a bad `in_shape`, a model without Dense layers, or a chain that does not
        reproduce the module's output.
    """
    from flax import linen as nn
    in_shape = _check_in_shape(in_shape)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen.Module; got {type(module).__name__}")
    variables = params if isinstance(params, dict) and "params" in params else {"params": params}
    records = []

    def interceptor(next_fun, args, kwargs, context):
        target = context.module
        if context.method_name != "__call__" or target is module:
            return next_fun(*args, **kwargs)
        where = f"{type(target).__name__} at '{'/'.join(map(str, target.path))}'"
        if type(target) is nn.Dense:
            output = next_fun(*args, **kwargs)
            layer = target.variables["params"]
            probe = _probe_values(np.shape(output))
            records.append((where, np.asarray(layer["kernel"]),
                            np.asarray(layer["bias"]) if "bias" in layer else None,
                            np.asarray(args[0]), probe))
            return jnp.asarray(probe, output.dtype)
        if type(target) is nn.Dropout:
            deterministic = kwargs.get("deterministic", args[1] if len(args) > 1 else None)
            if deterministic is None:
                deterministic = target.deterministic
            if deterministic or target.rate == 0:
                return next_fun(*args, **kwargs)
            raise NotImplementedError(f"{where} is in training mode; set deterministic=True")
        if isinstance(target, nn.Sequential) or not type(target).__module__.startswith("flax."):
            return next_fun(*args, **kwargs)  # a container: its calls are intercepted one by one
        raise NotImplementedError(f"cannot convert {where}: supported are Dense layers, "
                                  "activations, deterministic Dropout and containers of them")

    x = _probe_values((_BATCH,) + in_shape) / _PROBE_RANGE
    with nn.intercept_methods(interceptor):
        output = _run_probe(lambda: module.apply(variables, jnp.asarray(x)), in_shape)
    chain, chain_params = _assemble(_record_activations(records, x, output), in_shape)
    _check_against(chain, chain_params, lambda batch: module.apply(variables, batch),
                   f"the linen module {type(module).__name__}")
    return chain, chain_params


# ---------------------------------------------------------------- Flax NNX

# What the NNX recording classes report to, set for the duration of one conversion.
_NNX_RECORDS: contextvars.ContextVar = contextvars.ContextVar("deep_ei_jax_nnx_records")
_NNX_PATHS: contextvars.ContextVar = contextvars.ContextVar("deep_ei_jax_nnx_paths")


@functools.cache
def _nnx_classes():
    """Subclasses of nnx.Linear and nnx.Dropout that report their calls (made once)."""
    from flax import nnx

    class RecordingLinear(nnx.Linear):
        def __call__(self, inputs, *args, **kwargs):
            output = super().__call__(inputs, *args, **kwargs)
            probe = _probe_values(np.shape(output))
            bias = None if self.bias is None else np.asarray(self.bias[...])
            _NNX_RECORDS.get().append((_NNX_PATHS.get()[id(self)], np.asarray(self.kernel[...]),
                                       bias, np.asarray(inputs), probe))
            return jnp.asarray(probe, output.dtype)

    class CheckedDropout(nnx.Dropout):
        def __call__(self, inputs, *args, **kwargs):
            output = super().__call__(inputs, *args, **kwargs)
            if np.array_equal(np.asarray(output), np.asarray(inputs)):
                return output
            raise NotImplementedError(f"Dropout at {_NNX_PATHS.get()[id(self)]} is in training "
                                      "mode; call model.eval() first")

    return RecordingLinear, CheckedDropout


@functools.cache
def _unsupported_nnx(module_type):
    """A subclass of an NNX module type whose call raises, naming the module (made once)."""
    def refuse(self, *args, **kwargs):
        raise NotImplementedError(
            f"cannot convert {module_type.__name__} at {_NNX_PATHS.get()[id(self)]}: supported "
            "are Linear layers, activations, Dropout in eval mode and containers of them")
    return type(f"Unsupported{module_type.__name__}", (module_type,), {"__call__": refuse})


def from_flax_nnx(model, in_shape) -> tuple[Chain, tuple]:
    """Converts a Flax NNX MLP (Linear layers and activations) into `(Chain, params)`.

    Args:
      model: a `flax.nnx.Module`: an `nnx.Sequential` of `nnx.Linear` layers and activation
        functions, a single `nnx.Linear`, or a module whose `__call__` applies Linear layers and
        activations in turn. It is not modified (a copy is traced).
      in_shape: the per-sample input shape, e.g. `(4,)` (or an int).

    Returns:
      (Chain of `Dense` layers, params: one `{"w": [n_in, n_out], "b": [n_out]}` per layer).

    Raises:
      NotImplementedError: naming a module other than Linear, Sequential or Dropout in eval mode
        that the forward pass calls, or an operation between two Linear layers that is not an
        identity, sigmoid, tanh or relu activation.
      ValueError: for a bad `in_shape`, a model without Linear layers, or a chain that does not
        reproduce the model's output.
    """
    from flax import nnx
    in_shape = _check_in_shape(in_shape)
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module; got {type(model).__name__}")
    recording_linear, checked_dropout = _nnx_classes()
    copy = nnx.clone(model)
    paths = {}
    for path, module in nnx.iter_modules(copy):
        where = "'" + "/".join(map(str, path)) + "'" if path else "the top level"
        paths[id(module)] = where
        if type(module) is nnx.Linear:
            module.__class__ = recording_linear
        elif type(module) is nnx.Dropout:
            module.__class__ = checked_dropout
        elif type(module).__module__.startswith("flax.") and \
                not isinstance(module, nnx.Sequential):
            module.__class__ = _unsupported_nnx(type(module))
    x = _probe_values((_BATCH,) + in_shape) / _PROBE_RANGE
    records = []
    records_token, paths_token = _NNX_RECORDS.set(records), _NNX_PATHS.set(paths)
    try:
        output = np.asarray(_run_probe(lambda: copy(jnp.asarray(x)), in_shape))
    finally:
        _NNX_RECORDS.reset(records_token)
        _NNX_PATHS.reset(paths_token)
    records = [(f"Linear at {where}", w, b, seen, probe)
               for where, w, b, seen, probe in records]
    chain, chain_params = _assemble(_record_activations(records, x, output), in_shape)
    _check_against(chain, chain_params, model, f"the NNX model {type(model).__name__}")
    return chain, chain_params


# ---------------------------------------------------------------- Equinox

def _equinox_items(model, where: str, eqx) -> list:
    """Linear layers and activations of an Equinox model, in forward order."""
    if isinstance(model, eqx.nn.Linear):
        if model.in_features == "scalar" or model.out_features == "scalar":
            raise NotImplementedError(f"cannot convert the Linear at {where}: it has a scalar "
                                      "input or output; use integer feature sizes")
        weight = np.asarray(model.weight)
        bias = None if model.bias is None else np.asarray(model.bias)
        return [_Linear(f"Linear at {where}", weight.T, bias)]
    if isinstance(model, eqx.nn.MLP):
        layers = []
        for index, layer in enumerate(model.layers):
            if np.ndim(layer.weight) == 3:  # scan=True stacks the hidden layers
                for k in range(layer.weight.shape[0]):
                    layers.append((f"{where}.layers[{index}][{k}]", jax.tree_util.tree_map(
                        lambda a, k=k: a[k] if eqx.is_array(a) else a, layer)))
            else:
                layers.append((f"{where}.layers[{index}]", layer))
        items = []
        for index, (name, layer) in enumerate(layers):
            items += _equinox_items(layer, name, eqx)
            last = index + 1 == len(layers)
            items.append(_Activation(f"{where}.{'final_activation' if last else 'activation'}",
                                     model.final_activation if last else model.activation))
        return items
    if isinstance(model, (eqx.nn.Sequential, list, tuple)):
        members = model.layers if isinstance(model, eqx.nn.Sequential) else model
        items = []
        for index, member in enumerate(members):
            items += _equinox_items(member, f"{where}[{index}]", eqx)
        return items
    if isinstance(model, eqx.nn.Identity):
        return []
    if isinstance(model, eqx.nn.Dropout):
        if model.inference:
            return []
        raise NotImplementedError(f"the Dropout at {where} is in training mode; use "
                                  "eqx.nn.inference_mode(model) first")
    if isinstance(model, eqx.nn.Lambda):
        return [_Activation(f"{where} (Lambda of {getattr(model.fn, '__name__', model.fn)!r})",
                            model.fn)]
    if isinstance(model, eqx.Module):
        raise NotImplementedError(f"cannot convert {type(model).__name__} at {where}: supported "
                                  "are Linear, MLP, Sequential, Lambda, Identity and Dropout in "
                                  "inference mode")
    if callable(model):
        return [_Activation(f"{where} ({getattr(model, '__name__', repr(model))})", model)]
    raise TypeError(f"cannot convert {where}: expected an Equinox module or an activation "
                    f"function; got {type(model).__name__}")


def _equinox_forward(model, eqx) -> Callable:
    """The model's forward pass on a batch (Equinox modules map one sample)."""
    if isinstance(model, (list, tuple)):
        def run(x):
            for member in model:
                x = _equinox_forward(member, eqx)(x)
            return x
        return run
    if isinstance(model, eqx.Module):
        return jax.vmap(lambda sample: model(sample))
    return model


def from_equinox(model, in_shape) -> tuple[Chain, tuple]:
    """Converts an Equinox MLP into `(Chain, params)`.

    Args:
      model: an `eqx.nn.MLP`, an `eqx.nn.Sequential`, or a list or tuple, of `eqx.nn.Linear`
        layers and activations (`eqx.nn.Lambda(jax.nn.relu)`, or plain functions in a list);
        `eqx.nn.Identity` and `eqx.nn.Dropout` in inference mode are skipped.
      in_shape: the per-sample input shape, e.g. `(4,)` (or an int).

    Returns:
      (Chain of `Dense` layers, params: one `{"w": [n_in, n_out], "b": [n_out]}` per layer; `w`
      is the transpose of Equinox's `[out, in]` weight).

    Raises:
      NotImplementedError: naming a module that is not one of those above (Conv2d, LayerNorm,
        ...), a learnt or unsupported activation, or a Linear with scalar features.
      ValueError: for a bad `in_shape`, a model without Linear layers, or a chain that does not
        reproduce the model's output.
    """
    import equinox as eqx
    in_shape = _check_in_shape(in_shape)
    items = _equinox_items(model, "model", eqx)
    chain, params = _assemble(items, in_shape)
    _check_against(chain, params, _equinox_forward(model, eqx),
                   f"the Equinox model {type(model).__name__}")
    return chain, params


# ---------------------------------------------------------------- one layer at a time

def split_layers(chain: Chain, params) -> tuple[tuple[Chain, tuple], ...]:
    """One `(Chain, params)` per layer of a chain of Dense layers, to measure layer by layer.

    Args:
      chain: a chain of `Dense` layers, e.g. from one of the adapters.
      params: its params, one dict per layer.

    Returns:
      A tuple of `(Chain((layer,), in_shape), (layer_params,))`, the first with the chain's
      input shape and each next one with the previous layer's output width.
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a deep_ei_jax Chain; got {type(chain).__name__}")
    if not isinstance(params, (tuple, list)) or len(params) != len(chain.layers):
        raise ValueError(f"params must hold one dict per layer ({len(chain.layers)}); got "
                         f"{len(params) if isinstance(params, (tuple, list)) else params!r}")
    parts, in_shape = [], tuple(chain.in_shape)
    for index, (spec, layer) in enumerate(zip(chain.layers, params)):
        if not isinstance(spec, Dense):
            raise ValueError(f"split_layers needs a chain of Dense layers; layer {index} is "
                             f"{type(spec).__name__}")
        parts.append((Chain(layers=(spec,), in_shape=in_shape), (layer,)))
        in_shape = in_shape[:-1] + (int(np.shape(layer["w"])[1]),)
    return tuple(parts)

