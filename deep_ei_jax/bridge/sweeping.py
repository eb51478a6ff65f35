"""`sweep`: every measure of every layer of many torch models (or checkpoints) of one architecture.

    records = deep_ei_jax.sweep(checkpoints, torch.zeros((1, 4)), samples=100_000,
                                sensitivity_samples=1000, in_bins=8, out_bins=8)
    frame = deep_ei_jax.to_dataframe(records)   # with pandas installed

Each layer's K parameter sets are stacked and measured in one compiled call
(`deep_ei_jax.pure.sweep`); a record equals what the single calls give with the same `seed`
(`vector_and_pairwise_ei`, `sensitivity_of_layer`, ...): exactly on a CPU with numba, EI to float32
rounding of its entropies on the device.

Layers are named by their qualified names (`model.named_modules()`): any submodule the deep-ei API
can measure (`resolve_span`: deep-ei's modules, or any submodule on the captured graph). For the
graph path the first model is traced once (torch.export) and the later ones reuse its graph with
their own weights (`topology.share_capture`); layers measured at one output position are
restricted identically for every model, so their parameter sets stack into one program.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import torch
from torch import nn

from .. import measures as single_measures
from .. import sweeping
from .._checks import (check_bins, check_choice, check_measures, check_positive_int,
                       check_range, check_samples, check_seed)
from ..binning import POLICIES
from ..backends import METHODS
from .api import resolve_span
from .topology import ACTIVATION_MODULES, captured_of, share_capture, topology_of

MEASURED_MODULES = (nn.Linear, nn.Conv2d)


def _short(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}->{module.out_features})"
    if isinstance(module, nn.Conv2d):
        return (f"Conv2d({module.in_channels}->{module.out_channels}, "
                f"k={tuple(module.kernel_size)})")
    return type(module).__name__


def _models(models_or_state_dicts, model):
    """The models, loading state dicts into copies of `model` (or of the first module given)."""
    if isinstance(models_or_state_dicts, (nn.Module, Mapping)) or \
            not isinstance(models_or_state_dicts, Sequence) or \
            isinstance(models_or_state_dicts, (str, bytes)):
        raise TypeError(f"models_or_state_dicts must be a list of torch modules or state dicts; "
                        f"got {type(models_or_state_dicts).__name__}")
    if len(models_or_state_dicts) == 0:
        raise ValueError("models_or_state_dicts must hold at least one model; got an empty list")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (the architecture state dicts are "
                        f"loaded into); got {type(model).__name__}")
    template = model
    if template is None:
        template = next((m for m in models_or_state_dicts if isinstance(m, nn.Module)), None)
    models = []
    for k, item in enumerate(models_or_state_dicts):
        if isinstance(item, nn.Module):
            models.append(item)
            continue
        if not isinstance(item, Mapping):
            raise TypeError(f"models_or_state_dicts[{k}] must be a torch.nn.Module or a state "
                            f"dict; got {type(item).__name__}")
        if template is None:
            raise ValueError("models_or_state_dicts holds only state dicts: pass model= (a module "
                             "of the architecture to load them into)")
        loaded = copy.deepcopy(template)
        try:
            loaded.load_state_dict(item)
        except (RuntimeError, KeyError, TypeError) as error:
            raise ValueError(f"models_or_state_dicts[{k}] does not fit the model's architecture: "
                             f"{error}") from None
        models.append(loaded)
    return models


def default_layers(model, topology) -> list:
    """Every Linear and Conv2d module of `model` that its forward pass calls, in call order
    (the layers measured when none are named; those that cannot be measured are skipped)."""
    names = {module: name for name, module in model.named_modules()}
    called = topology.graph.get("called", tuple(topology))
    return [names[m] for m in called if isinstance(m, MEASURED_MODULES) and m in names]


def layer_names(model, topology, layers):
    """The names of the layers of `model` to measure, in call order.

    Args:
      model: a torch module.
      topology: `topology_of(model, example_input)`.
      layers: module names (as in `model.named_modules()`: any submodule, "" for the model) or
        modules of `model`, one of them alone, or None for every Linear and Conv2d module.

    Returns:
      (names, explicit): the names, and whether `layers` chose them (False for None).
    """
    names = {module: name for name, module in model.named_modules()}
    if layers is None:
        return default_layers(model, topology), False
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers must be a list of module names or modules; got {layers!r}")
    if not layers:
        raise ValueError("layers must name at least one layer (None measures every Linear and "
                         "Conv2d layer); got an empty list")
    chosen = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            if layer not in names or isinstance(layer, ACTIVATION_MODULES):
                raise ValueError(f"layers: {layer!r} is not a measurable module of the first "
                                 f"model; pass modules of models_or_state_dicts[0] (or names)")
            chosen.append(names[layer])
        elif isinstance(layer, str):
            module = dict(model.named_modules()).get(layer)
            if module is None or isinstance(module, ACTIVATION_MODULES):
                raise ValueError(f"layers: {layer!r} is not a measurable module of the model; "
                                 f"measurable: {[names[m] for m in topology]} and the other "
                                 f"submodules the captured graph can measure")
            chosen.append(layer)
        else:
            raise TypeError(f"layers must be module names or modules; got {layer!r}")
        if chosen[-1] in chosen[:-1]:
            raise ValueError(f"layers names layer {chosen[-1]!r} more than once")
    return chosen, True


def position_of(position, name):
    """The position for layer `name`: `position` itself, or its entry in a dict by layer name."""
    if isinstance(position, Mapping):
        return position.get(name)
    return position


def _spans(models, example_input, chosen, explicit, position=None, captured=None):
    """Per layer: (chain, ranges, short name, position, [params of each model]), checked against
    model 0. The first model's captured graph (made when a layer needs it, or `captured`) serves
    the others."""
    per_layer = {}
    skipped = {}
    first = None
    for k, model in enumerate(models):
        try:
            topology = topology_of(model, example_input)
        except ValueError as error:
            raise ValueError(f"models_or_state_dicts[{k}]: {error}") from None
        shared = captured if k == 0 else first.graph.get("captured")
        if shared is not None:
            share_capture(topology, shared)
        first = topology if k == 0 else first
        modules = dict(model.named_modules())
        for name in chosen:
            if name in skipped:
                continue
            module = modules.get(name)
            if module is None:
                raise ValueError(f"models_or_state_dicts[{k}] differs from "
                                 f"models_or_state_dicts[0]: it has no module {name!r}")
            try:
                span, in_range, out_range = resolve_span(module, topology,
                                                         position=position_of(position, name))
            except NotImplementedError as error:
                if explicit or k > 0:
                    raise ValueError(f"models_or_state_dicts[{k}], layer {name!r}: "
                                     f"{error}") from None
                skipped[name] = str(error)
                continue
            if name not in per_layer:
                per_layer[name] = (span.chain, (in_range, out_range), _short(module),
                                   span.position, [])
            chain, ranges, short, _, params = per_layer[name]
            if _short(module) != short:
                raise ValueError(f"models_or_state_dicts[{k}] differs from models_or_state_dicts"
                                 f"[0] at layer {name!r}: it is {_short(module)}; expected {short}")
            _check_same(k, name, chain, ranges, params[0] if params else span.params, span,
                        (in_range, out_range))
            params.append(span.params)
    for name, why in skipped.items():
        warnings.warn(f"sweep skips layer {name!r}: {why}", RuntimeWarning, stacklevel=3)
    return [(name, *per_layer[name]) for name in chosen if name in per_layer]


def _check_same(k, name, chain, ranges, first_params, span, span_ranges):
    where = f"models_or_state_dicts[{k}] differs from models_or_state_dicts[0] at layer {name!r}"
    for i, (expected, got) in enumerate(zip(first_params, span.params)):
        for field in list(expected) + [f for f in got if f not in expected]:
            want, have = np.shape(expected.get(field)), np.shape(got.get(field))
            if field not in got or field not in expected or want != have:
                what = "weight" if field == "w" else "bias" if field == "b" else field
                raise ValueError(f"{where}: its {what} has shape "
                                 f"{have if field in got else 'none'} (stored as [in, out]); "
                                 f"expected {want if field in expected else 'none'}")
    if span.chain.in_shape != chain.in_shape:
        raise ValueError(f"{where}: its input shape is {span.chain.in_shape}; expected "
                         f"{chain.in_shape}")
    if span.chain != chain:
        raise ValueError(f"{where}: its layers are {span.chain.layers}; expected {chain.layers}")
    if span_ranges != ranges:
        raise ValueError(f"{where}: its activations give ranges {span_ranges}; expected {ranges}")


def check_layer_ranges(option: str, value, *, allow_dynamic: bool = False):
    """A sweep's `in_range`/`out_range` argument, checked: None (every layer's range inferred from
    its activations), one range for every layer, or a mapping from layer name to range (None:
    inferred). Layer names are checked against the model later (`ranges_of_layer`)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        checked = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise TypeError(f"{option} maps layer names (str, as in model.named_modules()) "
                                f"to ranges; got the key {name!r}")
            checked[name] = None if item is None else check_range(
                f"{option}[{name!r}]", item, allow_dynamic=allow_dynamic)
        return checked
    return check_range(option, value, allow_dynamic=allow_dynamic)


