"""Accuracy against time: sampled estimators vs the exact EI_parts of a 20 -> 10 sigmoid layer.

    python -m benchmarks.accuracy [--seeds 5] [--samples 1000,10000,100000] [--grid-steps ...]
                                  [--shuffle 2]

The layer is the reference one (`d_20_10_sigmoid/0.weight` of ../shared/reference/weights.npz,
falling back to tests/data), sigmoid, inputs uniform on (0, 1), 64 bins on both sides. The truth is
the exact EI_parts at a grid step of 2.5e-5 (its own grid error is < 1e-6 bits by the second-order
convergence the tests check). Cases:

* exact at several grid steps: |bits - truth| and run seconds (median of repeats, after a warm-up
  call that compiles);
* every estimator (plug-in, Miller-Madow, jackknife, NSB, Chao-Shen) at each N: the same count
  tables (sampled, binned and counted by a jitted scatter kernel) fed to each estimator; |error|
  and the signed error (bias) averaged over seeds; run seconds = counting (median over seeds) + the
  estimator on the tables. The plug-in row also gives the plug-in bias predicted from the exact
  tables (`expected_plugin_mutual_information`) and the production path's time
  (`pure.ei_parts_matrix`, numba counter where installed) at that N;
* plug-in with `shuffle_correction=k` (`--shuffle k`, 0: no row) by the production path, its
  run seconds the whole call's (k + 1 counting passes).

Prints one JSON line per case, then a table.
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from deep_ei_jax import pure
from deep_ei_jax.binning import bin_indices
from deep_ei_jax.estimators import (ESTIMATORS, expected_plugin_mutual_information,
                                    mutual_information)
from deep_ei_jax.exact import exact_ei_parts, exact_ei_parts_tables, exact_grid_points
from deep_ei_jax.histogram import pairwise_counts

from benchmarks._timing import timed, use_compilation_cache

BINS = 64
KEY = "d_20_10_sigmoid/0.weight"
TRUTH_STEP = 2.5e-5
GRID_STEPS = (4e-3, 2e-3, 1e-3, 5e-4, 2.5e-4, 1e-4)
CHUNK = 2 ** 14
ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_weights() -> np.ndarray:
    for directory in (ROOT.parent / "shared" / "reference", ROOT / "tests" / "data"):
        path = directory / "weights.npz"
        if path.exists():
            return np.load(path)[KEY].T.astype(np.float64)   # torch [out, in] -> [in, out]
    raise FileNotFoundError("weights.npz not found in ../shared/reference or tests/data")


@functools.partial(jax.jit, static_argnames=("chunk",))
def _count_chunk(counts, key, w, *, chunk):
    """Adds the pairwise tables of one chunk of `chunk` samples to `counts` [20, 10, 64, 64]."""
    x = jax.random.uniform(key, (chunk, w.shape[0]))
    y = jax.nn.sigmoid(x @ w)
    x_bins, _ = bin_indices(x, 0.0, 1.0, BINS)
    y_bins, valid = bin_indices(y, 0.0, 1.0, BINS)
    return counts + pairwise_counts(x_bins, y_bins, valid, BINS, BINS, "scatter")


def sampled_counts(key, w, samples: int) -> np.ndarray:
    """int64 [n_in, n_out, 64, 64] tables of `samples` samples (chunks of 2^14 plus a remainder)."""
    w = jnp.asarray(w, jnp.float32)
    counts = jnp.zeros((w.shape[0], w.shape[1], BINS, BINS), jnp.int32)
    done, index = 0, 0
    while done < samples:
        chunk = min(CHUNK, samples - done)
        counts = _count_chunk(counts, jax.random.fold_in(key, index), w, chunk=chunk)
        done, index = done + chunk, index + 1
    return np.asarray(counts, np.int64)


def run(seeds: int, sample_sizes, repeats: int, grid_steps=GRID_STEPS, shuffle: int = 0):
    w = load_weights()
    common = dict(activation="sigmoid", in_range=(0, 1), out_range=(0, 1), in_bins=BINS,
                  out_bins=BINS)
    meta = {"layer": "20->10 sigmoid", "bins": BINS, "device": str(jax.devices()[0]),
            "versions": {"jax": jax.__version__, "python": platform.python_version()}}
    truth = float(exact_ei_parts(w, grid_step=TRUTH_STEP, **common))
    records = [{"name": "truth", "method": "exact", "grid_step": TRUTH_STEP,
                "grid_points": exact_grid_points(w, grid_step=TRUTH_STEP), "bits": truth, **meta}]
    print(json.dumps(records[-1]), flush=True)
    for step in grid_steps:
        value, first, run_s = timed(lambda: float(exact_ei_parts(w, grid_step=step, **common)),
                                     repeats)
        records.append({"name": f"exact step {step:g}", "method": "exact", "grid_step": step,
                        "grid_points": exact_grid_points(w, grid_step=step), "bits": value,
                        "abs_error": abs(value - truth), "compile_s": round(first - run_s, 3),
                        "run_s": round(run_s, 4), **meta})
        print(json.dumps(records[-1]), flush=True)

    tables = np.asarray(exact_ei_parts_tables(w, grid_step=2.5e-4, **common))
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(w.shape[0],))
    params = ({"w": w.astype(np.float32)},)
    for samples in sample_sizes:
        count_times, estimates = [], {name: [] for name in ESTIMATORS}
        estimator_times = {name: [] for name in ESTIMATORS}
        sampled_counts(jax.random.key(10 ** 6), w, min(samples, CHUNK))   # compile
        for seed in range(seeds):
            start = time.perf_counter()
            counts = sampled_counts(jax.random.key(seed), w, samples)
            count_times.append(time.perf_counter() - start)
            for name in ESTIMATORS:
                start = time.perf_counter()
                estimates[name].append(float(mutual_information(counts, name).sum()))
                estimator_times[name].append(time.perf_counter() - start)
        predicted = float(expected_plugin_mutual_information(tables, samples).sum()) - truth
        _, _, production_s = timed(lambda: pure.ei_parts_matrix(
            jax.random.key(0), chain, params, samples=samples, **{k: v for k, v in common.items()
                                                                 if k != "activation"}), 1)
        for name in ESTIMATORS:
            errors = np.array(estimates[name]) - truth
            record = {"name": f"{name} N={samples:.0e}", "method": "sampled", "estimator": name,
                      "samples": samples, "seeds": seeds,
                      "bits_mean": float(np.mean(estimates[name])),
                      "abs_error": float(np.abs(errors).mean()), "bias": float(errors.mean()),
                      "sd": float(errors.std(ddof=1)) if seeds > 1 else None,
                      "run_s": round(statistics.median(count_times)
                                     + statistics.median(estimator_times[name]), 4),
                      "estimator_s": round(statistics.median(estimator_times[name]), 4), **meta}
            if name == "plugin":
                record.update(predicted_bias=predicted, production_run_s=round(production_s, 4))
            records.append(record)
            print(json.dumps(record), flush=True)
        if shuffle:
            records.append(shuffled_record(chain, params, common, samples, seeds, shuffle, truth,
                                           meta))
            print(json.dumps(records[-1]), flush=True)
    return records


def shuffled_record(chain, params, common, samples, seeds, shuffle, truth, meta) -> dict:
    """Plug-in minus the mean of `shuffle` input-shuffled surrogates, by `pure.ei_parts`."""
    binning = {k: v for k, v in common.items() if k != "activation"}
    values, times = [], []
    for seed in range(seeds):
        start = time.perf_counter()
        values.append(pure.ei_parts(jax.random.key(seed), chain, params, samples=samples,
                                    shuffle_correction=shuffle, **binning)[0])
        times.append(time.perf_counter() - start)
    errors = np.array(values) - truth
    return {"name": f"shuffle{shuffle} N={samples:.0e}", "method": "sampled",
            "estimator": f"plugin, shuffle_correction={shuffle}", "samples": samples,
            "seeds": seeds, "bits_mean": float(np.mean(values)),
            "abs_error": float(np.abs(errors).mean()), "bias": float(errors.mean()),
            "sd": float(errors.std(ddof=1)) if seeds > 1 else None,
            "run_s": round(statistics.median(times), 4), **meta}


def print_table(records) -> None:
    truth = records[0]["bits"]
    print(f"\ntruth (exact, grid step {records[0]['grid_step']:g}): {truth:.6f} bits")
    print(f"{'case':<24}{'bits':>10}{'|error|':>11}{'bias':>11}{'sd':>9}{'seconds':>9}")
    for record in records[1:]:
        bits = record.get("bits", record.get("bits_mean"))
        bias = record.get("bias")
        sd = record.get("sd")
        print(f"{record['name']:<24}{bits:>10.5f}{record['abs_error']:>11.2e}"
              f"{'' if bias is None else f'{bias:+.2e}':>11}{'' if sd is None else f'{sd:.1e}':>9}"
              f"{record['run_s']:>9.3f}")
    plugin = [r for r in records if r.get("estimator") == "plugin" and "predicted_bias" in r]
    if plugin:
        print("\nplug-in bias predicted from the exact tables vs measured; production path time")
        for record in plugin:
            print(f"  N={record['samples']:.0e}: predicted {record['predicted_bias']:+.4f}, "
                  f"measured {record['bias']:+.4f}, pure.ei_parts_matrix "
                  f"{record['production_run_s']:.3f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--samples", default="1000,10000,100000",
                        help="comma-separated sample sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid-steps", default=",".join(f"{s:g}" for s in GRID_STEPS),
                        help="comma-separated grid steps of the exact rows ('' for none)")
    parser.add_argument("--shuffle", type=int, default=2,
                        help="surrogates of the shuffle-corrected plug-in row (0: no row)")
    args = parser.parse_args(argv)
    use_compilation_cache()
    sizes = [int(float(s)) for s in args.samples.split(",")]
    steps = [float(s) for s in args.grid_steps.split(",") if s.strip()]
    records = run(args.seeds, sizes, args.repeats, steps, args.shuffle)
    print_table(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
