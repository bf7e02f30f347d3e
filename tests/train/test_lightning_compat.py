"""tuner.train.lightning_compat: ``self.log`` without the device walk that moves nothing, and
with the same logged values."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning_utilities import apply_to_collection
from lightning.pytorch.trainer.connectors.logger_connector.result import (
    _Metadata,
    _ResultMetric,
    _Sync,
)
from mylab.data import DigitsDataModule
from mylab.models import MetricsClassifier

from tuner.core.trial import Target, TrialRequest
from tuner.train import lightning_compat
from tuner.train.fit import fit_trial, quiet_lightning
from tuner.train.lightning_compat import ACTIVE, ORIGINAL, STATES, already_on, fast_logging


class ManyLogs(MetricsClassifier):
    """Logs the ways Lightning's docs show: per step, per epoch (mean, max, sum), a torchmetrics
    object in validation."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=True,
                 on_epoch=True, prog_bar=True)
        self.log("max_logit", logits.max(), on_step=False, on_epoch=True, reduce_fx="max")
        self.log("seen", float(len(y)), on_step=False, on_epoch=True, reduce_fx="sum")
        return loss


class Record(L.Callback):
    """Every metric Lightning holds, after each training batch and each validation."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, dict[str, torch.Tensor]]] = []
        self.patched: list[bool] = []

    def _keep(self, when: str, trainer: L.Trainer) -> None:
        metrics = {f"callback/{k}": v.clone() for k, v in trainer.callback_metrics.items()}
        metrics.update({f"logged/{k}": v.clone() for k, v in trainer.logged_metrics.items()})
        metrics.update({f"bar/{k}": torch.tensor(v)
                        for k, v in trainer.progress_bar_metrics.items()})
        self.seen.append((when, trainer.global_step, metrics))
        self.patched.append(_ResultMetric.to is lightning_compat._to)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._keep("train", trainer)

    def on_validation_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._keep("val", trainer)


def fit(fast: bool) -> Record:
    """26 steps of ManyLogs on digits, 2 epochs of 13 batches, validated every 10 steps."""
    quiet_lightning()
    torch.manual_seed(0)
    rec = Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=26, val_check_interval=10,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_train_batches=13, callbacks=[rec])
    with fast_logging() if fast else contextlib.nullcontext():
        trainer.fit(ManyLogs(), datamodule=DigitsDataModule(batch_size=64))
    return rec


def test_active_on_the_installed_lightning() -> None:
    """The version check admits the tested Lightning (else every test below would pass by
    doing nothing)."""
    assert ACTIVE, L.__version__


def test_same_logged_values_and_the_walk_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step by step, every callback, logged and progress-bar metric is the same with and without
    the shortcut, through two epochs (the epoch-end reset and reductions); and the shortcut was
    taken for most ``self.log`` calls."""
    taken = []

    unchecked: list[str] = []

    def counted(metric: Any, device: torch.device) -> bool:
        taken.append((metric.is_tensor, already_on(metric, device)))
        if metric.is_tensor:  # every tensor Lightning's walk would move is one already_on checks
            walked: list[torch.Tensor] = []
            apply_to_collection(dict(metric.__dict__), torch.Tensor,
                                lambda t: walked.append(t) or t)
            checked = {id(t) for t in (*(metric.__dict__.get(n) for n in STATES),
                                       *metric.__dict__["_defaults"].values())}
            unchecked.extend(metric.meta.name for t in walked if id(t) not in checked)
        return taken[-1][1]

    slow = fit(fast=False)
    monkeypatch.setattr(lightning_compat, "already_on", counted)
    fast = fit(fast=True)
    assert not any(slow.patched) and all(fast.patched)
    assert len(fast.seen) == len(slow.seen) == 26 + 2
    for (w1, s1, m1), (w2, s2, m2) in zip(slow.seen, fast.seen):
        assert (w1, s1, sorted(m1)) == (w2, s2, sorted(m2))
        for k in m1:
            assert torch.equal(m1[k], m2[k]), (w1, s1, k)
    names = {k for _, _, m in fast.seen for k in m}
    assert {"callback/train_acc_epoch", "callback/max_logit", "callback/seen",
            "callback/val_acc", "bar/train_acc_step"} <= names
    # 4 tensor logs a step; on the CPU a metric's states are created where the values are, so
    # every one skips the walk; the logged torchmetrics object (val_acc) takes Lightning's own
    tensor_logs = [skipped for is_tensor, skipped in taken if is_tensor]
    assert len(tensor_logs) >= 4 * 26 and all(tensor_logs), tensor_logs.count(False)
    assert not any(skipped for is_tensor, skipped in taken if not is_tensor)
    assert len(taken) > len(tensor_logs)
    assert not unchecked, f"tensor states already_on does not check, in: {set(unchecked)}"
    assert _ResultMetric.to is ORIGINAL  # restored