def ranges_of_layer(option: str, value, name: str, measurable):
    """The range `value` (checked by `check_layer_ranges`) gives layer `name` (None: inferred).

    Raises:
      ValueError: a mapping names a layer that is not a measurable module of the model; the
        error names it and lists the measurable layers.
    """
    if not isinstance(value, Mapping):
        return value
    unknown = [key for key in value if key not in measurable]
    if unknown:
        raise ValueError(f"{option} names {unknown[0]!r}, which is not a measurable layer of the "
                         f"model; measurable layers: {list(measurable)}")
    return value.get(name)


def check_settings(*, samples, sensitivity_samples, in_bins, out_bins, seed, policy, method,
                   max_batch=None, memory_budget=sweeping.DEFAULT_CALL_MEMORY_BUDGET):
    """The scalar settings of a sweep (also checked by `Tracker` when it is made)."""
    check_seed("seed", seed)
    check_samples("samples", samples)
    check_samples("sensitivity_samples", sensitivity_samples)
    check_bins("in_bins", in_bins)
    check_bins("out_bins", out_bins)
    check_choice("policy", policy, POLICIES)
    check_choice("method", method, METHODS)
    if max_batch is not None:
        check_positive_int("max_batch", max_batch)
    check_positive_int("memory_budget", memory_budget)


