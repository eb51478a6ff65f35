"""The command line: `deep-ei-jax measure MODEL_FILE ...`, `plot RESULTS ...`, `export RESULTS ...`.

    deep-ei-jax measure model.pt --input-shape 1,4 --bins 8 --samples 100000 --json out.json
    deep-ei-jax measure model.pt --input-shape 1,3,32,32 --trust-pickle --list-layers
    deep-ei-jax measure model.pt --input-shape 1,3,32,32 --trust-pickle --layers conv1,layer1.0
    deep-ei-jax plot out.json --out figures/
    deep-ei-jax export run.jsonl --tensorboard runs/run1
    python -m deep_ei_jax --help

Errors in what the user gave (a missing file, a file that is not a model, a module that cannot be
measured, a bad option) print one line on stderr and exit with status 2, without a traceback.
Output files are written whole or not at all (a temporary file in the same folder, then renamed),
so an interruption (Ctrl-C: status 130) never leaves a half-written file. A command whose
optional dependency is missing names the extra to install and exits with status 1. The program
turns on JAX's persistent compilation cache (`DEEP_EI_JAX_COMPILATION_CACHE=0` turns it off).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import sys
import zipfile

from ._cache import enable_from_environment
from ._files import atomic_write
from .progress import SILENT, Progress, each

MEASURE_COLUMNS = ("ei", "ei_parts", "sensitivity", "degeneracy")
EXIT_USAGE = 2
MAX_INPUT_VALUES = 2 ** 24  # values in the example input batch (64 MiB of float32)
MAX_SAMPLES = 2 ** 31       # the library counts in int32


class UserError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


class MissingExtra(Exception):
    """An optional dependency a command needs is not installed: reported as one line."""


def require(module: str, extra: str, purpose: str):
    """`module`, imported; when it is not installed, a `MissingExtra` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or ""
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # installed, but something it needs is broken: keep the real error
        raise MissingExtra(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                           f"pip install 'deep_ei_jax[{extra}]'") from None


# ---------------------------------------------------------------- loading models

_REBUILDABLE = ("Linear", "Conv2d", "AvgPool2d", "MaxPool2d", "Flatten", "Sigmoid", "Tanh",
                "ReLU", "Identity", "Dropout")


