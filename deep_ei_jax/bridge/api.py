"""The deep-ei 0.6.4 API on torch models, over the pure-JAX measures.

Same names, signatures and defaults as deep-ei 0.6.4 (and the 0.7.0 names as aliases), so a
deep-ei user changes one import. Differences, all deliberate (README, "Migrating from deep-ei"):
`batch_size` is accepted and ignored (chunks are sized for speed); samples with an out-of-range
output are dropped consistently (deep-ei kept some in vector EI); Conv2d spans work; extra keyword
arguments `seed=`, `policy=`, `position=` and `return_info=` are ours.

Two ways to a layer (`resolve_span`): the modules deep-ei knew, joined by its activation modules,
are converted as deep-ei sees them (`convert.layer_chain`: same numbers, receptive-field Conv2d
chains, `method='exact'`); any other submodule is taken from the captured forward graph
(`convert.graph_span`: SPEC, "Any submodule as a layer"), measured at one output position where
its output has positions.

The eight layer measures are made by one specification (`_deep_ei_measure` and the parameter
tables before it): each states only its pure-JAX measure, its own parameters and how its value is
returned; the full signature (`inspect.signature`, `help()`, Sphinx) is built from that.
"""
from __future__ import annotations

import inspect
import numbers

import jax
import numpy as np
import torch

from .. import costs, measures
from .._checks import check_bins, check_range, check_seed
from ..activations import default_range
from ..binning import bin_indices
from ..information import mutual_information
from .convert import check_position, graph_span, layer_chain
from .topology import (ACTIVATION_MODULES, ACTIVATION_RANGES, ACTIVATIONS, MODULES,  # noqa: F401
                       captured_of, supported_names, topology_of)

_PARTS_ZERO_BELOW = 0.01  # deep-ei's ei_of_layer reports EI_parts below this as 0.0


def _key(seed):
    """The PRNG key: from `seed`, or drawn from torch's generator (so torch.manual_seed works)."""
    if seed is None:
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
    return jax.random.key(check_seed("seed", seed, allow_none=True))


def _devices(device):
    """JAX devices for `device` ('cpu', 'cuda', 'gpu', 'tpu', with an optional ':index', a
    torch.device or a jax Device): every local device of that platform, or the one indexed."""
    if isinstance(device, jax.Device):
        return [device]
    name = device.type if isinstance(device, torch.device) else device
    if not isinstance(name, str):
        raise TypeError(f"device must be 'cpu', 'cuda', 'gpu', a torch.device or a jax Device; "
                        f"got {device!r}")
    platform = {"cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "tpu": "tpu"}.get(name.split(":")[0])
    if platform is None:
        raise ValueError(f"device must be 'cpu', 'cuda', 'gpu' or 'tpu'; got {device!r}")
    try:
        devices = jax.local_devices(backend=platform)
    except RuntimeError:
        devices = []
    if not devices:
        raise ValueError(f"device {device!r} was asked for but JAX sees no {platform} device "
                         f"(available: {[d.platform for d in jax.devices()]})")
    suffix = name.split(":", 1)[1] if ":" in name else None
    if suffix is not None and not suffix.isdigit():
        raise ValueError(f"device must be 'cpu', 'cuda', 'gpu' or 'tpu' with an optional ':index' "
                         f"(e.g. 'cuda:0'); got {device!r}")
    index = device.index if isinstance(device, torch.device) else (
        int(suffix) if suffix is not None else None)
    if index is None:
        return devices
    if not 0 <= index < len(devices):
        raise ValueError(f"device {device!r} does not exist: JAX sees {len(devices)} "
                         f"{platform} device(s)")
    return [devices[index]]


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (numbers.Integral, np.integer)) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")


