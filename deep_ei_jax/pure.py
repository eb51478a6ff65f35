"""The pure-JAX API in one namespace: layers as arrays, measures that take a PRNG key first.

For example::

    import jax, numpy as np
    from deep_ei_jax import pure

    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(20,))
    params = ({"w": np.random.randn(20, 10).astype("float32")},)
    value, info = pure.ei_parts(jax.random.key(0), chain, params, in_range=(0, 1),
                                out_range=(0, 1), in_bins=64, out_bins=64, samples=100_000)

No torch is needed or imported.
"""
from .affine import affine_reason
from .costs import Cost
from .costs import estimate as estimate_cost
from .dependency import dependencies
from .information import entropy, mutual_information, nats_to_bits
from .layers import (AvgPool2d, Chain, Conv2d, Dense, Flatten, Function, MaxPool2d, apply,
                     out_shape, receptive_field)
from .measures import (Info, degeneracy, ei, ei_and_ei_parts, ei_parts, ei_parts_matrix,
                       eis_between_groups, sensitivity, sensitivity_matrix)
from .positions import Restriction, position_outputs, restrict
from .sweeping import SweepResult, stack_params, sweep

__all__ = [
    "AvgPool2d", "Chain", "Conv2d", "Dense", "Flatten", "Function", "MaxPool2d", "Info", "apply",
    "out_shape", "receptive_field", "affine_reason", "dependencies", "position_outputs",
    "restrict", "Restriction", "entropy", "mutual_information", "nats_to_bits", "ei", "ei_parts",
    "ei_parts_matrix", "ei_and_ei_parts", "eis_between_groups", "sensitivity",
    "sensitivity_matrix", "degeneracy", "sweep", "stack_params", "SweepResult", "Cost",
    "estimate_cost",
]
