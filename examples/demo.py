"""Demo: EI, EI_parts, sensitivity and degeneracy of every layer of a small torch MLP.

    python examples/demo.py
"""
import time

import torch
from torch import nn

import deep_ei_jax as dei


def main():
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Linear(4, 5), nn.Sigmoid(),
        nn.Linear(5, 5), nn.Sigmoid(),
        nn.Linear(5, 3), nn.Sigmoid(),
    )
    topology = dei.topology_of(network, input=torch.zeros((1, 4)))
    settings = dict(in_range=(0, 1), in_bins=8, out_range=(0, 1), out_bins=8)
    print(f"{'layer':<24}{'EI':>8}{'EI_parts':>10}{'sensitivity':>13}{'degeneracy':>12}"
          f"{'samples':>10}")
    start = time.perf_counter()
    for layer in (network[0], network[2], network[4]):
        (ei, ei_parts), info = dei.vector_and_pairwise_ei(layer, topology, samples=200_000,
                                                          return_info=True, **settings)
        sensitivity = dei.sensitivity_of_layer(layer, topology, samples=5_000, **settings)
        name = f"Linear({layer.in_features}->{layer.out_features})"
        print(f"{name:<24}{ei:>8.3f}{ei_parts:>10.3f}{sensitivity:>13.3f}"
              f"{sensitivity - ei:>12.3f}{info.samples:>10}")
    print(f"(bits; degeneracy = sensitivity - EI; {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
