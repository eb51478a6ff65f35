"""Time deep-ei 0.6.4/0.7.0 and deep_ei_jax side by side on the same weights.

    python -m benchmarks.compare_backends [--cases W1,W2,...] [--repeats N]
                                          [--backends deep_ei,cpu,gpu] [--quick]

Run from the repository root with the project venv. Backends:
  deep_ei  deep-ei itself, in benchmarks/.deep_ei_venv (make it with benchmarks/setup_deep_ei.sh);
           skipped with a note if that venv is absent. One timed run per case.
  cpu      deep_ei_jax on JAX's CPU device (device='cpu').
  gpu      deep_ei_jax on a GPU (device='cuda'); skipped with a note if JAX sees no GPU.
For deep_ei_jax, compile_s is the first call (compilation included) and run_s the median of
--repeats further calls.

Every (case, backend) runs in a fresh subprocess (`benchmarks._worker`), so peak RSS is per case
and one library's caches or failures cannot touch another's. The weights are written once to a
.npz and loaded by every subprocess; torch.manual_seed(0) precedes every measure call.

Output: one JSON line per (case, backend) on stdout (fields name, backend, sizes, bins, calls,
device, versions, compile_s, run_s, samples, samples_per_s, value, peak_rss_mb, ...; `skipped` or
`error` instead of timings where it did not run), '# ' note lines, then a summary table.
samples_per_s counts input samples drawn by one run (sensitivity draws `samples` per input
neuron); it is null for adaptive (threshold) cases.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks import _cases
from benchmarks._timing import use_compilation_cache

REPO = pathlib.Path(__file__).resolve().parent.parent
DEEP_EI_PYTHON = REPO / "benchmarks" / ".deep_ei_venv" / "bin" / "python"
BACKENDS = ("deep_ei", "cpu", "gpu")


def note(message: str) -> None:
    print(f"# {message}", flush=True)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _call_text(call: _cases.Call) -> str:
    amount = (f"samples={call.samples:.0e}".replace("e+0", "e").replace("e+", "e")
              if call.samples else f"threshold={call.threshold}")
    return f"{call.measure}({amount})"


def _gpu_available() -> bool:
    import jax
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def _run_worker(backend: str, case: _cases.Case, weights: pathlib.Path, args) -> dict:
    """Run one (case, backend) in its own process; the worker's JSON report, or {'error': ...}."""
    library, python, device, repeats = {
        "deep_ei": ("deep_ei", str(DEEP_EI_PYTHON), "cpu", 0),
        "cpu": ("deep_ei_jax", sys.executable, "cpu", args.repeats),
        "gpu": ("deep_ei_jax", sys.executable, "cuda", args.repeats),
    }[backend]
    command = [python, "-m", "benchmarks._worker", "--library", library, "--case", case.name,
               "--weights", str(weights), "--device", device, "--repeats", str(repeats)]
    if args.quick:
        command.append("--quick")
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    reports = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not reports:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        return {"error": f"worker exited {done.returncode}:\n{tail}"}
    return json.loads(reports[-1])


def _record(backend: str, case: _cases.Case, args, report: dict) -> dict:
    """The JSON line for one (case, backend)."""
    record = {
        "name": case.name, "backend": backend, "sizes": case.sizes, "bins": case.bins,
        "calls": [_call_text(call) for call in case.calls_for(args.quick)],
        "device": "cuda" if backend == "gpu" else "cpu",
        "quick": args.quick,
    }
    if "skipped" in report or "error" in report:
        return {**record, **report}
    is_deep_ei = backend == "deep_ei"
    run_s = report["first_s"] if is_deep_ei else report["median_s"]
    samples = report["samples"]
    return {
        **record,
        "versions": report["versions"],
        "compile_s": None if is_deep_ei else report["first_s"],
        "run_s": run_s,
        "repeats": len(report["repeat_s"]) or 1,
        "samples": samples,
        "samples_per_s": samples / run_s if samples and run_s else None,
        "value": report["value"],
        "peak_rss_mb": report["peak_rss_mb"],
        "rss_setup_mb": report["rss_setup_mb"],
    }


