"""Integrations with training and logging tools, each an optional extra imported on its own.

* `deep_ei_jax.integrations.lightning`: `EICallback`, measures a LightningModule at epoch ends and
  logs through the trainer's loggers (`pip install 'deep_ei_jax[lightning]'`).
* `deep_ei_jax.integrations.tensorboard`: `write_scalars`, records (a Tracker's, a sweep's, the
  command line's) as a TensorBoard event file (`pip install 'deep_ei_jax[tensorboard]'`); the
  command line's `deep-ei-jax export RESULTS --tensorboard DIR`.

Every integration logs a value as `metric_name(measure, layer)`, e.g. 'ei_parts/fc1'. Importing
this package imports no framework (and no torch).
"""

from ..sweeping import MEASURES


def metric_name(measure: str, layer) -> str:
    """The name a value is logged under: '<measure>/<layer>', e.g. 'ei_parts/fc1'."""
    return f"{measure}/{layer}"


__all__ = ["MEASURES", "metric_name"]
