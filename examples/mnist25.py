"""The paper's 25-6-6-6-5 networks (sigmoid, tanh, relu) on digits downsampled to 5x5.

    pip install '.[torch,examples]'
    python examples/mnist25.py --activation sigmoid|tanh|relu [--quick] [--out DIR]

deep-ei's experiments/runs/mnist25-6-6-6-5 (and its tanh and relu variants) train on MNIST
digits 0-4 resized from 28x28 to 5x5 with `skimage.transform.resize`. MNIST is not available
offline here, so this runs the same architectures and measurement settings on scikit-learn's 8x8
digits (classes 0-4: 901 images instead of ~30,600), resized to 5x5 the same way: pixels scaled
to [0, 1], an anti-aliasing Gaussian (sigma = (scale - 1) / 2 = 0.3), then bilinear
interpolation at the output pixels' centres, edges mirrored (what `resize` does by default;
written with scipy.ndimage). 80% of the shuffled images train, 20% test.

As the paper's scripts:
- network: Linear(25,6) -> act -> Linear(6,6) -> act -> Linear(6,6) -> act -> Linear(6,5) -> act,
  no biases, weights uniform in +-1/sqrt(fan_in), torch seed 1 (the scripts' first run);
- training: SGD, lr 1e-2, summed squared error on one-hot targets, shuffled batches of 50,
  500 epochs; measured every 10 epochs (sigmoid) or 20 (tanh, relu);
- measuring: 8 bins, `vector_and_pairwise_ei` from 1e7 samples, `sensitivity_of_layer` from 5000
  per input; ranges: sigmoid and relu (0, 1) in and out for every layer (relu outputs above 1
  are dropped); tanh: in (0, 1) for the first layer and (-1, 1) for the others, out (-1, 1).
With 901 images an epoch is 15 batches, where the paper's 25,000 training images made 500:
500 epochs here are 7,500 SGD steps, not 250,000.

`--quick` runs the same configuration for 20 epochs with 1e4 samples and sensitivity 500. The
runs reported in docs/guide/paper.md used `--every 50 --samples 1000000 --sensitivity-samples
1000` (1-3 minutes each on a shared 2-core CPU); the full default setting measures ~40x more.
Writes the records (JSON lines) and the figures to --out, and prints the times.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (Settings, finish_args, paper_init, parser,  # noqa: E402 (shared helpers)
                     train_and_measure)

CLASSES = 5
WIDTHS = (25, 6, 6, 6, CLASSES)
BATCH_SIZE = 50
SEED = 1
# the 25 -> 6 layer at 1e7 samples needs about 1.2 GiB per checkpoint in one sweep call
MEMORY_BUDGET = 2 * 1024 * 2 ** 20
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
EVERY = {"sigmoid": 10, "tanh": 20, "relu": 20}
SETTINGS = Settings(epochs=500, every=None, samples=10 ** 7, sensitivity_samples=5000,
                    quick_epochs=20, quick_samples=10 ** 4, quick_sensitivity_samples=500)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Square images resized as `skimage.transform.resize(image, (size, size))` does by default
    (order 1, mode 'reflect', anti-aliasing when shrinking).

    Args:
      images: float [N, H, H].
      size: the output side.

    Returns:
      float64 [N, size, size].
    """
    from scipy import ndimage
    images = np.asarray(images, np.float64)
    scale = images.shape[1] / size
    sigma = max(0.0, (scale - 1) / 2)
    centres = (np.arange(size) + 0.5) * scale - 0.5  # output pixel centres in input pixels
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    out = np.empty((len(images), size, size))
    for i, image in enumerate(images):
        if scale > 1:
            image = ndimage.gaussian_filter(image, sigma, mode="mirror")
        out[i] = ndimage.map_coordinates(image, [rows, cols], order=1, mode="mirror")
    return out


def digits25(seed: int = 0, test_fraction: float = 0.2):
    """Scikit-learn's 8x8 digits of classes 0-4, pixels / 16, resized to 5x5, flattened.

    Returns:
      ((x_train, y_train), (x_test, y_test)): x [N, 25] float32, y [N, 5] float32 one-hot.
    """
    from sklearn.datasets import load_digits
    data = load_digits(n_class=CLASSES)
    pixels = resize(data.images / 16.0, 5).reshape(len(data.images), 25)
    x = torch.tensor(pixels, dtype=torch.float32)
    y = nn.functional.one_hot(torch.tensor(data.target), CLASSES).float()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(round(len(x) * (1 - test_fraction)))
    train, test = order[:split], order[split:]
    return (x[train], y[train]), (x[test], y[test])


def network(activation: str = "sigmoid"):
    """25-6-6-6-5 without biases, each Linear followed by `activation`; the paper's init."""
    modules = []
    for n_in, n_out in zip(WIDTHS[:-1], WIDTHS[1:]):
        modules += [nn.Linear(n_in, n_out, bias=False), ACTIVATIONS[activation]()]
    model = nn.Sequential(*modules)
    paper_init(model)
    return model


def ranges(activation: str):
    """(in_range, out_range) per layer name, as the paper's run scripts set them."""
    names = [str(2 * i) for i in range(len(WIDTHS) - 1)]
    if activation == "tanh":
        return ({name: (0.0, 1.0) if name == "0" else (-1.0, 1.0) for name in names},
                {name: (-1.0, 1.0) for name in names})
    return ({name: (0.0, 1.0) for name in names}, {name: (0.0, 1.0) for name in names})


def main(argv=None) -> int:
    options = parser(__doc__.splitlines()[0], SETTINGS, out=None)
    options.add_argument("--activation", choices=sorted(ACTIVATIONS), default="sigmoid",
                         help="the activation after every layer (default sigmoid)")
    args = finish_args(options, argv, SETTINGS)
    args.every = args.every or EVERY[args.activation]
    out = args.out or f"mnist25_{args.activation}_results"
    train_set, test_set = digits25()
    in_range, out_range = ranges(args.activation)
    train_and_measure(lambda: network(args.activation), (train_set, test_set),
                      epochs=args.epochs, every=args.every, samples=args.samples,
                      sensitivity_samples=args.sensitivity_samples, bins=args.bins, out=out,
                      batch_size=BATCH_SIZE, in_range=in_range, out_range=out_range, seed=SEED,
                      memory_budget=MEMORY_BUDGET,
                      describe=f" ({args.activation}) on {len(train_set[0])} digits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
