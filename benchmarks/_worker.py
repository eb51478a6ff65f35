"""Time one benchmark case on one library, in a process of its own; print one JSON line.

    python -m benchmarks._worker --library deep_ei|deep_ei_jax --case W1 --weights F.npz \
        [--device cpu|cuda] [--repeats N] [--quick]

Run from the repository root with either environment: the project venv for deep_ei_jax, the venv
made by `setup_deep_ei.sh` for deep-ei. `compare_backends` starts it; it is not meant to be run by
hand, though it can be.

Timing: one first run (for deep_ei_jax it includes compilation), then `--repeats` more runs whose
median is the warm time. Every run is synchronous (the API returns Python floats). The peak RSS is
the whole process's (interpreter and libraries included); `rss_setup_mb` is what it held before
the first run.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import resource
import statistics
import sys
import time

import torch

from benchmarks import _cases
from benchmarks._timing import use_compilation_cache


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _version(distribution: str):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _warm_up_deep_ei(api) -> None:
    """One tiny call, so deep-ei's one-time costs (lazy imports, torch init) are not timed."""
    model = _cases.build_model((2, 2))
    case = _cases.Case("warm-up", (2, 2), 8, (_cases.Call("ei_of_layer", 1000),))
    _cases.plan(api, case, model, quick=False, device="cpu").run()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True, choices=("deep_ei", "deep_ei_jax"))
    parser.add_argument("--case", required=True, choices=sorted(_cases.CASES))
    parser.add_argument("--weights", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    use_compilation_cache()

    api = importlib.import_module(args.library)
    case = _cases.CASES[args.case]
    if args.library == "deep_ei":
        _warm_up_deep_ei(api)
    plan = _cases.plan(api, case, _cases.load_model(case, args.weights),
                       quick=args.quick, device=args.device)
    rss_setup_mb = _rss_mb()

    first_s, values = _timed(plan.run)
    repeat_s = [_timed(plan.run)[0] for _ in range(args.repeats)]

    versions = {"torch": torch.__version__, "numpy": _version("numpy")}
    if args.library == "deep_ei":
        versions["deep_ei"] = _version("deep-ei")
    else:
        import jax
        versions.update(jax=jax.__version__, jaxlib=_version("jaxlib"),
                        deep_ei_jax=getattr(api, "__version__", None),
                        jax_device=str(jax.devices(
                            "gpu" if args.device in ("cuda", "gpu") else "cpu")[0]))
    print(json.dumps({
        "first_s": first_s,
        "repeat_s": repeat_s,
        "median_s": statistics.median(repeat_s) if repeat_s else None,
        "samples": plan.samples,
        "value": values,
        "rss_setup_mb": round(rss_setup_mb, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": versions,
        "python": sys.version.split()[0],
    }), flush=True)


if __name__ == "__main__":
    main()
