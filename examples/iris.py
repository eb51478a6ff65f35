"""Iris: train the 4-5-5-3 sigmoid network of the deep-ei paper and follow its layers in the causal
plane.

    pip install '.[torch,examples]'
    python examples/iris.py [--quick] [--epochs 1500] [--out iris_results]

Training as in deep-ei's Iris experiment: inputs divided by 8, 100 training and 50 test samples,
SGD with lr 1e-2, summed squared error on one-hot targets, batches of 10. Every 50 epochs the
weights are kept; at the end one `deep_ei_jax.sweep` per layer measures every checkpoint in one
compiled call (8 bins; EI and EI_parts from 1e7 samples, sensitivity from 5000 per input;
`--quick`: 1e5 and 1000). Writes the records (JSON lines) and the figures (causal plane,
measures vs epoch) to --out, and prints the total time.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Settings, parse_args, train_and_measure  # noqa: E402 (shared helpers)

# the paper's settings (test accuracy reaches ~0.98 by epoch 1250); --quick runs in under a minute
SETTINGS = Settings(epochs=1500, every=50, samples=10 ** 7, sensitivity_samples=5000,
                    quick_epochs=600, quick_samples=10 ** 5, quick_sensitivity_samples=1000)


def iris_data(seed: int = 0):
    from sklearn.datasets import load_iris
    data = load_iris()
    x = torch.tensor(data.data / 8.0, dtype=torch.float32)
    y = nn.functional.one_hot(torch.tensor(data.target), 3).float()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:100], order[100:]
    return (x[train], y[train]), (x[test], y[test])


def network():
    return nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 5), nn.Sigmoid(),
                         nn.Linear(5, 3), nn.Sigmoid())


def main(argv=None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0], SETTINGS, out="iris_results")
    train_and_measure(network, iris_data(), epochs=args.epochs, every=args.every,
                      samples=args.samples, sensitivity_samples=args.sensitivity_samples,
                      bins=args.bins, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
