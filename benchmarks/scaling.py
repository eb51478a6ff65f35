"""How time and memory grow with samples, layer width and bins (pure-JAX API).

    python -m benchmarks.scaling [--quick]

Each case runs in its own subprocess (so its peak RSS is its own) and prints one JSON line: the
sweep it belongs to, sizes, device, versions, compile seconds (first call), run seconds (median of
warm repeats), samples/s, pair-samples/s (samples * n_in * n_out per second), peak RSS, and the
output-block streaming used (blocks of outputs counted one after another). Expect run time linear
in samples and in n_in * n_out, and memory flat once layers stream in blocks.
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
}
QUICK = {
    "samples": [(20, 10, 64, n) for n in (10 ** 4, 10 ** 5)],
    "width": [(w, w // 2, 16, 10 ** 4) for w in (10, 40)],
    "bins": [(20, 10, b, 10 ** 4) for b in (8, 32)],
    "streaming": [(100, 50, 64, 2000)],
}


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
                          single_input=False, pairs=True, groups=())
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help="comma-separated sweep names")
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    use_compilation_cache()
    if args.child:
        print(json.dumps(run_case(*args.child, repeats=args.repeats)))
        return 0
    sweeps = QUICK if args.quick else SWEEPS
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
            record = json.loads(child.stdout.strip().splitlines()[-1])
            print(json.dumps({"sweep": sweep, **record}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
