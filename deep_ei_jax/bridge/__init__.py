"""The torch bridge: the only part of deep_ei_jax that imports torch."""
try:
    import torch  # noqa: F401
except ModuleNotFoundError as error:  # the extra is missing: name it
    if error.name != "torch":
        raise
    raise ModuleNotFoundError("deep_ei_jax's torch API (deep_ei_jax.sweep, Tracker, topology_of, "
                              "ei_of_layer, ...) needs torch: pip install 'deep_ei_jax[torch]'",
                              name="torch") from error

from .api import (MI, LayerInfo, degeneracy_of_layer, ei, ei_of_layer, ei_of_layer_matrix,
                  ei_parts, ei_parts_matrix, eis_between_groups, estimate_cost, resolve_span,
                  sensitivity,
                  sensitivity_matrix, sensitivity_of_layer, sensitivity_of_layer_matrix,
                  vector_and_pairwise_ei, vector_ei_of_layer)
from .convert import Span, layer_chain
from .sweeping import measurable_layers, sweep, to_dataframe
from .topology import topology_of
from .tracking import Tracker, read_records

__all__ = [
    "LayerInfo", "MI", "Span", "Tracker", "degeneracy_of_layer", "ei", "ei_of_layer",
    "ei_of_layer_matrix", "ei_parts", "ei_parts_matrix", "eis_between_groups", "estimate_cost",
    "layer_chain",
    "measurable_layers", "read_records", "resolve_span", "sensitivity", "sensitivity_matrix",
    "sensitivity_of_layer", "sensitivity_of_layer_matrix", "sweep", "to_dataframe", "topology_of",
    "vector_and_pairwise_ei", "vector_ei_of_layer",
]
