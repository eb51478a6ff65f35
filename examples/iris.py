"""Iris: the deep-ei paper's 4-5-5-3 sigmoid network, trained and measured as the paper ran it.

    pip install '.[torch,examples]'
    python examples/iris.py [--quick] [--bias] [--in-range 0,1] [--out-range 0,1] [--out DIR]

The configuration of deep-ei's experiments/runs/iris4-5-5-3 (Mattsson, Michaud & Hoel 2020):
- network: Linear(4,5) -> Sigmoid -> Linear(5,5) -> Sigmoid -> Linear(5,3) -> Sigmoid, without
  biases, weights uniform in +-1/sqrt(fan_in), torch seed 0 (`--bias` adds biases);
- data: scikit-learn's Iris, inputs divided by 8, shuffled, the first 100 for training and the
  other 50 for testing (the paper shuffled with Python's unseeded `random`; ours is seeded);
- training: SGD, lr 1e-2, summed squared error on one-hot targets, shuffled batches of 10,
  4000 epochs;
- measuring: every 50 epochs, every layer with in_range = out_range = (0, 1) and 8 bins,
  `vector_and_pairwise_ei` from 1e7 samples and `sensitivity_of_layer` from 5000 per input
  (here one `deep_ei_jax.sweep` per layer for all checkpoints, seed 0 for every measurement;
  deep-ei drew fresh noise for each call). `--in-range`/`--out-range` take LOW,HIGH or 'inferred'
  (from the activations: the first layer's input then gets (-10, 10)); `--out-range dynamic`.

`--quick` runs the same configuration for 100 epochs with 1e4 samples and sensitivity 500
(a few seconds). Writes the records (JSON lines) and the figures (causal plane, measures vs
epoch) to --out, and prints the times.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (Settings, finish_args, paper_init, parser,  # noqa: E402 (shared helpers)
                     range_option, train_and_measure)

SETTINGS = Settings(epochs=4000, every=50, samples=10 ** 7, sensitivity_samples=5000,
                    quick_epochs=100, quick_samples=10 ** 4, quick_sensitivity_samples=500)
PAPER_RANGE = (0.0, 1.0)
BATCH_SIZE = 10


def iris_data(seed: int = 0):
    """Iris inputs / 8 and one-hot targets, shuffled with `seed`: 100 for training, 50 to test."""
    from sklearn.datasets import load_iris
    data = load_iris()
    x = torch.tensor(data.data / 8.0, dtype=torch.float32)
    y = nn.functional.one_hot(torch.tensor(data.target), 3).float()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:100], order[100:]
    return (x[train], y[train]), (x[test], y[test])


def network(bias: bool = False):
    """4-5-5-3 with sigmoids, the paper's initialisation (draws from torch's generator)."""
    model = nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Sigmoid(), nn.Linear(5, 5, bias=bias),
                          nn.Sigmoid(), nn.Linear(5, 3, bias=bias), nn.Sigmoid())
    paper_init(model)
    return model


def main(argv=None) -> int:
    options = parser(__doc__.splitlines()[0], SETTINGS, out="iris_results")
    options.add_argument("--bias", action="store_true", help="layers with biases (the paper's "
                         "have none)")
    options.add_argument("--in-range", type=range_option, default=PAPER_RANGE,
                         help="input range of every layer: LOW,HIGH or 'inferred' (default 0,1)")
    options.add_argument("--out-range", type=range_option, default=PAPER_RANGE,
                         help="output range of every layer: LOW,HIGH, 'inferred' or 'dynamic' "
                         "(default 0,1)")
    args = finish_args(options, argv, SETTINGS)
    train_and_measure(lambda: network(args.bias), iris_data(), epochs=args.epochs,
                      every=args.every, samples=args.samples,
                      sensitivity_samples=args.sensitivity_samples, bins=args.bins, out=args.out,
                      batch_size=BATCH_SIZE, in_range=args.in_range, out_range=args.out_range,
                      describe=" (biases)" if args.bias else " (no biases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
