"""What the training examples share: the SGD loop with checkpoints, and writing the results."""
from __future__ import annotations

import argparse
import json
import os
from typing import NamedTuple

import torch

from deep_ei_jax import plotting


def paper_init(model) -> None:
    """The paper's initialisation: every Linear weight uniform in +-1/sqrt(fan_in) (drawn from
    torch's generator, in module order); biases, where a layer has them, keep torch's default
    (which draws from the same interval)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            bound = 1.0 / module.in_features ** 0.5
            torch.nn.init.uniform_(module.weight, -bound, bound)


def train(model, train_set, test_set, epochs: int, every: int, batch_size: int = 10):
    """SGD (lr 1e-2, shuffled batches of `batch_size`) on the summed squared error.

    Returns:
      ([(epoch, state_dict)], [(epoch, test accuracy)]), every `every` epochs and at the end,
      each taken before that epoch's training (as deep-ei's run scripts measure).
    """
    (x, y), (x_test, y_test) = train_set, test_set
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small train several times faster on one thread
    try:
        return _train(model, x, y, x_test, y_test, epochs, every, batch_size)
    finally:
        torch.set_num_threads(threads)


def _train(model, x, y, x_test, y_test, epochs, every, batch_size):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    checkpoints, accuracy = [], []
    for epoch in range(epochs + 1):
        if epoch % every == 0 or epoch == epochs:
            checkpoints.append((epoch, {k: v.clone() for k, v in model.state_dict().items()}))
            with torch.no_grad():
                correct = (model(x_test).argmax(1) == y_test.argmax(1)).float().mean().item()
            accuracy.append((epoch, correct))
        if epoch == epochs:
            break
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = ((model(x[batch]) - y[batch]) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return checkpoints, accuracy


def report(records, epochs, out: str) -> None:
    """Writes records.jsonl and the figures to `out`; prints the first, middle and last epochs."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "records.jsonl"), "w") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
    print(f"{'epoch':>6} {'layer':>5} {'EI':>8} {'EI_parts':>9} {'sensitivity':>12} "
          f"{'degeneracy':>11}")
    for record in records:
        if record["step"] in (epochs[0], epochs[len(epochs) // 2], epochs[-1]):
            print(f"{record['step']:>6} {record['layer']:>5} {record['ei']:>8.3f} "
                  f"{record['ei_parts']:>9.3f} {record['sensitivity']:>12.3f} "
                  f"{record['degeneracy']:>11.3f}")
    for path in plotting.save_figures(records, out):
        print("wrote", path)


def train_and_measure(network, data, *, epochs: int, every: int, samples: int,
                      sensitivity_samples: int, bins: int, out: str, describe: str = "",
                      batch_size: int = 10, in_range=None, out_range=None,
                      seed: int = 0,
                      memory_budget: int = 1024 * 2 ** 20) -> list[dict]:
    """Trains `network()` on `data` = (train_set, test_set), measures every checkpoint's layers in
    one sweep per layer (ranges as `deep_ei_jax.sweep` takes them; None: inferred from the
    activations), writes the results to `out`, prints the times and returns the records.
    `seed` seeds torch before `network()` is built (the initial weights); the measurements use
    seed 0. `memory_budget`: bytes one compiled sweep call may hold (`deep_ei_jax.sweep`)."""
    import time

    import deep_ei_jax as dei

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = network()
    train_set, test_set = data
    checkpoints, accuracy = train(model, train_set, test_set, epochs, every, batch_size)
    trained = time.perf_counter()
    print(f"trained {epochs} epochs{describe} in {trained - start:.1f} s; test accuracy "
          f"{accuracy[0][1]:.2f} -> {accuracy[-1][1]:.2f}")
    epochs_measured = [epoch for epoch, _ in checkpoints]
    example = torch.zeros((1, train_set[0].shape[1]))
    records = dei.sweep([state for _, state in checkpoints], example, model=network(),
                        steps=epochs_measured, samples=samples,
                        sensitivity_samples=sensitivity_samples, in_bins=bins, out_bins=bins,
                        in_range=in_range, out_range=out_range, seed=0,
                        memory_budget=memory_budget)
    accuracy = dict(accuracy)
    for record in records:
        record["test_accuracy"] = accuracy[record["step"]]
    measured = time.perf_counter()
    layers = len({record["layer"] for record in records})
    print(f"measured {len(checkpoints)} checkpoints x {layers} layers in "
          f"{measured - trained:.1f} s ({samples} samples, sensitivity {sensitivity_samples})")
    report(records, epochs_measured, out)
    print(f"total {time.perf_counter() - start:.1f} s")
    return records


class Settings(NamedTuple):
    """An example's run: its full-size settings and the smaller ones of --quick."""

    epochs: int
    every: int
    samples: int
    sensitivity_samples: int
    quick_epochs: int
    quick_samples: int
    quick_sensitivity_samples: int


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def range_option(text: str):
    """--in-range / --out-range: LOW,HIGH, 'inferred' (from the activations, None) or 'dynamic'
    (checked by the sweep: only the output side may be dynamic)."""
    if text in ("inferred", "dynamic"):
        return None if text == "inferred" else text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0,1), 'inferred' or "
                                         f"'dynamic'; got {text!r}") from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"expected LOW < HIGH; got {text!r}")
    return (low, high)


def parser(description: str, settings: Settings, out: str) -> argparse.ArgumentParser:
    """The examples' shared options (an example adds its own before `finish_args`)."""
    s = settings
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help=f"at most {s.quick_epochs} epochs, {s.quick_samples:.0e} samples, "
                             f"sensitivity {s.quick_sensitivity_samples}")
    parser.add_argument("--epochs", type=_positive, default=s.epochs, help="training epochs")
    parser.add_argument("--every", type=_positive, default=s.every,
                        help=f"measure every N epochs (default {s.every or 'by the example'})")
    parser.add_argument("--samples", type=_positive, default=None,
                        help=f"samples for EI and EI_parts (default {s.samples:.0e})")
    parser.add_argument("--sensitivity-samples", type=_positive, default=None,
                        help=f"samples per input for sensitivity (default "
                             f"{s.sensitivity_samples})")
    parser.add_argument("--bins", type=_positive, default=8, help="input and output bins")
    parser.add_argument("--out", default=out, help="folder for records and figures")
    return parser


def finish_args(parser: argparse.ArgumentParser, argv, settings: Settings):
    """The parsed arguments with --quick and the defaults applied (`samples`,
    `sensitivity_samples`, `epochs` resolved)."""
    s = settings
    args = parser.parse_args(argv)
    samples, sensitivity = s.samples, s.sensitivity_samples
    if args.quick:
        args.epochs = min(args.epochs, s.quick_epochs)
        samples, sensitivity = s.quick_samples, s.quick_sensitivity_samples
    args.samples = args.samples or samples
    args.sensitivity_samples = args.sensitivity_samples or sensitivity
    return args


def parse_args(argv, description: str, settings: Settings, out: str):
    """The shared options alone, parsed (`parser` then `finish_args`)."""
    return finish_args(parser(description, settings, out), argv, settings)
