"""The deep-ei 0.6.4 API on torch models, over the pure-JAX measures.

Same names, signatures and defaults as deep-ei 0.6.4 (and the 0.7.0 names as aliases), so a
deep-ei user changes one import. Differences, all deliberate (README, "Migrating from deep-ei"):
`batch_size` is accepted and ignored (chunks are sized for speed); samples with an out-of-range
output are dropped consistently (deep-ei kept some in vector EI); Conv2d spans work; extra keyword
arguments `seed=`, `policy=` and `return_info=` are ours.
"""
from __future__ import annotations

import numbers

import jax
import numpy as np
import torch

from .. import measures
from .._checks import check_bins, check_range, check_seed
from ..binning import bin_indices
from ..information import mutual_information
from .convert import layer_chain
from .topology import (ACTIVATION_RANGES, ACTIVATIONS, MODULES, supported_names,  # noqa: F401
                       topology_of)

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
        if module is not None and type(module) in ACTIVATIONS:
            raise ValueError(f"{name} {module!r} is an activation, not a layer: pass the module "
                             f"before it (its activation is applied after it)")
        if module is not None and not isinstance(module, MODULES):
            raise NotImplementedError(f"{name} {module!r} is not supported: it is not a module "
                                      f"that can be measured. Supported modules: "
                                      f"{supported_names()}")
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
            type(activation) in ACTIVATIONS or type(activation) is torch.nn.Identity:
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


def _resolve(layer, topology, in_layer, in_range, out_range, activation, batch_size):
    """The span and binning ranges with deep-ei's defaults from the topology."""
    _check_batch_size(batch_size)
    _check_modules(layer, topology, in_layer)
    _check_activation(activation)
    if isinstance(in_range, str) and in_range == "dynamic":
        raise ValueError("in_range cannot be 'dynamic' (only out_range can be); pass (low, high) "
                         "or None for the range of the activation before in_layer")
    span = layer_chain(layer, topology, in_layer=in_layer, activation=activation)
    if in_range is None:
        in_range = ACTIVATION_RANGES[ACTIVATIONS.get(type(span.in_activation))]
    if out_range is None:
        out_range = ACTIVATION_RANGES[ACTIVATIONS.get(type(span.out_activation))]
    return span, in_range, out_range


def _run(measure, layer, topology, *, in_layer, in_range, out_range, activation, batch_size,
         device, seed, devices, **kwargs):
    """Runs a pure measure on the span with deep-ei's defaults, on `device`'s platform: on the
    devices given, else on every local device of it (or the one `device` indexes)."""
    span, in_range, out_range = _resolve(layer, topology, in_layer, in_range, out_range,
                                         activation, batch_size)
    platform_devices = _devices(device)
    devices = platform_devices if devices is None else devices
    with jax.default_device(platform_devices[0]):
        return measure(_key(seed), span.chain, span.params, in_range=in_range,
                       out_range=out_range, devices=devices, **kwargs)


def _result(value, info, return_info):
    return (value, info) if return_info else value


def ei_of_layer(layer, topology, threshold=0.05, samples=None, extrapolate=False, batch_size=20,
                in_layer=None, in_range=None, in_bins=64, out_range=None, out_bins=64,
                activation=None, device="cpu", *, seed=None, policy="drop", devices=None,
                return_info=False,
                **options):
    """EI_parts of a layer: the sum over (input A, output B) pairs of I(x_A; y_B) under uniform noise
    on every input (deep-ei 0.6.4 `ei_of_layer`, 0.7.0 `ei_parts`).

    Args:
      layer: the module (a node of `topology`) that ends the layer.
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
      device: 'cpu', 'cuda'/'gpu' (':index' optional), a torch.device or a jax Device: where
        JAX computes.
      devices: several devices to shard samples over (default: every local device of
        `device`'s platform, or the one it indexes); results are identical to one device's.
      seed: an explicit seed; None draws one from torch's generator.
      policy: 'drop' (default) or 'clip' for output values outside out_range.
      return_info: also return the `Info` record.
      options: keyword-only extras passed to the pure-JAX measure (`deep_ei_jax.pure`), e.g.
        `method='exact'` (EI_parts and sensitivity of one dense layer, no sampling),
        `estimator='miller_madow'|'jackknife'`, `error_bars=k` (batch-means standard error and
        95% interval in the Info), `significance=True` (per-edge p-values in the Info, matrices),
        `memory_budget`, `max_samples`.

    Returns:
      float bits (0.0 when below 0.01, as deep-ei).
    """
    value, info = _run(measures.ei_parts, layer, topology, in_layer=in_layer, in_range=in_range,
                       out_range=out_range, activation=activation, batch_size=batch_size,
                       device=device, seed=seed, in_bins=in_bins, out_bins=out_bins,
                       samples=samples, threshold=threshold, extrapolate=extrapolate,
                       policy=policy,
                       devices=devices, **options)
    value = 0.0 if value < _PARTS_ZERO_BELOW else float(value)
    return _result(value, info, return_info)


def ei_of_layer_matrix(layer, topology, samples=None, batch_size=20, in_layer=None, in_range=None,
                       in_bins=64, out_range=None, out_bins=64, activation=None, device="cpu", *,
                       threshold=0.05, seed=None, policy="drop", devices=None,
                       return_info=False,
                **options):
    """The EI_parts matrix [n_in, n_out] (rows: inputs) as a numpy array (0.7.0 `ei_parts_matrix`).
    `samples=None` is adaptive with `threshold`. Other arguments as `ei_of_layer`."""
    value, info = _run(measures.ei_parts_matrix, layer, topology, in_layer=in_layer,
                       in_range=in_range, out_range=out_range, activation=activation,
                       batch_size=batch_size, device=device, seed=seed, in_bins=in_bins,
                       out_bins=out_bins, samples=samples, threshold=threshold, policy=policy,
                       devices=devices, **options)
    return _result(value, info, return_info)