def _check_modules(layer, topology, in_layer):
    """layer (and in_layer) are torch modules; their topology nodes were made by topology_of."""
    for name, module in (("layer", layer), ("in_layer", in_layer)):
        if (module is not None or name == "layer") and not isinstance(module, torch.nn.Module):
            raise TypeError(f"{name} must be a torch module of the model (a node of topology_of's "
                            f"graph); got {module!r}")
        model = topology.graph.get("model") if isinstance(getattr(topology, "graph", None),
                                                          dict) else None
        if module is not None and model is not None and module not in topology and not any(
                module is m for m in model.modules()):
            raise ValueError(f"{name} {module!r} is not in the topology; pass a module of the "
                             f"model that topology_of was called on (it is not a submodule of "
                             f"that model)")
        if module is not None and isinstance(module, ACTIVATION_MODULES):
            raise ValueError(f"{name} {module!r} is an activation, not a layer: pass the module "
                             f"before it (its activation is applied after it)")
        if module is not None and not isinstance(module, MODULES) and \
                captured_of(topology) is None:
            reason = getattr(topology, "graph", {}).get("capture_error") if hasattr(
                topology, "graph") else None
            beyond = (f"; other modules need the captured graph, and {reason}" if reason else "")
            raise NotImplementedError(f"{name} {module!r} is not supported: it is not a module "
                                      f"that can be measured. Supported modules: "
                                      f"{supported_names()}{beyond}")
        if module is not None and hasattr(topology, "nodes") and module in topology and not {
                "input", "output"} <= set(topology.nodes[module]):
            raise ValueError(f"topology was not made by topology_of: its node {module!r} has no "
                             f"'input'/'output' attributes; use topology_of(model, input)")
        if module is not None and hasattr(topology, "nodes") and module in topology and len(
                topology.nodes[module]["input"]["shape"]) < 2:
            raise ValueError(f"topology_of was given an input without a batch dimension (the "
                             f"input of {module!r} has shape "
                             f"{topology.nodes[module]['input']['shape']}); pass a batch, e.g. "
                             f"torch.zeros((1, n_inputs))")