def sweep(models_or_state_dicts, example_input, layers=None, measures=None, *, model=None,
          samples: int = 100_000, sensitivity_samples: int = 500, in_bins: int = 64,
          out_bins: int = 64, in_range=None, out_range=None, seed: int = 0, steps=None,
          policy: str = "drop", method: str = "auto", max_batch: int | None = None,
          memory_budget: int = sweeping.DEFAULT_CALL_MEMORY_BUDGET, devices=None, position=None,
          captured=None, progress: bool = True) -> list[dict]:
    """EI, EI_parts, sensitivity and degeneracy of every layer of many models of one architecture.

    Each layer's parameter sets are stacked and measured in one compiled call. Ranges are given
    (`in_range`, `out_range`) or come from the activations around each layer as in deep-ei
    (Sigmoid (0,1), Tanh (-1,1), ReLU (0,10), none (-10,10)). A layer with `out_range='dynamic'`
    gets each model's own output binning, so it is measured by single calls, one per model
    (`vector_and_pairwise_ei` and `sensitivity_of_layer` with the same seed), not in one call.

    Args:
      models_or_state_dicts: a list of K torch modules, or of state dicts (loaded into copies of
        `model`), or a mix.
      example_input: an input batch for the models, e.g. `torch.zeros((1, 4))`.
      layers: module names (as in `model.named_modules()`: any submodule the deep-ei API can
        measure, a container included) or modules of the first model; None means every Linear
        and Conv2d module that can be measured, in call order (others are skipped with a
        warning).
      measures: names from ('ei', 'ei_parts', 'sensitivity', 'degeneracy'); None means all four.
      model: the architecture state dicts are loaded into (default: the first module given).
      samples: samples of the all-inputs intervention (EI and EI_parts share them).
      sensitivity_samples: samples per input for sensitivity.
      in_bins, out_bins: bin counts.
      in_range, out_range: None (inferred for every layer), one (low, high) pair for every
        layer, or a mapping from layer name to pair (layers left out, or mapped to None, are
        inferred); `out_range` may be 'dynamic' (per output, probed as a single call does). A
        mapping that names a layer the model does not have raises a ValueError listing them.
      seed: the PRNG seed; the same for every layer and model, as single calls with `seed=`.
      steps: optional labels, one per model (e.g. training steps), stored as 'step'.
      policy, method, max_batch, memory_budget, devices, progress: as `deep_ei_jax.pure.sweep`
        (devices shards each layer's checkpoints over devices; progress: a bar per layer).
      position: for layers whose output has positions (pixels, tokens): None the centre, a
        tuple, 'all', or a dict from layer name to one of these (see `ei_of_layer`).
      captured: the captured graph (`bridge.graph.capture`, first sample) of a model of this
        architecture, to reuse instead of tracing the first model (a `Tracker` passes it).

    Returns:
      A list of records (dicts), one per (model, layer): 'model' (index), 'step' (when given),
      'layer' (name), 'layer_index', 'module', 'position' (only for layers measured at an
      output position), the measures asked for (bits), 'samples', 'sensitivity_samples',
      'in_bins', 'out_bins', 'in_range', 'out_range' (the ranges used: (low, high) or
      'dynamic'). A measure that counted nothing is NaN (with a warning), as in a single call.
    """
    check_example_input(example_input)
    check_settings(samples=samples, sensitivity_samples=sensitivity_samples, in_bins=in_bins,
                   out_bins=out_bins, seed=seed, policy=policy, method=method,
                   max_batch=max_batch, memory_budget=memory_budget)
    in_range = check_layer_ranges("in_range", in_range)
    out_range = check_layer_ranges("out_range", out_range, allow_dynamic=True)
    names = sweeping.MEASURES if measures is None else check_measures(measures, sweeping.MEASURES)
    models = _models(models_or_state_dicts, model)
    steps = _check_steps(steps, len(models))
    chosen, explicit, measurable = _layers_to_measure(models[0], example_input, layers, captured)
    key = jax.random.key(int(seed))
    records = []
    for index, (name, chain, inferred, short, measured, params) in enumerate(
            _spans(models, example_input, chosen, explicit, position, captured)):
        given = (ranges_of_layer("in_range", in_range, name, measurable),
                 ranges_of_layer("out_range", out_range, name, measurable))
        ranges = tuple(inferred[i] if given[i] is None else given[i] for i in (0, 1))
        options = dict(in_range=ranges[0], out_range=ranges[1], in_bins=in_bins,
                       out_bins=out_bins, samples=samples,
                       sensitivity_samples=sensitivity_samples, measures=names, policy=policy,
                       method=method, progress=progress)
        rows = _layer_rows(key, chain, params, options, max_batch=max_batch,
                           memory_budget=memory_budget, devices=devices)
        layer = dict(layer=name, layer_index=index, module=short)
        if measured is not None:
            layer["position"] = measured if isinstance(measured, str) else list(measured)
        records += _layer_records(rows, steps, layer,
                                  dict(samples=samples, sensitivity_samples=sensitivity_samples,
                                       in_bins=in_bins, out_bins=out_bins,
                                       in_range=_plain_range(ranges[0]),
                                       out_range=_plain_range(ranges[1])))
    records.sort(key=lambda r: (r["model"], r["layer_index"]))
    return records


