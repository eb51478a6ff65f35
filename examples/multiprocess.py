"""Multi-process measurement with jax.distributed, on one machine (CPU processes, gloo collectives).

    python examples/multiprocess.py [--processes 2]

Launches N local processes; each calls `jax.distributed.initialize`, and every measure then
shards its sample blocks over all processes' devices (each process draws its own blocks; the
integer counts are summed across processes; vector-EI states are gathered). Every process prints
the same numbers, and they equal a single-process run with the same key: that is checked here.
On a cluster, start one process per host with the coordinator's address instead.
"""
import argparse
import json
import socket
import subprocess
import sys

MEASURE = """
import json, sys
import jax
process, count, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if count > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=count,
                               process_id=process)
import numpy as np
from deep_ei_jax import pure
weights = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(6,))
kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=16, out_bins=16, samples=50_000,
              method="scatter")
(ei, ei_parts), info = pure.ei_and_ei_parts(jax.random.key(0), chain, ({"w": weights},), **kwargs)
print(json.dumps({"process": process, "processes": jax.process_count(),
                  "devices": len(jax.devices()), "ei": ei, "ei_parts": ei_parts}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int) -> list[dict]:
    port = str(free_port())
    children = [subprocess.Popen([sys.executable, "-c", MEASURE, str(i), str(processes), port],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(processes)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        if child.returncode != 0:
            raise RuntimeError(f"a process failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    single = run(1)[0]
    many = run(args.processes)
    for result in many:
        print(json.dumps(result))
    same = all(r["ei"] == single["ei"] and r["ei_parts"] == single["ei_parts"] for r in many)
    print(f"single process: EI {single['ei']:.6f}, EI_parts {single['ei_parts']:.6f}; "
          f"{args.processes} processes agree exactly: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
