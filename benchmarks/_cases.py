"""The benchmark cases of `compare_backends`, and how to run one on either library.

This module is imported both in the project environment (deep_ei_jax) and in the deep-ei
environment made by `setup_deep_ei.sh`, so it imports only numpy and torch: never jax and never
either EI library. The library is passed in as a module (`api`) and called through the deep-ei
0.6.4 names, falling back to the 0.7.0 names (deep-ei 0.7.0 on PyPI is 0.6.4 renamed).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

IN_RANGE = (0, 1)      # sigmoid networks throughout: inputs are sigmoid outputs of the layer before
OUT_RANGE = (0, 1)
BATCH_SIZE = 1000      # deep-ei's batch size (deep_ei_jax accepts and may ignore it)
WEIGHT_SEED = 0        # torch.manual_seed before building each network: same widths, same weights
CALL_SEED = 0          # torch.manual_seed before each measure call, in both libraries

# deep-ei 0.6.4 name -> 0.7.0 name (names not listed are the same in both).
RENAMED_IN_0_7_0 = {
    "ei_of_layer": "ei_parts",
    "ei_of_layer_matrix": "ei_parts_matrix",
    "vector_ei_of_layer": "ei",
    "sensitivity_of_layer": "sensitivity",
    "sensitivity_of_layer_matrix": "sensitivity_matrix",
}


class Call(NamedTuple):
    """One measure called on every Linear layer of a case's network."""
    measure: str                      # deep-ei 0.6.4 name
    samples: Optional[int]            # None: adaptive, stopping at `threshold`
    threshold: Optional[float] = None


class Case(NamedTuple):
    """A benchmark case: a sigmoid MLP without biases, its bin count and the calls to time."""
    name: str
    widths: tuple                     # layer widths, e.g. (20, 10) or (4, 5, 5, 3)
    bins: int                         # in_bins = out_bins
    calls: tuple                      # of Call, each applied to every Linear layer in order
    quick_calls: Optional[tuple] = None   # smaller calls for --quick (None: same as calls)
    deep_ei_skip: str = ""            # why deep-ei cannot run this case ('' if it can)
    functional: bool = False          # activations by torch.sigmoid: deep_ei_jax's graph path
    activation: str = "sigmoid"       # "sigmoid" or "gelu" (a module deep-ei does not know)
    out_range: tuple = OUT_RANGE

    def calls_for(self, quick: bool) -> tuple:
        return self.quick_calls if quick and self.quick_calls else self.calls

    @property
    def sizes(self) -> str:
        return "->".join(map(str, self.widths))


CASES = {case.name: case for case in (
    Case("W1", (20, 10), 64, (Call("ei_of_layer", 10 ** 6),)),
    # W1's network and weights written with torch.sigmoid: the hooks cannot see the activation,
    # so deep_ei_jax measures it on the captured graph (a Function layer): the general path
    Case("W1-graph", (20, 10), 64, (Call("ei_of_layer", 10 ** 6),),
         deep_ei_skip="deep-ei cannot see a functional activation (torch.sigmoid); W1's deep-ei "
                      "row is the same network and weights", functional=True),
    Case("W2", (4, 5), 8, (Call("vector_and_pairwise_ei", 10 ** 6),)),
    Case("W3", (100, 50), 16, (Call("ei_of_layer", 10 ** 5),)),
    Case("W4", (20, 10), 64, (Call("sensitivity_of_layer", 1000),)),
    Case("W5", (20, 10), 64, (Call("ei_of_layer", None, threshold=0.05),)),
    Case("W6", (784, 1000), 64, (Call("ei_of_layer", 10 ** 4),),
         deep_ei_skip="deep-ei allocates one float64 histogram per (input, output) pair up front: "
                      "784*1000*64*64*8 B = 25.7 GB, more than this machine's 24 GiB"),
    # wide layers (issue 16): tables of every pair would be 416 GB (W7) and 2.5 GB (W8)
    Case("W7", (5000, 5000), 64, (Call("ei_of_layer", 10 ** 3),),
         deep_ei_skip="deep-ei allocates one float64 histogram per pair up front: "
                      "5000*5000*64*64*8 B = 819 GB"),
    # a GPT-2-small MLP's shape; GELU spans about (-0.17, 0.84) on these inputs and weights
    Case("W8", (768, 3072), 16, (Call("ei_of_layer", 10 ** 4),),
         deep_ei_skip="deep-ei 0.6.4 knows no GELU activation", activation="gelu",
         out_range=(-0.2, 1.0)),
    Case("paper", (4, 5, 5, 3), 8,
         (Call("vector_and_pairwise_ei", 10 ** 7), Call("sensitivity_of_layer", 5000)),
         quick_calls=(Call("vector_and_pairwise_ei", 10 ** 6), Call("sensitivity_of_layer", 5000))),
)}


