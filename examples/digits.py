"""Digits: train a 64-6-6-6-5 sigmoid network on 8x8 digits and follow its layers in the causal
plane.

    pip install '.[torch,examples]'
    python examples/digits.py [--quick] [--epochs 400] [--every 20] [--out digits_results]

The offline stand-in for the deep-ei paper's MNIST experiment (digits downsampled to 5x5): here
scikit-learn's 8x8 digits, classes 0-4 (901 images, no download), pixels scaled to [0, 1], 80%
for training and 20% for testing. Training as in examples/iris.py: SGD with lr 1e-2, summed
squared error on one-hot targets, batches of 10. Every `--every` epochs the weights are kept; at
the end one `deep_ei_jax.sweep` per layer measures every checkpoint in one compiled call (8 bins;
EI and EI_parts from 1e6 samples, sensitivity from 2000 per input; `--quick`: 300 epochs, 1e5
and 500). Writes the records (JSON lines) and the figures (causal plane, measures vs epoch) to
--out, and prints the total time.

With 64 inputs at 8 bins nearly every noise sample is a distinct input state, so the first
layer's vector EI is close to the entropy of its binned output (at most 6 * 3 = 18 bits, and at
most log2(samples)); the plug-in EI_parts of a 64 -> 6 layer carries a bias of about
384 * 49 / (2 N ln 2) bits, 0.014 bits at N = 1e6.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Settings, parse_args, train_and_measure  # noqa: E402 (shared helpers)

# test accuracy reaches ~0.97 by epoch 400; --quick takes about a minute
SETTINGS = Settings(epochs=400, every=20, samples=10 ** 6, sensitivity_samples=2000,
                    quick_epochs=300, quick_samples=10 ** 5, quick_sensitivity_samples=500)

CLASSES = 5
WIDTHS = (64, 6, 6, 6, CLASSES)


def digits_data(seed: int = 0, test_fraction: float = 0.2):
    """Scikit-learn's 8x8 digits of classes 0-4, pixels / 16 (in [0, 1]), one-hot targets.

    Returns:
      ((x_train, y_train), (x_test, y_test)): x [N, 64] float32, y [N, 5] float32.
    """
    from sklearn.datasets import load_digits
    data = load_digits(n_class=CLASSES)
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = nn.functional.one_hot(torch.tensor(data.target), CLASSES).float()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(round(len(x) * (1 - test_fraction)))
    train, test = order[:split], order[split:]
    return (x[train], y[train]), (x[test], y[test])


def network():
    """64-6-6-6-5, every layer followed by a sigmoid."""
    modules = []
    for n_in, n_out in zip(WIDTHS[:-1], WIDTHS[1:]):
        modules += [nn.Linear(n_in, n_out), nn.Sigmoid()]
    return nn.Sequential(*modules)


def main(argv=None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0], SETTINGS, out="digits_results")
    train_set, test_set = digits_data()
    train_and_measure(network, (train_set, test_set), epochs=args.epochs, every=args.every,
                      samples=args.samples, sensitivity_samples=args.sensitivity_samples,
                      bins=args.bins, out=args.out, describe=f" on {len(train_set[0])} digits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