def load_model(path: str, trust_pickle: bool):
    """A torch module from a TorchScript file or (with trust_pickle) a torch.save'd module."""
    import torch
    if not os.path.exists(path):
        raise UserError(f"MODEL_FILE {path!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"MODEL_FILE {path!r} is a directory, not a model file")
    if os.path.getsize(path) == 0:
        raise UserError(f"MODEL_FILE {path!r} is empty (0 bytes)")
    with open(path, "rb") as file:
        zipped = file.read(4) == b"PK\x03\x04"  # TorchScript and torch.save files are zips
    if zipped and not zipfile.is_zipfile(path):
        raise UserError(f"MODEL_FILE {path!r} is a truncated or corrupted archive (a zip file "
                        f"without its central directory): save the model again")
    try:
        scripted = torch.jit.load(path, map_location="cpu")
    except Exception:  # not a TorchScript archive (torch's message calls it corrupted)
        pass
    else:
        return _from_torchscript(scripted, path)
    if not trust_pickle:
        raise UserError(
            f"MODEL_FILE {path!r} is not a TorchScript file. If it is a module saved with "
            f"torch.save, pass --trust-pickle: loading a pickled module "
            f"runs code stored in the file, so do it only for files you trust")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        if zipped:  # a torch.save archive whose pickle cannot be loaded here
            raise UserError(f"MODEL_FILE {path!r} is a torch.save'd file that cannot be "
                            f"unpickled: {_first_line(error)} (a pickled module needs its class "
                            f"importable; torch.jit.script avoids that)") from None
        raise UserError(f"MODEL_FILE {path!r} is neither a TorchScript file nor a torch.save'd "
                        f"file: {_first_line(error)}") from None
    if not isinstance(model, torch.nn.Module):
        hint = (" (a state dict holds weights only: save the module itself, or script it with "
                "torch.jit.script)" if isinstance(model, dict) else "")
        raise UserError(f"MODEL_FILE {path!r} holds an object of type {type(model).__name__}, "
                        f"not a torch module{hint}")
    return model.eval()


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _from_torchscript(scripted, path):
    """An eager nn.Sequential with the TorchScript module's weights.

    `topology_of` finds layers with forward hooks, and TorchScript runs its submodules inside the
    compiled graph, where hooks never fire (torch refuses to register them). A TorchScript
    `Sequential` of supported modules says everything its eager twin needs, so it is rebuilt;
    any other TorchScript module is refused with that explanation.
    """
    import torch
    from torch import nn
    name = getattr(scripted, "original_name", type(scripted).__name__)
    why = ("topology_of needs forward hooks, which TorchScript modules do not run; only a "
           "TorchScript nn.Sequential of supported modules can be rebuilt as an eager module. "
           "Save the eager module with torch.save and pass --trust-pickle instead")
    if name != "Sequential":
        raise UserError(f"MODEL_FILE {path!r} is a TorchScript {name}, which cannot be measured: "
                        f"{why}")
    layers = []
    for child_name, child in scripted.named_children():
        kind = getattr(child, "original_name", type(child).__name__)
        if kind not in _REBUILDABLE:
            raise UserError(f"MODEL_FILE {path!r}: TorchScript module {child_name!r} is a {kind}, "
                            f"which cannot be rebuilt (supported: {', '.join(_REBUILDABLE)}); "
                            f"{why}")
        try:
            layers.append(_rebuild(kind, child, nn))
        except (AttributeError, RuntimeError) as error:
            raise UserError(f"MODEL_FILE {path!r}: cannot rebuild TorchScript {kind} "
                            f"{child_name!r}: {_first_line(error)}") from None
    model = nn.Sequential(*layers)
    with torch.no_grad():
        model.load_state_dict(scripted.state_dict())
    return model.eval()


def _rebuild(kind, child, nn):
    if kind == "Linear":
        return nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
    if kind == "Conv2d":
        return nn.Conv2d(child.in_channels, child.out_channels, tuple(child.kernel_size),
                         stride=tuple(child.stride), padding=child.padding if isinstance(
                             child.padding, str) else tuple(child.padding),
                         dilation=tuple(child.dilation), groups=child.groups,
                         bias=child.bias is not None, padding_mode=child.padding_mode)
    if kind in ("AvgPool2d", "MaxPool2d"):
        return getattr(nn, kind)(child.kernel_size, stride=child.stride, padding=child.padding,
                                 ceil_mode=child.ceil_mode)
    if kind == "Flatten":
        return nn.Flatten(child.start_dim, child.end_dim)
    if kind == "Dropout":
        return nn.Dropout(child.p)
    return getattr(nn, kind)()


# ---------------------------------------------------------------- measure

def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4; "
                                         f"got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"expected positive integers such as 1,4; got {text!r}")
    if len(shape) < 2:
        raise argparse.ArgumentTypeError(f"expected a batch dimension and the input's own shape, "
                                         f"such as 1,4; got {text!r}")
    return shape


def _integer(text: str, low: int, high: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
    if not low <= value < high:
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1, MAX_SAMPLES, "a positive integer below 2**31")


def _bins(text: str) -> int:
    return _integer(text, 2, MAX_SAMPLES, "an integer >= 2")


def _seed(text: str) -> int:
    return _integer(text, -2 ** 63, 2 ** 63, "an integer seed in [-2**63, 2**63)")


def _range_option(text: str):
    """--in-range / --out-range: 'LOW,HIGH', 'dynamic', or 'LAYER=LOW,HIGH' (one layer's).

    Returns (layer name or None, (low, high) or 'dynamic'); the range is checked later."""
    name, _, value = text.rpartition("=")
    value = value.strip()
    if value == "dynamic":
        return name.strip() or None, value
    try:
        pair = tuple(float(v) for v in value.split(","))
    except ValueError:
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair) or not pair[0] < pair[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with LOW < HIGH (e.g. 0,1), "
                                         f"'dynamic' or LAYER=LOW,HIGH; got {text!r}")
    return name.strip() or None, pair


def layer_range_options(option: str, given, layers, *, allow_dynamic: bool):
    """The range each layer gets from the --in-range/--out-range values `given` ((name, range)
    pairs): the one without a name for every layer, a named one for its layer; None where none
    is given (inferred from the activations)."""
    default, named = None, {}
    for name, value in given or ():
        if value == "dynamic" and not allow_dynamic:
            raise UserError(f"{option} cannot be 'dynamic' (only --out-range can be); expected "
                            f"LOW,HIGH or LAYER=LOW,HIGH")
        if name is None:
            default = value
        elif name not in layers:
            raise UserError(f"{option} names layer {name!r}, which is not measured; measured "
                            f"layers: {list(layers)}")
        else:
            named[name] = value
    return {layer: named.get(layer, default) for layer in layers}


