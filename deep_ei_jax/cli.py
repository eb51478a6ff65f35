"""The command line: `deep-ei-jax measure MODEL_FILE ...` and `deep-ei-jax plot RESULTS ...`.

    deep-ei-jax measure model.pt --input-shape 1,4 --bins 8 --samples 100000 --json out.json
    deep-ei-jax plot out.json --out figures/
    python -m deep_ei_jax --help

Errors in what the user gave (a missing file, a file that is not a model, a module that cannot be
measured, a bad option) print one line on stderr and exit with status 2, without a traceback.
Output files are written whole or not at all (a temporary file in the same folder, then renamed),
so an interruption (Ctrl-C: status 130) never leaves a half-written file. The program turns on
JAX's persistent compilation cache (`DEEP_EI_JAX_COMPILATION_CACHE=0` turns it off).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import zipfile

from ._cache import enable_from_environment

MEASURE_COLUMNS = ("ei", "ei_parts", "sensitivity", "degeneracy")
EXIT_USAGE = 2
MAX_INPUT_VALUES = 2 ** 24  # values in the example input batch (64 MiB of float32)
MAX_SAMPLES = 2 ** 31       # the library counts in int32


class UserError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


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


def atomic_write(path: str, write, *, newline=None) -> None:
    """Writes a file whole or not at all: `write(file)` fills a temporary file in the same folder,
    which is then renamed over `path` (an interruption leaves `path` as it was)."""
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", newline=newline) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _model_dtype(model, torch):
    """The dtype of the model's floating-point parameters (float32 when it has none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _measurable_layers(model, topology, requested, measured_modules):
    """The layer names to measure: the requested ones (each must be measurable), or every
    Linear/Conv2d layer that can be measured, the others reported on stderr and skipped."""
    from .bridge.api import resolve_span
    names = {module: name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    candidates = requested if requested else \
        [names[m] for m in topology if isinstance(m, measured_modules)]
    if not candidates:
        raise UserError(f"the model has no Linear or Conv2d layer to measure (found: "
                        f"{sorted({type(m).__name__ for m in model.modules()})}; supported: "
                        f"{', '.join(t.__name__ for t in measured_modules)})")
    chosen, skipped = [], []
    for name in candidates:
        module = modules.get(name)
        if module is None or module not in topology:
            measurable = [names[m] for m in topology if isinstance(m, measured_modules)]
            raise UserError(f"--layers: {name!r} is not a measurable module of the model; "
                            f"measurable: {measurable}")
        if name in chosen:
            raise UserError(f"--layers names layer {name!r} more than once")
        try:
            resolve_span(module, topology)
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


def _progress(items, enabled: bool, description: str):
    if not enabled or not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit="layer", file=sys.stderr)


def measure(args) -> int:
    import torch

    from .bridge import sweep, topology_of
    from .bridge.sweeping import MEASURED_MODULES
    _check_input_shape(args.input_shape)
    _check_output("--json", args.json)
    _check_output("--csv", args.csv)
    model = load_model(args.model_file, args.trust_pickle)
    example = torch.zeros(args.input_shape, dtype=_model_dtype(model, torch))
    try:
        topology = topology_of(model, example)
    except ValueError as error:
        raise UserError(f"--input-shape {','.join(map(str, args.input_shape))}: {error}") from None
    requested = [name.strip() for name in args.layers.split(",")] if args.layers else []
    try:
        layers = _measurable_layers(model, topology, requested, MEASURED_MODULES)
    except UserError as error:
        raise UserError(f"MODEL_FILE {args.model_file!r}: {error}") from None
    in_bins = args.in_bins or args.bins
    out_bins = args.out_bins or args.bins
    records = []
    for layer in _progress(layers, not args.no_progress, "measuring"):
        try:
            records += sweep([model], example, layers=[layer], samples=args.samples,
                             sensitivity_samples=args.sensitivity_samples, in_bins=in_bins,
                             out_bins=out_bins, seed=args.seed)
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
                    in_bins=in_bins, out_bins=out_bins, seed=args.seed)
    if args.json:
        atomic_write(args.json, lambda file: json.dump({"settings": settings, "records": records},
                                                       file, indent=1))
    if args.csv:
        write_csv(args.csv, records)
    return 0


def format_table(records) -> str:
    header = f"{'layer':<8}{'module':<24}{'EI':>9}{'EI_parts':>10}{'sensitivity':>13}" \
             f"{'degeneracy':>12}{'samples':>10}"
    lines = [header]
    for r in records:
        values = "".join(f"{r.get(m, math.nan):>{w}.4f}" for m, w in zip(
            MEASURE_COLUMNS, (9, 10, 13, 12)))
        lines.append(f"{r['layer']:<8}{r['module']:<24}{values}{r['samples']:>10}")
    lines.append("(bits; degeneracy = sensitivity - EI; sensitivity from "
                 f"{records[0]['sensitivity_samples'] if records else 0} samples per input)")
    empty = [r["layer"] for r in records
             if any(isinstance(r.get(m), float) and math.isnan(r[m]) for m in MEASURE_COLUMNS)]
    if empty:
        lines.append(f"(nan: nothing was counted for layer(s) {', '.join(map(str, empty))}: every "
                     "sample had an output outside the output range and was dropped; widen the "
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

def load_results(path: str) -> list[dict]:
    """Records from a `measure --json` file, a tracker's JSON lines, a sweep list or a CSV."""
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
    needed = {"layer", "sensitivity", "degeneracy"}
    if not records or not needed <= set(records[0]):
        raise UserError(f"RESULTS {path!r} has no records with {sorted(needed)} (made by "
                        f"'deep-ei-jax measure --json', deep_ei_jax.sweep or a Tracker)")
    for index, record in enumerate(records, start=1):
        for name in ("sensitivity", "degeneracy", "ei", "ei_parts", "step"):
            value = record.get(name, 0.0) if name not in needed else record.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value):
                raise UserError(f"RESULTS {path!r}: record {index} has {name}={value!r}; expected "
                                f"a finite number")
    return records


def _number(value):
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value


def plot(args) -> int:
    from . import plotting
    records = load_results(args.results)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out!r} exists and is not a folder")
    os.makedirs(args.out, exist_ok=True)
    for path in plotting.save_figures(records, args.out):
        print(path)
    return 0


# ---------------------------------------------------------------- the parser

def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="deep-ei-jax", description="Effective information (EI), EI_parts, sensitivity and "
        "degeneracy of the layers of a torch model, in bits (deep-ei's measures, in JAX).")
    commands = main.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    m = commands.add_parser(
        "measure", help="measure every Linear/Conv2d layer of a saved model",
        description="Measure every Linear/Conv2d layer of a saved torch model and print a table "
        "(EI, EI_parts, sensitivity, degeneracy = sensitivity - EI, samples). Ranges follow the "
        "activations around each layer, as in deep-ei: Sigmoid (0,1), Tanh (-1,1), ReLU (0,10), "
        "none (-10,10).")
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
    m.add_argument("--layers", metavar="NAMES",
                   help="comma-separated module names (as in model.named_modules()) to measure "
                   "(default: every Linear and Conv2d layer)")
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
    p.add_argument("results", metavar="RESULTS",
                   help="records: 'measure --json' output, a Tracker's JSON lines, a JSON list "
                   "of deep_ei_jax.sweep records, or a CSV of them")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
    p.set_defaults(run=plot)
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