def _layers_to_measure(model, example_input, layers, captured):
    """(the layer names to measure, whether the user named them, the names a range mapping may
    use: the hook topology's modules and the chosen layers)."""
    topology = topology_of(model, example_input)
    chosen, explicit = layer_names(model, topology, layers)
    if not chosen:
        _no_default_layers(model, example_input, captured)
    module_names = {module: name for name, module in model.named_modules()}
    measurable = list(dict.fromkeys([*(module_names[m] for m in topology if m in module_names),
                                     *chosen]))
    return chosen, explicit, measurable


def _layer_rows(key, chain, params, options: dict, *, max_batch, memory_budget, devices):
    """One layer's measure values per model: one compiled sweep over the stacked params, or,
    for a dynamic out_range (each model's own binning), single calls with the same key."""
    if isinstance(options["out_range"], str):
        return _single_call_rows(key, chain, params, **options)
    return sweeping.sweep(key, chain, sweeping.stack_params(params), max_batch=max_batch,
                          memory_budget=memory_budget, devices=devices, **options).records()


def check_example_input(example_input) -> None:
    """A tensor batch, or a tuple of tensors (a cell's (x, h))."""
    if isinstance(example_input, torch.Tensor):
        return
    if isinstance(example_input, (tuple, list)) and example_input and all(
            isinstance(v, (torch.Tensor, tuple, list)) for v in example_input):
        return
    raise TypeError(f"example_input must be a torch.Tensor batch; got "
                    f"{type(example_input).__name__} (a tuple of tensors, a cell's (x, h), "
                    f"is also accepted)")