def _check_input_shape(shape) -> None:
    values = math.prod(shape)
    if values > MAX_INPUT_VALUES:
        raise UserError(f"--input-shape {','.join(map(str, shape))} has {values} values, more "
                        f"than the {MAX_INPUT_VALUES} an example batch may have; one sample is "
                        f"enough (e.g. 1,{','.join(map(str, shape[1:])) or '4'})")


def _check_output(option: str, path) -> None:
    """An output file path that can be written: not a folder, in a folder that exists."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UserError(f"{option} {path!r} is a directory; expected a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{option} {path!r}: the folder {folder!r} does not exist")


def _model_dtype(model, torch):
    """The dtype of the model's floating-point parameters (float32 when it has none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _measurable_names(model, topology) -> list:
    """The qualified names of every submodule the model's captured graph can measure."""
    from .bridge.sweeping import measurable_layers
    captured = _captured(topology)
    found = measurable_layers(model, None, captured) if captured is not None else {}
    return [name for name, why in found.items() if why is None and name]


def _captured(topology):
    from .bridge.topology import captured_of
    return captured_of(topology)


def _measurable_layers(model, topology, requested, position=None):
    """The layer names to measure: the requested ones (each must be measurable), or every
    Linear/Conv2d layer that can be measured, the others reported on stderr and skipped."""
    from .bridge.api import resolve_span
    from .bridge.sweeping import default_layers, position_of
    from .bridge.topology import ACTIVATION_MODULES
    modules = dict(model.named_modules())
    candidates = requested if requested else default_layers(model, topology)
    if not candidates:
        raise UserError(f"the model has no Linear or Conv2d layer to measure by default (found: "
                        f"{sorted({type(m).__name__ for m in model.modules()})}); name the layers "
                        f"with --layers (measurable: {_measurable_names(model, topology)}; "
                        f"--list-layers lists them with the reasons for the others)")
    chosen, skipped = [], []
    for name in candidates:
        module = modules.get(name)
        if module is None or isinstance(module, ACTIVATION_MODULES):
            what = "not a submodule" if module is None else \
                f"an activation ({type(module).__name__}): name the module before it"
            raise UserError(f"--layers: {name!r} is not a measurable module of the model ({what});"
                            f" measurable: {_measurable_names(model, topology)}")
        if name in chosen:
            raise UserError(f"--layers names layer {name!r} more than once")
        try:
            resolve_span(module, topology, position=position_of(position, name))
        except NotImplementedError as error:
            why = str(error).replace("; pass activation= explicitly", "")
            if requested:
                raise UserError(f"layer {name!r} cannot be measured: {why}") from None
            skipped.append((name, why))
            continue
        except ValueError as error:
            raise UserError(f"layer {name!r}: {error}") from None
        chosen.append(name)
    if not chosen:
        raise UserError("no layer of the model can be measured: " + "; ".join(
            f"layer {name!r}: {why}" for name, why in skipped))
    for name, why in skipped:
        print(f"deep-ei-jax: skipping layer {name!r}: {why}", file=sys.stderr)
    return chosen


def list_layers(model, topology) -> str:
    """Every submodule call of the model's captured graph: measurable or why not (one line)."""
    from .bridge.sweeping import measurable_layers
    captured = _captured(topology)
    if captured is None:
        raise UserError("the model cannot be traced by torch.export (see the warning), so only "
                        "deep-ei's modules can be measured; --layers names them")
    found = measurable_layers(model, None, captured)
    modules = dict(model.named_modules())
    width = max((len(name) for name in found), default=5) + 2
    lines = ["measurable layers (qualified names for --layers):"]
    lines += [f"  {name:<{width}}{type(modules[name]).__name__}" for name, why in found.items()
              if why is None and name]
    lines.append("not measurable:")
    lines += [f"  {name or '(model)':<{width}}{why}" for name, why in found.items() if why]
    return "\n".join(lines)


def _position(text: str):
    if text in ("centre", "center"):
        return None
    if text == "all":
        return "all"
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'centre', 'all' or comma-separated integers "
                                         f"(one per position axis) such as 3,4; got "
                                         f"{text!r}") from None


