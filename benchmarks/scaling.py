"""How time and memory grow with samples, layer width and bins (pure-JAX API).

    python -m benchmarks.scaling [--quick] [--sweeps samples,...] [--plot FILE.png]

Each case runs in its own subprocess (so its peak RSS is its own) and prints one JSON line: the
sweep it belongs to, sizes, device, versions, compile seconds (first call), run seconds (median of
warm repeats), samples/s, pair-samples/s (samples * n_in * n_out per second), peak RSS, and the
output-block streaming used (blocks of outputs counted one after another). Expect run time linear
in samples and in n_in * n_out, and memory flat once layers stream in blocks.

The "by_samples" sweep measures a layer too wide for tables (the samples backend, `pairstats`)
from well below to well above the cells of one pair's table (64 input bins x the ~40 output bins
its outputs occupy): each pair is reduced by its samples below that, by a scan of its cells
above. Run time should stay proportional to samples x pairs across the switch, with no jump.
`--plot` draws run time against samples x pairs for every sweep run, with the switch marked.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

from benchmarks._timing import use_compilation_cache

SWEEPS = {
    # name: list of (n_in, n_out, bins, samples)
    "samples": [(20, 10, 64, n) for n in (10 ** 4, 10 ** 5, 10 ** 6, 4 * 10 ** 6)],
    "width": [(w, w // 2, 16, 10 ** 5) for w in (10, 50, 100, 200, 400)],
    "bins": [(20, 10, b, 10 ** 6) for b in (8, 16, 32, 64, 128)],
    "streaming": [(784, n, 64, 10 ** 4) for n in (100, 300, 1000)],
    "by_samples": [(400, 400, 64, n) for n in (500, 1000, 2000, 4000, 8000, 16000)],
}
QUICK = {
    "samples": [(20, 10, 64, n) for n in (10 ** 4, 10 ** 5)],
    "width": [(w, w // 2, 16, 10 ** 4) for w in (10, 40)],
    "bins": [(20, 10, b, 10 ** 4) for b in (8, 32)],
    "streaming": [(100, 50, 64, 2000)],
    "by_samples": [(200, 200, 64, n) for n in (500, 4000)],
}
SWITCH_CELLS = 64 * 40  # about where by_samples switches (64 input bins x ~40 occupied columns)


def run_case(n_in: int, n_out: int, bins: int, samples: int, repeats: int) -> dict:
    """Times ei_parts on an n_in -> n_out sigmoid layer (called in the child process)."""
    import jax
    import numpy as np

    from deep_ei_jax import planning, pure

    rng = np.random.default_rng(0)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(n_in,))
    params = ({"w": (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)},)
    kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=bins, out_bins=bins, samples=samples)
    start = time.perf_counter()
    value, _ = pure.ei_parts(jax.random.key(0), chain, params, **kwargs)
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        pure.ei_parts(jax.random.key(i + 1), chain, params, **kwargs)
        times.append(time.perf_counter() - start)
    run_s = statistics.median(times)
    binning = planning.Binning(**{k: v for k, v in kwargs.items() if k != "samples"})
    setup = planning.plan(jax.random.key(0), chain, params, binning, samples_hint=samples,
                          single_input=False, pairs=True, groups=(), samples_max=samples)
    return {
        "n_in": n_in, "n_out": n_out, "bins": bins, "samples": samples,
        "device": str(jax.devices()[0]), "method": setup.counting.backend.name,
        "output_blocks": -(-n_out // setup.counting.block_size),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "compile_s": round(compile_s, 4), "run_s": round(run_s, 4),
        "samples_per_s": round(samples / run_s), "pair_samples_per_s": round(
            samples * n_in * n_out / run_s),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "value_bits": round(float(value), 4),
    }


def plot(records: list, path: str) -> None:
    """Run time against samples x pairs, one series per sweep (log-log), the samples backend's
    switch marked on the by_samples series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for sweep in dict.fromkeys(r["sweep"] for r in records):
        points = [r for r in records if r["sweep"] == sweep and "run_s" in r]
        work = [r["samples"] * r["n_in"] * r["n_out"] for r in points]
        label = f"{sweep} ({points[0]['method']})"
        axis.loglog(work, [r["run_s"] for r in points], "o-", label=label)
        if sweep == "by_samples":
            pairs = points[0]["n_in"] * points[0]["n_out"]
            axis.axvline(SWITCH_CELLS * pairs, color="grey", linestyle=":",
                         label="samples = cells of a table")
    axis.set_xlabel("samples x pairs")
    axis.set_ylabel("run time (s)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help="comma-separated sweep names")
    parser.add_argument("--plot", help="write a PNG of run time against samples x pairs")
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    use_compilation_cache()
    if args.child:
        print(json.dumps(run_case(*args.child, repeats=args.repeats)))
        return 0
    sweeps = QUICK if args.quick else SWEEPS
    records = []
    for sweep in args.sweeps.split(","):
        if sweep not in sweeps:
            parser.error(f"--sweeps: unknown sweep {sweep!r}; expected some of {list(sweeps)}")
        for case in sweeps[sweep]:
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.scaling", "--repeats", str(args.repeats),
                 "--child", *map(str, case)], capture_output=True, text=True)
            if child.returncode != 0:
                print(json.dumps({"sweep": sweep, "case": case, "error": child.stderr[-2000:]}))
                continue
            record = {"sweep": sweep, **json.loads(child.stdout.strip().splitlines()[-1])}
            records.append(record)
            print(json.dumps(record), flush=True)
    for sweep in dict.fromkeys(r["sweep"] for r in records):
        rates = [r["pair_samples_per_s"] for r in records if r["sweep"] == sweep]
        print(f"# {sweep}: pair-samples/s from {min(rates):.3g} to {max(rates):.3g} "
              f"(max/min {max(rates) / min(rates):.2f})")
    if args.plot and records:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