def _format(x, digits=4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_table(records: list, backends: list) -> str:
    """case | quantity | deep-ei s | ours 1st s | ours s | ratio | values, one row per quantity."""
    # deep_ei's columns come first, whatever the order
    ours = [b for b in backends if b != "deep_ei"]
    header = ["case", "quantity", "deep-ei s"]
    for b in ours:
        header += [f"{b} 1st s", f"{b} s", f"deep-ei/{b}"]
    header += ["deep-ei value"] + [f"{b} value" for b in ours]
    rows = [header]
    by_key = {(r["name"], r["backend"]): r for r in records}
    for name in dict.fromkeys(r["name"] for r in records):
        mine = {b: by_key.get((name, b), {}) for b in backends}
        labels = list(dict.fromkeys(label for r in mine.values() for label in r.get("value", {})))
        for i, label in enumerate(labels or ["-"]):
            deep = mine.get("deep_ei", {})
            row = [name if i == 0 else "", label]
            row.append(_status(deep) or (_format(deep.get("run_s"), 2) if i == 0 else ""))
            for b in ours:
                r = mine[b]
                if i == 0:
                    ratio = (deep["run_s"] / r["run_s"]
                             if deep.get("run_s") and r.get("run_s") else None)
                    row += [_status(r) or _format(r.get("compile_s"), 2),
                            _status(r) or _format(r.get("run_s"), 3),
                            "-" if ratio is None else f"{ratio:.1f}x"]
                else:
                    row += ["", "", ""]
            row += [_format(mine.get(b, {}).get("value", {}).get(label))
                    for b in ["deep_ei", *ours]]
            rows.append(row)
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _status(record: dict) -> str:
    if not record:
        return ""
    return "skipped" if "skipped" in record else "error" if "error" in record else ""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(_cases.CASES),
                        help=f"comma-separated, from {','.join(_cases.CASES)} (default: all)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated, from deep_ei,cpu,gpu (default: all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="warm runs of deep_ei_jax after the first (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sample counts where a case has them (paper: 1e6, not 1e7)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds one (case, backend) subprocess may take (default 3600)")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for name in args.cases:
        if name not in _cases.CASES:
            parser.error(f"--cases: unknown case {name!r}; choose from {','.join(_cases.CASES)}")
    for name in args.backends:
        if name not in BACKENDS:
            parser.error(f"--backends: unknown backend {name!r}; choose from deep_ei,cpu,gpu")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    use_compilation_cache()
    backends = list(args.backends)
    if "deep_ei" in backends and not DEEP_EI_PYTHON.exists():
        note(f"deep_ei backend skipped: no {DEEP_EI_PYTHON.relative_to(REPO)} "
             "(make it with: bash benchmarks/setup_deep_ei.sh)")
        backends.remove("deep_ei")
    if "gpu" in backends and not _gpu_available():
        note("gpu backend skipped: no GPU (jax.devices('gpu') finds none)")
        backends.remove("gpu")
    if not backends:
        note("no backend left to run")
        return
    if args.quick:
        for name in args.cases:
            case = _cases.CASES[name]
            if case.quick_calls:
                note(f"--quick: {name} runs {', '.join(map(_call_text, case.quick_calls))} "
                     f"instead of {', '.join(map(_call_text, case.calls))}")
    note("project venv: jax " + importlib.metadata.version("jax")
         + ", torch " + importlib.metadata.version("torch") + f", {os.cpu_count()} CPU cores")

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = pathlib.Path(tmp) / "weights.npz"
        _cases.save_weights(weights, args.cases)
        for name in args.cases:
            case = _cases.CASES[name]
            for backend in backends:
                if backend == "deep_ei" and case.deep_ei_skip:
                    report = {"skipped": case.deep_ei_skip}
                    note(f"{name} on deep_ei skipped: {case.deep_ei_skip}")
                else:
                    progress(f"{name} ({case.sizes}, {case.bins} bins) on {backend} ...")
                    report = _run_worker(backend, case, weights, args)
                    if "error" in report:
                        progress(f"{name} on {backend} failed: {report['error']}")
                records.append(_record(backend, case, args, report))
                print(json.dumps(records[-1]), flush=True)

    print()
    print(summary_table(records, backends))


if __name__ == "__main__":
    main()