def measure(args) -> int:
    torch = require("torch", "torch", "'deep-ei-jax measure' (it loads torch models)")
    from .bridge import sweep, topology_of
    _check_input_shape(args.input_shape)
    _check_output("--json", args.json)
    _check_output("--csv", args.csv)
    model = load_model(args.model_file, args.trust_pickle)
    example = torch.zeros(args.input_shape, dtype=_model_dtype(model, torch))
    try:
        topology = topology_of(model, example)
    except ValueError as error:
        raise UserError(f"--input-shape {','.join(map(str, args.input_shape))}: {error}") from None
    if args.list_layers:
        print(list_layers(model, topology))
        return 0
    requested = [name.strip() for name in args.layers.split(",")] if args.layers else []
    try:
        layers = _measurable_layers(model, topology, requested, args.position)
    except UserError as error:
        raise UserError(f"MODEL_FILE {args.model_file!r}: {error}") from None
    captured = topology.graph.get("captured")   # traced once, if a layer needed it
    in_bins = args.in_bins or args.bins
    out_bins = args.out_bins or args.bins
    in_ranges = layer_range_options("--in-range", args.in_range, layers, allow_dynamic=False)
    out_ranges = layer_range_options("--out-range", args.out_range, layers, allow_dynamic=True)
    records = []
    layer_bar = SILENT if args.no_progress else Progress(delay=0)  # drawn at once on a terminal
    for layer in each(layers, layer_bar, unit="layer", desc="measuring"):
        try:
            records += sweep([model], example, layers=[layer], samples=args.samples,
                             sensitivity_samples=args.sensitivity_samples, in_bins=in_bins,
                             out_bins=out_bins, in_range=in_ranges[layer],
                             out_range=out_ranges[layer], seed=args.seed, position=args.position,
                             captured=captured, progress=not args.no_progress)
        except NotImplementedError as error:
            raise UserError(f"layer {layer!r} cannot be measured: {error}") from None
        except ValueError as error:  # e.g. count tables too large for these bins
            raise UserError(f"layer {layer!r} with --in-bins {in_bins} --out-bins {out_bins} "
                            f"--samples {args.samples}: {error}") from None
    for index, record in enumerate(records):
        record.pop("model", None)
        record["layer_index"] = index
    print(format_table(records))
    settings = dict(model_file=args.model_file, input_shape=list(args.input_shape),
                    samples=args.samples, sensitivity_samples=args.sensitivity_samples,
                    in_bins=in_bins, out_bins=out_bins, seed=args.seed,
                    position=args.position if args.position is None or isinstance(
                        args.position, str) else list(args.position),
                    in_range=[[name, list(v) if isinstance(v, tuple) else v]
                              for name, v in args.in_range or ()],
                    out_range=[[name, list(v) if isinstance(v, tuple) else v]
                               for name, v in args.out_range or ()])
    if args.json:
        atomic_write(args.json, lambda file: json.dump({"settings": settings, "records": records},
                                                       file, indent=1))
    if args.csv:
        write_csv(args.csv, records)
    return 0


def format_table(records) -> str:
    width = max([8] + [len(str(r["layer"])) + 2 for r in records])
    header = f"{'layer':<{width}}{'module':<24}{'EI':>9}{'EI_parts':>10}{'sensitivity':>13}" \
             f"{'degeneracy':>12}{'samples':>10}"
    lines = [header]
    for r in records:
        values = "".join(f"{r.get(m, math.nan):>{w}.4f}" for m, w in zip(
            MEASURE_COLUMNS, (9, 10, 13, 12)))
        lines.append(f"{r['layer']:<{width}}{r['module']:<24}{values}{r['samples']:>10}")
    lines.append("(bits; degeneracy = sensitivity - EI; sensitivity from "
                 f"{records[0]['sensitivity_samples'] if records else 0} samples per input)")
    at = [f"{r['layer']} at {tuple(r['position']) if isinstance(r['position'], list) else 'all'}"
          for r in records if r.get("position") is not None]
    if at:
        lines.append("(measured at one output position, channels or features by position: "
                     + ", ".join(dict.fromkeys(at)) + ")")
    empty = {r["layer"]: [m for m in MEASURE_COLUMNS
                          if isinstance(r.get(m), float) and math.isnan(r[m])] for r in records}
    empty = {layer: names for layer, names in empty.items() if names}
    if empty:
        which = "; ".join(f"{layer} ({', '.join(names)})" for layer, names in empty.items())
        lines.append(f"(nan: nothing was counted for layer(s) {which}: every sample of that "
                     "measure had an output outside the output range and was dropped; widen the "
                     "output range)")
    return "\n".join(lines)