class FunctionalMLP(nn.Sequential):
    """`build_model`'s network (same modules, same state dict) whose forward applies the
    activations with torch.sigmoid instead of calling its Sigmoid modules."""

    def forward(self, x):
        for module in self:
            if isinstance(module, nn.Linear):
                x = torch.sigmoid(module(x))
        return x


def build_model(widths, functional: bool = False, activation: str = "sigmoid") -> nn.Sequential:
    """nn.Sequential(Linear(w0, w1, bias=False), Sigmoid(), Linear(w1, w2, bias=False), ...)
    (GELU() in place of Sigmoid() with activation="gelu").

    Weights are torch's default init after torch.manual_seed(WEIGHT_SEED), so networks of the same
    widths (W1, W4, W5) get the same weights.
    """
    torch.manual_seed(WEIGHT_SEED)
    modules = []
    for a, b in zip(widths[:-1], widths[1:]):
        act = nn.GELU() if activation == "gelu" else nn.Sigmoid()
        modules += [nn.Linear(a, b, bias=False), act]
    return (FunctionalMLP if functional else nn.Sequential)(*modules)


def save_weights(path, case_names) -> None:
    """Write the weights of the given cases to one .npz, keys '<case>/<state_dict key>'."""
    arrays = {}
    for name in case_names:
        for key, tensor in build_model(CASES[name].widths).state_dict().items():
            arrays[f"{name}/{key}"] = tensor.numpy()
    np.savez(path, **arrays)


def load_model(case: Case, weights_path) -> nn.Sequential:
    """The case's network with the weights stored by `save_weights`."""
    model = build_model(case.widths, case.functional, case.activation)
    with np.load(weights_path) as stored:
        state = {key: torch.from_numpy(stored[f"{case.name}/{key}"])
                 for key in model.state_dict()}
    model.load_state_dict(state)
    return model.eval()


def measure_function(api, measure: str) -> Callable:
    """`api.<measure>` by its 0.6.4 name, or by its 0.7.0 name where that is what `api` has."""
    function = getattr(api, measure, None) or getattr(api, RENAMED_IN_0_7_0.get(measure, ""), None)
    if function is None:
        raise AttributeError(f"{api.__name__} has neither {measure!r} nor its 0.7.0 name")
    return function


def _labelled(measure: str, result) -> dict:
    """A measure's result as {label: float}."""
    if measure == "vector_and_pairwise_ei":
        vector, pairwise = result
        return {"vector_ei": float(vector), "pairwise_ei": float(pairwise)}
    return {measure: float(result)}


def _samples_drawn(call: Call, num_inputs: int) -> Optional[int]:
    """Input samples one call draws: sensitivity draws `samples` per input neuron."""
    if call.samples is None:
        return None
    return call.samples * (num_inputs if call.measure.startswith("sensitivity") else 1)


class Plan(NamedTuple):
    """A case ready to run on one library: `run()` returns {label: bits}."""
    run: Callable[[], dict]
    samples: Optional[int]            # input samples one run draws (None if adaptive)


def plan(api, case: Case, model: nn.Sequential, *, quick: bool, device: str) -> Plan:
    """Bind every call of `case` to every Linear layer of `model`, through library `api`.

    The topology is built here, outside what gets timed. Each call is preceded by
    torch.manual_seed(CALL_SEED), so repeated runs and both libraries start from the same seed.
    """
    topology = api.topology_of(model, torch.zeros((1, case.widths[0])))
    layers = [module for module in model if isinstance(module, nn.Linear)]
    calls = case.calls_for(quick)
    common = dict(in_range=IN_RANGE, in_bins=case.bins, out_range=case.out_range,
                  out_bins=case.bins,
                  batch_size=BATCH_SIZE, device=device)

    def run() -> dict:
        values = {}
        for index, layer in enumerate(layers, start=1):
            prefix = f"L{index}." if len(layers) > 1 else ""
            for call in calls:
                kwargs = dict(common, samples=call.samples)
                if call.samples is None:
                    kwargs["threshold"] = call.threshold
                torch.manual_seed(CALL_SEED)
                result = measure_function(api, call.measure)(layer, topology, **kwargs)
                values.update({prefix + label: value
                               for label, value in _labelled(call.measure, result).items()})
        return values

    drawn = [_samples_drawn(call, layer.in_features) for layer in layers for call in calls]
    return Plan(run, None if None in drawn else sum(drawn))
