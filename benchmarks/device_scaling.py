"""Scaling efficiency: time vs device count when sample blocks are sharded over devices.

    python -m benchmarks.device_scaling [--devices 1,2,4] [--samples N] [--platform cpu|gpu]

On a CPU the devices are forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count),
one subprocess per count; they share the machine's cores, so real speedup is capped by the core
count (2 here). On a machine with several GPUs, pass --platform gpu and counts up to the GPUs.
Prints one JSON line per count (run_s median of 3 warm calls, speedup and efficiency vs 1 device,
and whether the result equals the one-device result exactly).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks._timing import use_compilation_cache

CHILD = r"""
import json, statistics, sys, time
import jax, numpy as np
from deep_ei_jax import pure
count, samples = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
chain = pure.Chain((pure.Dense(activation="sigmoid"),), (20,))
params = ({"w": (rng.normal(size=(20, 10)) / 4.5).astype(np.float32)},)
kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=64, out_bins=64, samples=samples,
              method="scatter" if jax.default_backend() == "cpu" else "auto", devices=count)
start = time.perf_counter()
value, _ = pure.ei_parts(jax.random.key(0), chain, params, **kwargs)
compile_s = time.perf_counter() - start
times = []
for _ in range(3):
    start = time.perf_counter()
    pure.ei_parts(jax.random.key(0), chain, params, **kwargs)
    times.append(time.perf_counter() - start)
print(json.dumps({"devices": count, "device": str(jax.devices()[0]), "samples": samples,
                  "compile_s": round(compile_s, 3), "run_s": round(statistics.median(times), 4),
                  "value": value}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--platform", default="cpu", choices=("cpu", "gpu"))
    args = parser.parse_args(argv)
    use_compilation_cache()
    counts = [int(c) for c in args.devices.split(",")]
    base = None
    for count in counts:
        env = dict(os.environ)
        if args.platform == "cpu":
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(counts)}"
            env["JAX_PLATFORMS"] = "cpu"
        child = subprocess.run([sys.executable, "-c", CHILD, str(count), str(args.samples)],
                               capture_output=True, text=True, env=env)
        if child.returncode != 0:
            print(json.dumps({"devices": count, "error": child.stderr[-2000:]}))
            continue
        record = json.loads(child.stdout.strip().splitlines()[-1])
        base = base or record
        record["speedup"] = round(base["run_s"] / record["run_s"], 3)
        record["efficiency"] = round(record["speedup"] / count, 3)
        record["identical_to_one_device"] = record["value"] == base["value"]
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
