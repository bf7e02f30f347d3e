"""What ``tuner confirm`` records where a LightningModule trial reached the target: the sharpness
(and, for the first seed of the best configuration, the loss-landscape slices) there, during the
fit, and the module's test pass on the weights it had there, after the fit.

- **Training loss on a fixed subset.** The first :data:`tuner.train.sharpness.EXAMPLES` examples
  of the training set in its own order (as the tensor path takes its first examples): a loader
  over the dataset of the module's ``train_dataloader``, with its batch size and collate
  function, unshuffled and in this process (the fit's loader, its workers and its iterator are
  left alone), drawn with torch's RNG forked and seeded (augmentation in the dataset draws the
  same for every trial), through the module's own ``training_step`` (its ``self.log``
  silenced; the loss, or the ``"loss"`` of the dict it returns), averaged over the batches by
  their sizes. The module is in eval mode meanwhile (dropout off, batch norm on its running
  statistics), so the measured function is deterministic and no running statistic moves; the
  module is left as it was.
  A module with manual optimization (its ``training_step`` steps the optimizer itself) has no
  such loss: its sharpness is not measured (``None``, and the reason); nor where the
  ``training_step`` raises here (the reason is the exception's line; the trial goes on).
- **Test split.** Where the module has a ``test_step`` and the DataModule (or the module) a
  ``test_dataloader``, the weights at the target are kept (a CPU copy of the state dict) and,
  once ``Trainer.fit`` has returned, ``Trainer.test`` runs on them: Lightning's own test loop,
  the metrics the module logs there. They are stored under their validation names (``test_acc``
  as ``val_acc``, ``test/loss`` as ``val/loss``), as analysis compares them with the target's
  metric; a name that starts otherwise is kept as it is. A test pass that raises leaves
  ``test`` ``None`` and its line in ``test_not_measured``; the trial stands.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import move_data_to_device
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

from tuner.train.landscape import slices
from tuner.train.module_step import logging_silenced, step_loss
from tuner.train.sharpness import EXAMPLES, top_eigenvalue

#: Why a module's sharpness is not measured.
MANUAL = "manual optimization: training_step steps the optimizer itself"


def fixed_batches(loader: Any, examples: int = EXAMPLES, seed: int = 0) -> list[Any]:
    """The first ``examples`` examples of a fresh pass over ``loader`` (the last batch cut to
    fit), with torch's RNG forked and seeded, so the caller's RNG stream is untouched."""
    out: list[Any] = []
    n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in loader:
            size = extract_batch_size(batch)
            if n + size > examples:
                keep = examples - n
                batch = apply_to_collection(batch, torch.Tensor, lambda t: t[:keep])
                size = keep
            out.append(batch)
            n += size
            if n >= examples:
                break
    return out


def in_order(loader: Any) -> Any:
    """A loader over the same data as ``loader`` in the dataset's own order, in this process
    (``loader`` itself where it is not a ``DataLoader``, e.g. several loaders). A loader that
    batches by its own batch sampler keeps it; one over a dataset that yields whole batches
    (``batch_size=None``) reads them as they come."""
    if not isinstance(loader, DataLoader):
        return loader
    if loader.batch_size is None and loader.batch_sampler is not None:  # the user's sampler
        return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler,
                          collate_fn=loader.collate_fn)
    return DataLoader(loader.dataset, batch_size=loader.batch_size,
                      collate_fn=loader.collate_fn)


def module_loss(module: LightningModule, batches: list[Any]) -> torch.Tensor:
    """The module's training loss over ``batches`` (``training_step`` on each, weighted by its
    size), on the module's device."""
    total, n = None, 0
    for i, batch in enumerate(batches):
        loss = step_loss(module, move_data_to_device(batch, module.device), i)
        size = extract_batch_size(batch)
        total = loss * size if total is None else total + loss * size
        n += size
    assert total is not None
    return total / n


def measure(trainer: Trainer, module: LightningModule, step: int, seed: int,
            landscape: bool) -> dict[str, Any]:
    """At the step the target was reached: ``{"step", "test": None (filled in after the fit by
    :func:`test_metrics`), "sharpness", "sharpness_examples", "sharpness_iterations"}``, and
    ``"landscape"`` with ``landscape``; the module left as it was."""
    if not module.automatic_optimization:
        return not_measured(step, MANUAL)
    out: dict[str, Any] = {"step": step, "test": None}
    batches = fixed_batches(in_order(trainer.train_dataloader))
    params = [p for p in module.parameters() if p.requires_grad]
    state = weights(module)
    was_training = module.training
    module.eval()
    try:
        with logging_silenced(module):
            with torch.enable_grad():
                lam, iters = top_eigenvalue(lambda: module_loss(module, batches), params,
                                            seed=seed)
            for p in params:
                p.grad = None
            if landscape:
                with torch.no_grad():
                    out["landscape"] = slices(lambda: module_loss(module, batches), params,
                                              seed=seed)
    finally:
        module.load_state_dict(state)
        module.train(was_training)
    n = sum(extract_batch_size(b) for b in batches)
    return out | {"sharpness": lam, "sharpness_examples": n, "sharpness_iterations": iters}


def not_measured(step: int, why: str) -> dict[str, Any]:
    """What :func:`measure` records where the sharpness cannot be measured, and why."""
    return {"step": step, "test": None, "sharpness": None, "sharpness_examples": 0,
            "sharpness_iterations": 0, "sharpness_not_measured": why}


def has_test(module: LightningModule, datamodule: Any) -> bool:
    """Whether the module has a ``test_step`` and its data a ``test_dataloader``."""
    source = datamodule if datamodule is not None else module
    return is_overridden("test_step", module) and is_overridden("test_dataloader", source)


def weights(module: LightningModule) -> dict[str, torch.Tensor]:
    """A CPU copy of the module's state dict (restored after measuring; kept for
    :func:`test_metrics`)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def validation_name(name: str) -> str:
    """A test metric's name as its validation counterpart's (``test_acc`` -> ``val_acc``)."""
    return "val" + name[len("test"):] if name.startswith("test") else name


def test_metrics(trainer: Trainer, module: LightningModule, datamodule: Any,
                 state: dict[str, torch.Tensor]) -> dict[str, float]:
    """``Trainer.test`` of ``module`` with the weights ``state``: every metric it logged, under
    its validation name."""
    module.load_state_dict(state)
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    return {validation_name(k): float(v) for r in results for k, v in r.items()}