def _check_activation(activation):
    """A callable activation other than a known torch module must map a float batch to a batch
    of the same shape: checked now, so that a broken one fails here rather than inside a compiled
    measurement."""
    if activation is None or isinstance(activation, str) or not callable(activation) or \
            isinstance(activation, ACTIVATION_MODULES) or type(activation) is torch.nn.Identity:
        return  # names, known modules and non-callables are checked where they are converted
    if not isinstance(activation, torch.nn.Module):
        try:  # a JAX function
            if jax.eval_shape(activation, jax.ShapeDtypeStruct((2, 3), np.float32)).shape == (2, 3):
                return
        except Exception:  # noqa: BLE001 - not JAX-traceable: it runs with torch
            pass
    try:
        with torch.no_grad():
            out = activation(torch.linspace(-1.0, 1.0, 6).reshape(2, 3))
    except Exception as error:  # noqa: BLE001 - reported with the activation named
        raise ValueError(f"activation {activation!r} cannot be applied to a batch of floats: "
                         f"on a (2, 3) float32 tensor it raised {type(error).__name__}: "
                         f"{error}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 3):
        raise ValueError(f"activation {activation!r} must act elementwise (a tensor in, a tensor "
                         f"of the same shape out); on a (2, 3) tensor it returned "
                         f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")


def resolve_span(layer, topology, *, in_layer=None, in_range=None, out_range=None,
                 activation=None, batch_size=20, position=None):
    """The span a deep-ei measure of `layer` runs on, with deep-ei's default binning ranges.

    Checks the arguments as the deep-ei measures do (modules of the model, a callable
    activation, a positive `batch_size`, a position), converts the span from `in_layer`'s input
    to `layer`'s output into a pure-JAX chain and its params, and fills in missing ranges from
    the activations around the span.

    Which way: when `layer` (and `in_layer`) are nodes of the topology joined by deep-ei's
    modules and activation modules, the span is converted as deep-ei sees it
    (`convert.layer_chain`; ranges Sigmoid (0, 1), Tanh (-1, 1), ReLU (0, 10), none (-10, 10)).
    Otherwise (any other submodule, a functional activation, BatchNorm, a module called twice,
    or a `position` on a Conv2d span) it is taken from the captured forward graph
    (`convert.graph_span`): ranges by `deep_ei_jax.activations.default_range` (deep-ei's table
    where it has an entry, the activation's image of (-10, 10) otherwise).

    Args:
      layer: the module that ends the span: any submodule of the model (a leaf or a container);
        one called several times is measured at its first call.
      topology: from `topology_of(model, input)`.
      in_layer: the module that begins the span (default `layer`).
      in_range, out_range: (low, high), or None for the range of the activation before
        `in_layer` / after `layer`; out_range may be 'dynamic' (passed on as it is).
      activation: the activation after `layer`; None: the network's.
      batch_size: deep-ei's batch size, checked and otherwise unused.
      position: when the output has positions (pixels, tokens): None measures the centre
        position, a tuple of ints another one, 'all' the whole output (`deep_ei_jax.positions`).

    Returns:
      (span, in_range, out_range): a `Span` (its `chain` and `params` are what the pure-JAX
      measures take; `name` and `position` say what was measured) and the two ranges.

    Raises:
      TypeError / ValueError: a bad argument, named; a skip connection into the span (naming
      the tensor). NotImplementedError: an op or module that cannot be measured, named.
    """
    _check_batch_size(batch_size)
    _check_modules(layer, topology, in_layer)
    _check_activation(activation)
    check_position(position)
    if isinstance(in_range, str) and in_range == "dynamic":
        raise ValueError("in_range cannot be 'dynamic' (only out_range can be); pass (low, high) "
                         "or None for the range of the activation before in_layer")
    span = _modules_span(layer, topology, in_layer, activation, position)
    if span is None:
        captured = captured_of(topology)
        if captured is None:  # not traceable: deep-ei's modules only, with today's error
            layer_chain(layer, topology, in_layer=in_layer, activation=activation)
            raise ValueError(f"position {position!r} needs the captured graph, which "
                             f"torch.export could not make for this model")
        span = graph_span(captured, layer, in_layer=in_layer, activation=activation,
                          position=position)
        in_default, out_default = (default_range(span.in_activation),
                                   default_range(span.out_activation))
    else:
        in_default = ACTIVATION_RANGES[ACTIVATIONS.get(type(span.in_activation))]
        out_default = ACTIVATION_RANGES[ACTIVATIONS.get(type(span.out_activation))]
    return (span, in_default if in_range is None else in_range,
            out_default if out_range is None else out_range)


def _modules_span(layer, topology, in_layer, activation, position):
    """The span by deep-ei's modules (`layer_chain`), or None when the graph path must take it:
    a module outside the topology or a barrier in the way (with a capture to fall back on), or
    a position asked of a receptive-field span."""
    known = all(m is None or (isinstance(m, MODULES) and m in topology)
                for m in (layer, in_layer))
    if not known:
        return None
    try:
        span = layer_chain(layer, topology, in_layer=in_layer, activation=activation)
    except NotImplementedError:
        if captured_of(topology) is None:
            raise
        return None
    if span.receptive_field and position is not None:
        return None
    if not span.receptive_field and position is not None and not isinstance(position, str):
        raise ValueError(f"position {tuple(position)} was given, but the output of {layer!r} "
                         f"has no positions; pass position=None or 'all'")
    return span


def _run(measure, arguments, own):
    """Runs a pure measure with a deep-ei wrapper's bound `arguments` (names as in its
    signature), passing the wrapper's own parameters `own` under their names, on `device`'s
    platform: on the devices given, else on every local device of it (or the one indexed)."""
    a = arguments
    span, in_range, out_range = resolve_span(
        a["layer"], a["topology"], in_layer=a["in_layer"], in_range=a["in_range"],
        out_range=a["out_range"], activation=a["activation"], batch_size=a["batch_size"],
        position=a["position"])
    platform_devices = _devices(a["device"])
    devices = platform_devices if a["devices"] is None else a["devices"]
    with jax.default_device(platform_devices[0]):
        value, info = measure(_key(a["seed"]), span.chain, span.params, in_range=in_range,
                              out_range=out_range, in_bins=a["in_bins"], out_bins=a["out_bins"],
                              policy=a["policy"], devices=devices,
                              **{name: a[name] for name in own}, **a["options"])
    return value, layer_info(info, span)


class LayerInfo(measures.Info):
    """The pure measure's `Info`, plus what the deep-ei API measured.

    Attributes (besides Info's fields):
      layer: the span's name in the model ("fc1", "layer1.0", "conv1..fc3"), or None for a
        span of deep-ei's modules.
      position: the output position measured (a tuple of ints, the centre by default), 'all',
        or None (an output without positions, or a receptive-field span of deep-ei's modules,
        which is measured at an interior position).
    """

    layer = None
    position = None


def layer_info(info, span):
    """`info` as a `LayerInfo` naming `span`'s layer and position (other records as they are)."""
    if type(info) is not measures.Info:
        return info
    found = LayerInfo(*info)
    found.layer, found.position = span.name, span.position
    return found


# The one specification of the deep-ei layer measures' signatures: `layer, topology`, then each
# measure's own leading parameters, then deep-ei 0.6.4's shared tail (positional, in its order);
# keyword-only: each measure's own, then ours; then `**options` for the pure measure.
_SHARED = (("batch_size", 20), ("in_layer", None), ("in_range", None), ("in_bins", 64),
           ("out_range", None), ("out_bins", 64), ("activation", None), ("device", "cpu"))
_OURS = (("seed", None), ("policy", "drop"), ("devices", None), ("return_info", False),
         ("position", None))
_REQUIRED = inspect.Parameter.empty


def _signature(leading, keyword_only) -> inspect.Signature:
    positional, keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(
        [inspect.Parameter(name, positional) for name in ("layer", "topology")]
        + [inspect.Parameter(name, positional, default=default)
           for name, default in (*leading, *_SHARED)]
        + [inspect.Parameter(name, keyword, default=default)
           for name, default in (*keyword_only, *_OURS)]
        + [inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD)])


def _deep_ei_measure(measure, *, leading, keyword_only=()):
    """Makes the decorated function a deep-ei layer measure over the pure measure `measure`.

    The decorated function takes the pure measure's value and returns what deep-ei returns; its
    name and docstring become the measure's. The measure's signature is `_signature(leading,
    keyword_only)` (what `help()`, `inspect.signature` and Sphinx show); the parameters in
    `leading` and `keyword_only` ((name, default) pairs, `_REQUIRED` for no default) are passed
    to `measure` under their own names.
    """
    signature = _signature(leading, keyword_only)
    own = tuple(name for name, _ in (*leading, *keyword_only))

    def decorate(convert):
        def wrapper(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{convert.__name__}(): {error}") from None
            bound.apply_defaults()
            value, info = _run(measure, bound.arguments, own)
            value = convert(value)
            return (value, info) if bound.arguments["return_info"] else value

        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(wrapper, name, getattr(convert, name))
        wrapper.__signature__ = signature
        return wrapper
    return decorate


_THRESHOLD = ("threshold", 0.05)
_ADAPTIVE = ("samples", None)


@_deep_ei_measure(measures.ei_parts, leading=(_THRESHOLD, _ADAPTIVE, ("extrapolate", False)))
def ei_of_layer(value):
    """EI_parts of a layer: the sum over (input A, output B) pairs of I(x_A; y_B) under uniform
    noise on every input (deep-ei 0.6.4 `ei_of_layer`, 0.7.0 `ei_parts`).

    Args:
      layer: the submodule that ends the layer: a node of `topology`, or any other submodule
        of the model (a leaf or a container, measured on the captured graph).
      topology: from `topology_of(model, input)`.
      threshold: adaptive stopping threshold, used when `samples` is None.
      samples: a fixed number of samples.
      extrapolate: fit a/n^e + C to estimates at 100k..2M samples and return C.
      batch_size: accepted for compatibility; chunk sizes are chosen for speed.
      in_layer: the module that begins the layer (default `layer`).
      in_range, out_range: (low, high); None infers them from the activations around the layer;
        out_range may be 'dynamic'.
      in_bins, out_bins: bin counts; out_bins may be 'dynamic'.
      activation: the activation after `layer` (torch module or callable); None: the network's.
      position: when `layer`'s output has positions (pixels, tokens), which one to measure:
        None the centre (n // 2 on each position axis), a tuple of ints, or 'all' for the whole
        output (see `deep_ei_jax.positions`); the Info (`return_info`) names it.
      device: 'cpu', 'cuda'/'gpu' (':index' optional), a torch.device or a jax Device: where
        JAX computes.
      devices: several devices to shard samples over (default: every local device of
        `device`'s platform, or the one it indexes); results are identical to one device's.
      seed: an explicit seed; None draws one from torch's generator.
      policy: 'drop' (default) or 'clip' for output values outside out_range.
      return_info: also return the `Info` record.
      options: keyword-only extras passed to the pure-JAX measure (`deep_ei_jax.pure`), e.g.
        `method='exact'` (EI_parts and sensitivity of an affine span, no sampling),
        `estimator='miller_madow'|'jackknife'|'nsb'|'chao_shen'`, `bias_warning=0.1` (warn when
        the estimated plug-in bias, `Info.bias`, exceeds this fraction of the value; None: never),
        `shuffle_correction=k` (EI_parts), `error_bars=k` (batch-means standard error and
        95% interval in the Info), `significance=True` (per-edge p-values in the Info, matrices),
        `memory_budget`, `max_samples`.

    Returns:
      float bits (0.0 when below 0.01, as deep-ei; NaN when nothing was counted); with
      `return_info`, `(value, Info)`.
    """
    return 0.0 if value < _PARTS_ZERO_BELOW else float(value)


@_deep_ei_measure(measures.ei_parts_matrix, leading=(_ADAPTIVE,), keyword_only=(_THRESHOLD,))
def ei_of_layer_matrix(value):
    """The EI_parts matrix [n_in, n_out] (rows: inputs) as a numpy array (0.7.0 `ei_parts_matrix`).
    `samples=None` is adaptive with `threshold`. Other arguments as `ei_of_layer`."""
    return value


@_deep_ei_measure(measures.sensitivity, leading=(("samples", 500),))
def sensitivity_of_layer(value):
    """Sensitivity: the sum over pairs of I(x_A; y_B) when only A is noised (uniform on in_range)
    and every other input is 0 (0.7.0 `sensitivity`). Other arguments as `ei_of_layer`."""
    return value


@_deep_ei_measure(measures.sensitivity_matrix, leading=(("samples", 500),))
def sensitivity_of_layer_matrix(value):
    """The sensitivity matrix [n_in, n_out] as a numpy array (0.7.0 `sensitivity_matrix`)."""
    return value


@_deep_ei_measure(measures.ei, leading=(_THRESHOLD, _ADAPTIVE))
def vector_ei_of_layer(value):
    """Vector EI: I(X; Y) between the whole binned input and output vectors (0.7.0 `ei`).
    `samples=None` doubles until an estimate moves by less than `threshold` bits (deep-ei's
    rule)."""
    return value


@_deep_ei_measure(measures.eis_between_groups, leading=(("groups", _REQUIRED), _ADAPTIVE),
                  keyword_only=(_THRESHOLD,))
def eis_between_groups(value):
    """I(X_G; Y_H) for each (G, H) in `groups`, a list of (input indices, output indices) over the
    flattened inputs and outputs. Returns a list of floats. `samples=None` is adaptive."""
    return list(value)


@_deep_ei_measure(measures.ei_and_ei_parts, leading=(_ADAPTIVE,), keyword_only=(_THRESHOLD,))
def vector_and_pairwise_ei(value):
    """(vector EI, EI_parts) computed from the same samples. `samples=None` is adaptive on the
    vector EI."""
    return tuple(float(v) for v in value)


@_deep_ei_measure(measures.degeneracy,
                  leading=(_THRESHOLD, _ADAPTIVE, ("sensitivity_samples", 500)),
                  keyword_only=(("ei_kind", "vector"),))
def degeneracy_of_layer(value):
    """Degeneracy = sensitivity - EI (`ei_kind='vector'`, default) or sensitivity - EI_parts
    (`ei_kind='parts'`, as the paper also plots). EI uses `samples`/`threshold`, sensitivity
    `sensitivity_samples`; both the same binning."""
    return float(value)


def MI(x, y, bins=32, range=((0, 1), (0, 1))):  # noqa: A002 (deep-ei's argument name)
    """Plug-in mutual information in bits between two equal-length series (torch tensors or
    arrays), binned with `bins` (int or (x_bins, y_bins)) equal-width bins over `range`.
    Pairs with a value outside its range are left out, as in every measure here."""
    x, y = (_series(name, v) for name, v in (("x", x), ("y", y)))
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length; got {x.size} and {y.size}")
    if isinstance(bins, (tuple, list)) and len(bins) != 2:
        raise ValueError(f"bins must be an int or a pair (x_bins, y_bins); got {bins!r}")
    x_bins, y_bins = (bins, bins) if not isinstance(bins, (tuple, list)) else bins
    x_bins, y_bins = check_bins("bins", x_bins), check_bins("bins", y_bins)
    if isinstance(range, str) or not hasattr(range, "__len__") or len(range) != 2:
        raise ValueError(f"range must be a pair ((x_low, x_high), (y_low, y_high)); got {range!r}")
    x_range = check_range("range[0]", range[0])
    y_range = check_range("range[1]", range[1])
    xi, x_in = bin_indices(x, *x_range, x_bins)
    yi, y_in = bin_indices(y, *y_range, y_bins)
    keep = np.asarray(x_in & y_in)
    joint = np.asarray(xi)[keep].astype(np.int64) * y_bins + np.asarray(yi)[keep]
    counts = np.bincount(joint, minlength=x_bins * y_bins).reshape(x_bins, y_bins)
    return float(mutual_information(counts))


def _series(name, values):
    """A flat float32 array of a tensor or array-like of numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float()
    try:
        array = np.asarray(values)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"dtype {array.dtype}")
        return array.astype(np.float32).ravel()
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a series of numbers (a tensor or array); got "
                        f"{type(values).__name__} ({error})") from None


def estimate_cost(layer, topology, measure: str = "ei_parts", samples: int = 10_000, *,
                  in_layer=None, in_range=None, out_range=None, in_bins: int = 64,
                  out_bins=64, activation=None, device: str = "cpu", seed=None,
                  position=None, **options):
    """What measuring `layer` will cost, before running it (`deep_ei_jax.costs.estimate`).

    Takes a deep-ei measure's arguments (the span, ranges, bins, activation, device, seed,
    position and any pure-measure options such as `method`, `memory_budget`, `estimator`) and
    returns a `Cost`: the counting backend, the work, the bytes of counts held at once and the
    estimated seconds on this machine (the counter's rate measured here on synthetic bins).

    Args:
      measure: "ei_parts" (`ei_of_layer`, `ei_of_layer_matrix`), "ei" (vector EI) or
        "sensitivity" (per input: `samples` each).
      samples: the call's fixed number of samples.
    """
    span, in_range, out_range = resolve_span(layer, topology, in_layer=in_layer,
                                             in_range=in_range, out_range=out_range,
                                             activation=activation, position=position)
    with jax.default_device(_devices(device)[0]):
        return costs.estimate(_key(seed), span.chain, span.params, measure=measure,
                              samples=samples, in_range=in_range, out_range=out_range,
                              in_bins=in_bins, out_bins=out_bins, **options)


# deep-ei 0.7.0 names
ei = vector_ei_of_layer
ei_parts = ei_of_layer
ei_parts_matrix = ei_of_layer_matrix
sensitivity = sensitivity_of_layer
sensitivity_matrix = sensitivity_of_layer_matrix