def write_csv(path: str, records) -> None:
    fields = []
    for record in records:
        fields += [k for k in record if k not in fields]

    def write(file):
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    atomic_write(path, write, newline="")


# ---------------------------------------------------------------- plot

def read_results(path: str) -> list[dict]:
    """The list of records in a results file (JSON, JSON lines or CSV), unchecked."""
    if not os.path.exists(path):
        raise UserError(f"RESULTS {path!r} does not exist")
    try:
        with open(path) as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"RESULTS {path!r} cannot be read as text: {_first_line(error)}") from None
    records = None
    if path.endswith(".csv"):
        records = list(csv.DictReader(text.splitlines()))
        for record in records:
            for key, value in record.items():
                record[key] = _number(value)
    else:
        try:
            data = json.loads(text)
            records = data.get("records") if isinstance(data, dict) else data
        except json.JSONDecodeError:
            try:
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as error:
                raise UserError(f"RESULTS {path!r} is neither JSON, JSON lines nor CSV: "
                                f"{error}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"RESULTS {path!r} holds no list of records")
    return records


def load_results(path: str) -> list[dict]:
    """Records from a `measure --json` file, a tracker's JSON lines, a sweep list or a CSV."""
    records = read_results(path)
    needed = {"layer", "sensitivity", "degeneracy"}
    if not records or not needed <= set(records[0]):
        raise UserError(f"RESULTS {path!r} has no records with {sorted(needed)} (made by "
                        f"'deep-ei-jax measure --json', deep_ei_jax.sweep or a Tracker)")
    for index, record in enumerate(records, start=1):
        for name in ("sensitivity", "degeneracy", "ei", "ei_parts", "step"):
            value = record.get(name, 0.0) if name not in needed else record.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value):
                why = (" (nan: nothing was counted, every sample had an output outside the "
                       "output range; leave the record out or measure with a wider range)"
                       if isinstance(value, float) and math.isnan(value) else "")
                raise UserError(f"RESULTS {path!r}: record {index} has {name}={value!r}; expected "
                                f"a finite number{why}")
    return records


def _number(value):
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value


def plot(args) -> int:
    require("matplotlib", "plot", "'deep-ei-jax plot'")
    from . import plotting
    records = load_results(args.results)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out!r} exists and is not a folder")
    os.makedirs(args.out, exist_ok=True)
    for path in plotting.save_figures(records, args.out):
        print(path)
    return 0


# ---------------------------------------------------------------- export

def export(args) -> int:
    require("tensorboard", "tensorboard", "'deep-ei-jax export --tensorboard'")
    from .integrations.tensorboard import write_scalars
    records = read_results(args.results)
    if not records:
        raise UserError(f"RESULTS {args.results!r} holds no records")
    if os.path.exists(args.tensorboard) and not os.path.isdir(args.tensorboard):
        raise UserError(f"--tensorboard {args.tensorboard!r} exists and is not a folder")
    try:
        path = write_scalars(records, args.tensorboard)
    except (ValueError, TypeError) as error:
        raise UserError(f"RESULTS {args.results!r}: {error}") from None
    print(path)
    return 0


# ---------------------------------------------------------------- the parser

