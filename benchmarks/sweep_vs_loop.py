"""A sweep over K checkpoints against a Python loop of single calls (the Iris 4-5-5-3 sigmoid net).

    python -m benchmarks.sweep_vs_loop [--quick] [--models 50] [--samples 10000,100000]

Both sides measure EI, EI_parts, sensitivity and degeneracy of every Linear layer of K networks
with random weights (8 bins, ranges from the sigmoids), with the same seed: the loop calls
`vector_and_pairwise_ei` (EI and EI_parts from one pass) and `sensitivity_of_layer` per model and
layer (degeneracy is their difference); the sweep is one `deep_ei_jax.sweep` call. Each side runs
once to compile (`first_call_s`, which the persistent compilation cache shortens in a second
process), then `--repeats` times; `run_s` is the median. One JSON line per case, with the ratio
loop/sweep and the largest difference between the two sides' numbers.
"""
from __future__ import annotations

import argparse
import json
import platform

from benchmarks._timing import timed, use_compilation_cache

IRIS_WIDTHS = (4, 5, 5, 3)
BINS = 8


def iris_net(seed: int):
    import torch
    from torch import nn
    torch.manual_seed(seed)
    layers = []
    for n_in, n_out in zip(IRIS_WIDTHS[:-1], IRIS_WIDTHS[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Sigmoid()]
    return nn.Sequential(*layers)


def loop(models, example, samples: int, sensitivity_samples: int) -> list[dict]:
    """The single calls a user would write without a sweep."""
    import deep_ei_jax as dei
    records = []
    for k, model in enumerate(models):
        topology = dei.topology_of(model, example)
        for index, layer in enumerate(m for m in model if m in topology):
            ei, parts = dei.vector_and_pairwise_ei(layer, topology, samples=samples, seed=0,
                                                   in_bins=BINS, out_bins=BINS)
            sens = dei.sensitivity_of_layer(layer, topology, samples=sensitivity_samples, seed=0,
                                            in_bins=BINS, out_bins=BINS)
            records.append({"model": k, "layer_index": index, "ei": ei, "ei_parts": parts,
                            "sensitivity": sens, "degeneracy": sens - ei})
    return records


def sweep(models, example, samples: int, sensitivity_samples: int) -> list[dict]:
    import deep_ei_jax as dei
    return dei.sweep(models, example, samples=samples, sensitivity_samples=sensitivity_samples,
                     in_bins=BINS, out_bins=BINS, seed=0)


def run_case(num_models: int, samples: int, sensitivity_samples: int, repeats: int) -> dict:
    import jax
    import torch

    models = [iris_net(seed) for seed in range(num_models)]
    example = torch.zeros((1, IRIS_WIDTHS[0]))
    swept, sweep_first, sweep_s = timed(lambda: sweep(models, example, samples,
                                                      sensitivity_samples), repeats)
    looped, loop_first, loop_s = timed(lambda: loop(models, example, samples,
                                                    sensitivity_samples), repeats)
    differences = {name: max(abs(a[name] - b[name]) for a, b in zip(swept, looped))
                   for name in ("ei", "ei_parts", "sensitivity", "degeneracy")}
    return {
        "name": "sweep_vs_loop", "network": "-".join(map(str, IRIS_WIDTHS)), "bins": BINS,
        "models": num_models, "layers": len(IRIS_WIDTHS) - 1, "samples": samples,
        "sensitivity_samples": sensitivity_samples, "device": str(jax.devices()[0]),
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "sweep_first_call_s": round(sweep_first, 3), "sweep_run_s": round(sweep_s, 3),
        "loop_first_call_s": round(loop_first, 3), "loop_run_s": round(loop_s, 3),
        "ratio": round(loop_s / sweep_s, 2),
        "max_abs_difference_bits": {k: float(f"{v:.2e}") for k, v in differences.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 models, 10k samples, 1 repeat")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--samples", default="10000,100000",
                        help="comma-separated sample counts of the EI / EI_parts intervention")
    parser.add_argument("--sensitivity-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    use_compilation_cache()
    if args.quick:
        args.models, args.samples, args.repeats = 10, "10000", 1
    for samples in (int(s) for s in args.samples.split(",")):
        print(json.dumps(run_case(args.models, samples, args.sensitivity_samples, args.repeats)),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