def sensitivity_of_layer(layer, topology, samples=500, batch_size=20, in_layer=None,
                         in_range=None, in_bins=64, out_range=None, out_bins=64, activation=None,
                         device="cpu", *, seed=None, policy="drop", devices=None,
                return_info=False,
                **options):
    """Sensitivity: the sum over pairs of I(x_A; y_B) when only A is noised (uniform on in_range)
    and every other input is 0 (0.7.0 `sensitivity`). Other arguments as `ei_of_layer`."""
    value, info = _run(measures.sensitivity, layer, topology, in_layer=in_layer,
                       in_range=in_range, out_range=out_range, activation=activation,
                       batch_size=batch_size, device=device, seed=seed, in_bins=in_bins,
                       out_bins=out_bins, samples=samples, policy=policy,
                       devices=devices, **options)
    return _result(value, info, return_info)


def sensitivity_of_layer_matrix(layer, topology, samples=500, batch_size=20, in_layer=None,
                                in_range=None, in_bins=64, out_range=None, out_bins=64,
                                activation=None, device="cpu", *, seed=None, policy="drop",
                                devices=None, return_info=False,
                **options):
    """The sensitivity matrix [n_in, n_out] as a numpy array (0.7.0 `sensitivity_matrix`)."""
    value, info = _run(measures.sensitivity_matrix, layer, topology, in_layer=in_layer,
                       in_range=in_range, out_range=out_range, activation=activation,
                       batch_size=batch_size, device=device, seed=seed, in_bins=in_bins,
                       out_bins=out_bins, samples=samples, policy=policy,
                       devices=devices, **options)
    return _result(value, info, return_info)


def vector_ei_of_layer(layer, topology, threshold=0.05, samples=None, batch_size=20,
                       in_layer=None, in_range=None, in_bins=64, out_range=None, out_bins=64,
                       activation=None, device="cpu", *, seed=None, policy="drop",
                       devices=None, return_info=False,
                **options):
    """Vector EI: I(X; Y) between the whole binned input and output vectors (0.7.0 `ei`).
    `samples=None` doubles until an estimate moves by less than `threshold` bits (deep-ei's rule)."""
    value, info = _run(measures.ei, layer, topology, in_layer=in_layer, in_range=in_range,
                       out_range=out_range, activation=activation, batch_size=batch_size,
                       device=device, seed=seed, in_bins=in_bins, out_bins=out_bins,
                       samples=samples, threshold=threshold, policy=policy,
                       devices=devices, **options)
    return _result(value, info, return_info)


def eis_between_groups(layer, topology, groups, samples=None, batch_size=20, in_layer=None,
                       in_range=None, in_bins=64, out_range=None, out_bins=64, activation=None,
                       device="cpu", *, threshold=0.05, seed=None, policy="drop",
                       devices=None, return_info=False,
                **options):
    """I(X_G; Y_H) for each (G, H) in `groups`, a list of (input indices, output indices) over the
    flattened inputs and outputs. Returns a list of floats. `samples=None` is adaptive."""
    value, info = _run(measures.eis_between_groups, layer, topology, in_layer=in_layer,
                       in_range=in_range, out_range=out_range, activation=activation,
                       batch_size=batch_size, device=device, seed=seed, in_bins=in_bins,
                       out_bins=out_bins, samples=samples, threshold=threshold, policy=policy,
                       groups=groups, devices=devices, **options)
    return _result(list(value), info, return_info)


def vector_and_pairwise_ei(layer, topology, samples=None, batch_size=20, in_layer=None,
                           in_range=None, in_bins=64, out_range=None, out_bins=64,
                           activation=None, device="cpu", *, threshold=0.05, seed=None,
                           policy="drop", devices=None, return_info=False,
                **options):
    """(vector EI, EI_parts) computed from the same samples. `samples=None` is adaptive on the
    vector EI."""
    value, info = _run(measures.ei_and_ei_parts, layer, topology, in_layer=in_layer,
                       in_range=in_range, out_range=out_range, activation=activation,
                       batch_size=batch_size, device=device, seed=seed, in_bins=in_bins,
                       out_bins=out_bins, samples=samples, threshold=threshold, policy=policy,
                       devices=devices, **options)
    return _result(tuple(float(v) for v in value), info, return_info)


def degeneracy_of_layer(layer, topology, threshold=0.05, samples=None, sensitivity_samples=500,
                        batch_size=20, in_layer=None, in_range=None, in_bins=64, out_range=None,
                        out_bins=64, activation=None, device="cpu", *, ei_kind="vector",
                        seed=None, policy="drop", devices=None, return_info=False,
                **options):
    """Degeneracy = sensitivity - EI (`ei_kind='vector'`, default) or sensitivity - EI_parts
    (`ei_kind='parts'`, as the paper also plots). EI uses `samples`/`threshold`, sensitivity
    `sensitivity_samples`; both the same binning."""
    value, info = _run(measures.degeneracy, layer, topology, in_layer=in_layer,
                       in_range=in_range, out_range=out_range, activation=activation,
                       batch_size=batch_size, device=device, seed=seed, in_bins=in_bins,
                       out_bins=out_bins, samples=samples, threshold=threshold, policy=policy,
                       ei_kind=ei_kind, sensitivity_samples=sensitivity_samples,
                       devices=devices, **options)
    return _result(float(value), info, return_info)


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


# deep-ei 0.7.0 names
ei = vector_ei_of_layer
ei_parts = ei_of_layer
ei_parts_matrix = ei_of_layer_matrix
sensitivity = sensitivity_of_layer
sensitivity_matrix = sensitivity_of_layer_matrix
