"""Gradients of the exact (infinite-sample) EI_parts of a layer with respect to its weights.

    python examples/exact_grad.py

Exact EI_parts is a smooth function of the weights (no sampling noise, no histogram), so it can be
differentiated with `jax.grad` and optimised. This script checks one gradient entry against a
central finite difference, then runs a few steps of gradient ascent on the EI_parts of a
20 -> 10 sigmoid layer at 16 bins, printing EI_parts and sensitivity as it goes (each step is one
exact evaluation with its gradient, well under a second on a laptop CPU).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from deep_ei_jax.exact import exact_ei_parts, exact_grid_points, exact_sensitivity

SETTINGS = dict(activation="sigmoid", in_range=(0.0, 1.0), out_range=(0.0, 1.0), in_bins=16,
                out_bins=16)


def main():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 10)) / np.sqrt(20)
    # The grid size must be static under jax.grad: fix it from a bound on the weights' size
    # (twice the initial support). If the weights outgrow it the lattice step grows beyond
    # 1e-3 in proportion: still correct, a little coarser.
    grid_points = exact_grid_points(2 * w, in_range=SETTINGS["in_range"], grid_step=1e-3)

    def ei_parts(weights):
        return exact_ei_parts(weights, grid_points=grid_points, **SETTINGS)

    value_and_grad = jax.jit(jax.value_and_grad(ei_parts))

    start = time.perf_counter()
    value, grad = value_and_grad(w)
    print(f"EI_parts {float(value):.6f} bits; gradient in {time.perf_counter() - start:.2f} s "
          "(first call compiles)")
    eps, index = 1e-5, (3, 7)
    step = np.zeros_like(w)
    step[index] = eps
    finite = (float(ei_parts(w + step)) - float(ei_parts(w - step))) / (2 * eps)
    print(f"d EI_parts / d w{index}: autodiff {float(grad[index]):+.8f}, "
          f"finite difference {finite:+.8f} (jit takes w as float32: they differ by ~1e-7)")

    # EI_parts has sharp ridges (a column dominated by one input is nearly deterministic and its
    # pair terms jump as bin edges pass), so the step is halved whenever it would lose information.
    learning_rate = 0.5
    print(f"\n{'step':>4} {'EI_parts':>10} {'sensitivity':>12} {'|w|':>8} {'rate':>7} "
          f"{'seconds':>8}")
    value, grad = value_and_grad(w)
    value, grad = float(value), np.asarray(grad)
    for iteration in range(1, 31):
        start = time.perf_counter()
        candidate = w + learning_rate * grad      # ascend: more information per pair
        new_value, new_grad = value_and_grad(candidate)
        new_value = float(new_value)
        elapsed = time.perf_counter() - start
        if new_value < value:
            learning_rate /= 2
            continue
        w, value, grad = candidate, new_value, np.asarray(new_grad)
        if iteration % 2 == 1:
            sensitivity = float(exact_sensitivity(w, **SETTINGS))
            print(f"{iteration:>4} {value:>10.4f} {sensitivity:>12.4f} "
                  f"{float(jnp.linalg.norm(w)):>8.3f} {learning_rate:>7.3f} {elapsed:>8.3f}")

if __name__ == "__main__":
    main()