def measurable_layers(model, example_input, captured=None) -> dict:
    """Every submodule call the captured graph can measure, and why the others cannot.

    Returns:
      dict qualified name -> None (measurable) or the reason it cannot be measured (one line),
      for each module's first call, in call order ("" is the whole model).
    """
    from .spans import every_span
    if captured is None:
        captured = captured_of(topology_of(model, example_input))
    if captured is None:
        return {}
    found = {}
    for (name, call), span in every_span(captured).items():
        if call == 0:
            found[name] = span if isinstance(span, Exception) else None
    return {name: None if why is None else str(why).splitlines()[0]
            for name, why in found.items()}


def _no_default_layers(model, example_input, captured):
    measurable = [name or "''" for name, why in measurable_layers(
        model, example_input, captured).items() if why is None]
    raise ValueError(f"the model has no Linear or Conv2d module to measure by default; name the "
                     f"layers with layers= (measurable submodules: {measurable})")


def _check_steps(steps, num_models: int):
    """The step labels as a list with one entry per model (None stays None)."""
    if steps is None:
        return None
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise TypeError(f"steps must be a sequence of labels, one per model; got {steps!r}")
    steps = list(steps)
    if len(steps) != num_models:
        raise ValueError(f"steps must have one entry per model ({num_models}); "
                         f"got {len(steps)}")
    return steps


def _layer_records(rows, steps, layer: dict, settings: dict) -> list[dict]:
    """One layer's records: per model its index (and step), the layer, the measures, the
    settings."""
    records = []
    for k, row in enumerate(rows):
        record = {"model": k}
        if steps is not None:
            record["step"] = steps[k]
        record.update(layer)
        record.update({m: row[m] for m in sweeping.MEASURES if m in row})
        record.update(settings)
        records.append(record)
    return records


def _plain_range(value):
    """A range as a record stores it: (low, high) floats, or 'dynamic'."""
    return value if isinstance(value, str) else (float(value[0]), float(value[1]))


def _single_call_rows(key, chain, params, *, samples, sensitivity_samples, measures, **binning):
    """The measures of each parameter set by single calls with `key` (what `vector_and_pairwise_ei`
    and `sensitivity_of_layer` give with the same seed): for a dynamic out_range, which gives each
    set its own output binning. One dict of measure values per set."""
    rows = []
    for one in params:
        row = {}
        if {"ei", "ei_parts", "degeneracy"} & set(measures):
            (row["ei"], row["ei_parts"]), _ = single_measures.ei_and_ei_parts(
                key, chain, one, samples=samples, **binning)
        if {"sensitivity", "degeneracy"} & set(measures):
            row["sensitivity"], _ = single_measures.sensitivity(
                key, chain, one, samples=sensitivity_samples, **binning)
        if "degeneracy" in measures:
            row["degeneracy"] = row["sensitivity"] - row["ei"]
        rows.append({m: float(row[m]) for m in measures})
    return rows


def to_dataframe(records):
    """The records as a pandas DataFrame (needs pandas: pip install pandas)."""
    try:
        import pandas
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install pandas") from None
    return pandas.DataFrame.from_records(list(records))
