"""`EICallback`: EI, EI_parts, sensitivity and degeneracy of a LightningModule at epoch ends.

Usage::

    from lightning.pytorch import Trainer
    from deep_ei_jax.integrations.lightning import EICallback

    callback = EICallback(torch.zeros((1, 4)), every_n_epochs=1, samples=100_000,
                          sensitivity_samples=1000, in_bins=8, out_bins=8)
    Trainer(max_epochs=20, callbacks=[callback], logger=TensorBoardLogger("runs")).fit(module)

At the end of every `every_n_epochs`-th training epoch the module is measured by
`deep_ei_jax.sweep` (a sweep of one parameter set, with the callback's fixed `seed`, so a value
equals a sweep of the checkpoint saved at that epoch, in eval mode, with the same seed), and
every value is logged with `LightningModule.log` as `ei/<layer>`, `ei_parts/<layer>`,
`sensitivity/<layer>` and `degeneracy/<layer>`: whatever loggers the trainer has (TensorBoard,
CSV, W&B, MLflow, ...) receive them at the trainer's step, next to the loss, and `EarlyStopping`
or `ModelCheckpoint` may monitor them.

Measuring leaves training as it was: the module is measured in eval mode without gradients and
every module's train/eval flag is put back; torch's random generators are not drawn from (the
sweep's noise comes from JAX, keyed by `seed`; their states are also saved and restored around
the measurement, for modules whose forward pass draws numbers); buffers such as BatchNorm running
statistics are left unchanged. With several processes (DDP), only global rank 0 measures.

Needs Lightning: `pip install 'deep_ei_jax[lightning]'`.
"""
from __future__ import annotations

import numbers

try:
    from lightning.pytorch import Callback
except ImportError as error:  # the extra is missing (or lightning itself fails to import)
    if getattr(error, "name", None) not in ("lightning", "lightning.pytorch"):
        raise
    raise ImportError("deep_ei_jax.integrations.lightning needs Lightning: "
                      "pip install 'deep_ei_jax[lightning]' (or pip install lightning)") from error

import numpy as np
import torch

from .._checks import check_measures
from ..bridge.sweeping import check_settings, layer_names, sweep
from ..bridge.topology import topology_of
from ..bridge.tracking import undisturbed
from . import MEASURES, metric_name

__all__ = ["EICallback", "metric_name"]


class EICallback(Callback):
    """Measures the module at the end of every `every_n_epochs`-th training epoch and logs it.

    Args:
      example_input: an input batch for the module, e.g. `torch.zeros((1, 4))` (moved to the
        module's device when measuring).
      every_n_epochs: measure after epochs n-1, 2n-1, ... (0-based), as Lightning counts.
      layers, measures, samples, sensitivity_samples, in_bins, out_bins, seed, policy, method:
        as `deep_ei_jax.sweep` (layer names are those of `module.named_modules()`; the same seed
        at every epoch, so differences between epochs are the network's, not the noise's).
      prog_bar: also show the values in the progress bar.

    Attributes:
      records: the records measured so far (as `deep_ei_jax.sweep` returns them, with 'epoch'
        and 'step', the trainer's global step, added; on global rank 0 only).
    """

    def __init__(self, example_input, *, every_n_epochs: int = 1, layers=None, measures=None,
                 samples: int = 100_000, sensitivity_samples: int = 500, in_bins: int = 64,
                 out_bins: int = 64, seed: int = 0, policy: str = "drop", method: str = "auto",
                 prog_bar: bool = False):
        super().__init__()
        if not isinstance(example_input, torch.Tensor):
            raise TypeError(f"example_input must be a torch.Tensor batch; "
                            f"got {type(example_input).__name__}")
        if isinstance(every_n_epochs, bool) or not isinstance(
                every_n_epochs, (numbers.Integral, np.integer)) or every_n_epochs <= 0:
            raise ValueError(f"every_n_epochs must be a positive integer; got {every_n_epochs!r}")
        if layers is not None and not isinstance(layers, (str, list, tuple, torch.nn.Module)):
            raise TypeError(f"layers must be None or a list of module names or modules; "
                            f"got {layers!r}")
        check_settings(samples=samples, sensitivity_samples=sensitivity_samples, in_bins=in_bins,
                       out_bins=out_bins, seed=seed, policy=policy, method=method)
        self.example_input = example_input
        self.every_n_epochs = int(every_n_epochs)
        self.measures = MEASURES if measures is None else \
            check_measures(measures, MEASURES)
        self.settings = dict(layers=layers, measures=self.measures, samples=samples,
                             sensitivity_samples=sensitivity_samples, in_bins=in_bins,
                             out_bins=out_bins, seed=seed, policy=policy, method=method)
        self.prog_bar = bool(prog_bar)
        self.records: list[dict] = []

    def should_measure(self, epoch: int) -> bool:
        """Whether the end of (0-based) `epoch` is a measuring point."""
        return (epoch + 1) % self.every_n_epochs == 0

    def measure(self, module) -> list[dict]:
        """The records of `module` now, measured without disturbing its training state."""
        with undisturbed(module):
            example = self.example_input.to(_device_of(module))
            records = sweep([module], example, **self.settings)
        for record in records:
            record.pop("model", None)
        return records

    def on_fit_start(self, trainer, pl_module) -> None:
        """Checks, before training, that `example_input` fits the module and `layers` names
        measurable layers (a bad argument fails now, not after the first epoch)."""
        if not trainer.is_global_zero:
            return
        with undisturbed(pl_module):
            example = self.example_input.to(_device_of(pl_module))
            layer_names(pl_module, topology_of(pl_module, example), self.settings["layers"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.should_measure(trainer.current_epoch):
            return
        if not trainer.is_global_zero:
            return
        records = self.measure(pl_module)
        several = trainer.world_size > 1
        for record in records:
            record.update(epoch=trainer.current_epoch, step=trainer.global_step)
            for measure in self.measures:
                # a float64 tensor (on the CPU, which has float64 whatever the accelerator):
                # the loggers get the value as measured, not rounded to float32
                value = torch.tensor(float(record[measure]), dtype=torch.float64)
                pl_module.log(metric_name(measure, record["layer"]), value, on_step=False,
                              on_epoch=True, prog_bar=self.prog_bar, logger=True, batch_size=1,
                              rank_zero_only=several)
        self.records.extend(records)


def _device_of(module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")