def _results_argument(command) -> None:
    """The RESULTS argument of the commands that read measurement records (plot, export)."""
    command.add_argument("results", metavar="RESULTS",
                         help="records: 'measure --json' output, a Tracker's JSON lines, a JSON "
                         "list of deep_ei_jax.sweep records, or a CSV of them")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="deep-ei-jax", description="Effective information (EI), EI_parts, sensitivity and "
        "degeneracy of the layers of a torch model, in bits (deep-ei's measures, in JAX).")
    commands = main.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    m = commands.add_parser(
        "measure", help="measure the layers of a saved model",
        description="Measure every Linear/Conv2d layer of a saved torch model, or the submodules "
        "named by --layers (any submodule the captured graph can measure: --list-layers), and "
        "print a table (EI, EI_parts, sensitivity, degeneracy = sensitivity - EI, samples). "
        "Ranges follow the activations around each layer, as in deep-ei: Sigmoid (0,1), Tanh "
        "(-1,1), ReLU (0,10), none (-10,10); other activations: their image of (-10,10); "
        "--in-range/--out-range give them instead.")
    m.add_argument("model_file", metavar="MODEL_FILE",
                   help="a TorchScript file (torch.jit.save; an nn.Sequential is rebuilt as an "
                   "eager module) or a module saved with torch.save (needs --trust-pickle)")
    m.add_argument("--input-shape", required=True, type=_shape, metavar="SHAPE",
                   help="shape of an input batch, comma-separated, e.g. 1,4 or 1,3,28,28")
    m.add_argument("--samples", type=_positive, default=100_000, metavar="N",
                   help="samples for EI and EI_parts (the same samples; default 100000)")
    m.add_argument("--sensitivity-samples", type=_positive, default=1000, metavar="N",
                   help="samples per input for sensitivity (default 1000)")
    m.add_argument("--bins", type=_bins, default=64, metavar="B",
                   help="input and output bins (default 64, as deep-ei)")
    m.add_argument("--in-bins", type=_bins, metavar="B", help="input bins (default: --bins)")
    m.add_argument("--out-bins", type=_bins, metavar="B",
                   help="output bins (default: --bins)")
    m.add_argument("--in-range", type=_range_option, action="append", metavar="RANGE",
                   help="input range LOW,HIGH for every layer (e.g. 0,1), or LAYER=LOW,HIGH for "
                   "one layer (repeat the option for several); default: from the activation "
                   "before each layer")
    m.add_argument("--out-range", type=_range_option, action="append", metavar="RANGE",
                   help="output range as --in-range, or 'dynamic' (per output, probed from "
                   "samples); default: from the activation after each layer")
    m.add_argument("--layers", metavar="NAMES",
                   help="comma-separated qualified module names (as in model.named_modules()) "
                   "to measure: any measurable submodule, a container included (default: every "
                   "Linear and Conv2d layer)")
    m.add_argument("--list-layers", action="store_true",
                   help="list every measurable submodule by its qualified name (and why the "
                   "others cannot be measured), then exit")
    m.add_argument("--position", type=_position, default=None, metavar="POS",
                   help="for layers whose output has positions (pixels, tokens): 'centre' "
                   "(default), 'all' (the whole output) or one index per position axis, "
                   "e.g. 3,4")
    m.add_argument("--seed", type=_seed, default=0, help="PRNG seed (default 0)")
    m.add_argument("--json", metavar="PATH", help="also write the settings and records as JSON")
    m.add_argument("--csv", metavar="PATH", help="also write the records as CSV")
    m.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a torch.save'd module: unpickling runs code stored in the "
                   "file, so only use it for files you trust")
    m.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")
    m.set_defaults(run=measure)
    p = commands.add_parser(
        "plot", help="draw the causal plane and the measures over training",
        description="Draw the causal plane (sensitivity vs degeneracy per layer; trajectories "
        "coloured by step when the results have steps) and the measures against step (or per "
        "layer) as PNG files.")
    _results_argument(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
    p.set_defaults(run=plot)
    e = commands.add_parser(
        "export", help="write results as TensorBoard scalars",
        description="Write measurement records as TensorBoard scalars (tags ei/LAYER, "
        "ei_parts/LAYER, sensitivity/LAYER, degeneracy/LAYER, at each record's step) in a new "
        "event file; view them with 'tensorboard --logdir DIR'. Needs tensorboard.")
    _results_argument(e)
    e.add_argument("--tensorboard", required=True, metavar="DIR",
                   help="the run folder for the event file (created if missing)")
    e.set_defaults(run=export)
    return main


def console_main() -> int:
    """The `deep-ei-jax` program (and `python -m deep_ei_jax`): `main` with JAX's persistent
    compilation cache turned on, so a second run reuses compiled programs, unless
    DEEP_EI_JAX_COMPILATION_CACHE says otherwise (0 turns it off, a folder moves it)."""
    enable_from_environment(default=True)
    return main()


def main(argv=None) -> int:
    """Runs the command line on `argv` (default: sys.argv[1:]); returns the exit status.

    It leaves JAX's settings alone; `console_main` is the program that also turns on the
    compilation cache."""
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as error:
        print(f"deep-ei-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except MissingExtra as error:
        print(f"deep-ei-jax: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, NotImplementedError, OSError) as error:
        print(f"deep-ei-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deep-ei-jax: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the user gets a line, not a traceback
        print(f"deep-ei-jax: error: {type(error).__name__}: {_first_line(error)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(console_main())