def _metric(device: str = "cpu") -> _ResultMetric:
    meta = _Metadata("training_step", "loss", on_step=True, on_epoch=True)
    meta.sync = _Sync()  # as _ResultCollection.log sets it
    m = _ResultMetric(meta, True)
    m.to(torch.device(device))
    m.update(torch.tensor(2.0), 4)
    return m


def test_shortcut_only_where_nothing_moves() -> None:
    """Lightning's ``to`` replaces the metadata with a copy; the shortcut keeps the object, and
    only for ``.to(device)`` with every state already there."""
    with fast_logging():
        m = _metric()
        meta = m.meta
        assert m.to(torch.device("cpu")) is m and m.meta is meta  # nothing moved: skipped
        m.to("cpu")  # a string, not a torch.device: Lightning's own walk
        assert m.meta is not meta and m.meta == meta
        m.__dict__["cumulated_batch_size"] = torch.tensor(4.0, dtype=torch.float64,
                                                          device="meta")
        assert not already_on(m, torch.device("cpu"))  # a state elsewhere: Lightning's own
        assert already_on(_metric(), torch.device("cpu"))
        assert not already_on(_metric(), torch.device("meta"))
        logged_metric = _ResultMetric(_Metadata("training_step", "acc"), False)
        assert not already_on(logged_metric, torch.device("cpu"))  # a torchmetrics Metric
    assert _ResultMetric.to is ORIGINAL


def test_restored_after_an_exception_and_reentrant() -> None:
    """Lightning's method comes back after a failing fit; an inner use keeps the outer's patch;
    a method someone else put there is left alone."""
    with pytest.raises(RuntimeError):
        with fast_logging() as outer:
            with fast_logging() as inner:
                assert _ResultMetric.to is lightning_compat._to and outer and inner
            assert _ResultMetric.to is lightning_compat._to  # the inner one left it on
            raise RuntimeError("a failing fit")
    assert _ResultMetric.to is ORIGINAL

    def theirs(self: Any, *args: Any, **kwargs: Any) -> Any:
        return ORIGINAL(self, *args, **kwargs)

    _ResultMetric.to = theirs
    try:
        with fast_logging() as applied:
            assert _ResultMetric.to is theirs and not applied
        assert _ResultMetric.to is theirs
    finally:
        _ResultMetric.to = ORIGINAL


def test_a_trial_fit_uses_it() -> None:
    """``fit_trial`` (every LightningModule trial) runs the user's fit with the shortcut on."""
    rec = Record()
    torch.manual_seed(0)
    req = TrialRequest(params={"learning_rate": 0.1, "one_minus_momentum": 0.1,
                               "weight_decay": 0.0}, optimizer="momentum", schedule="constant",
                       batch_size=64, max_steps=12, eval_steps=(6, 12),
                       target=Target("val_acc", 2.0, "maximize"), seed=0, accelerator="cpu")
    fit_trial(ManyLogs(), DigitsDataModule(batch_size=64), req, lambda s, m: False,
              per_device_batch=64, callbacks=(rec,))
    assert len(rec.patched) == 12 + 2 and all(rec.patched)
    assert _ResultMetric.to is ORIGINAL


def test_lightning_internals_only_here() -> None:
    """No other tuner module imports a private Lightning name or module (``_X``): they live in
    tuner/train/lightning_compat.py, behind its version check."""
    import ast
    from pathlib import Path

    tuner_dir = Path(lightning_compat.__file__).resolve().parents[1]

    def private_imports(path: Path) -> list[str]:
        out = []
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in (
                    "lightning", "pytorch_lightning", "lightning_utilities"):
                names = [*n.module.split("."), *(a.name for a in n.names)]
                if any(x.startswith("_") and not x.endswith("__") for x in names):
                    out.append(f"{n.lineno}: from {n.module} import ...")
            elif isinstance(n, ast.Import):
                out += [f"{n.lineno}: import {a.name}" for a in n.names
                        if a.name.split(".")[0] in ("lightning", "pytorch_lightning")
                        and any(p.startswith("_") for p in a.name.split("."))]
        return out

    found = {str(p.relative_to(tuner_dir)): uses for p in sorted(tuner_dir.rglob("*.py"))
             if p.name != "lightning_compat.py" and (uses := private_imports(p))}
    assert not found, found
    assert private_imports(Path(lightning_compat.__file__))  # the check is not blind
