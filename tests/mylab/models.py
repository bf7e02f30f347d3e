"""LightningModules written as Lightning's documentation writes them."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn


class LitClassifier(L.LightningModule):
    """An MLP classifier: ``self.log`` of val_loss / val_acc, its own configure_optimizers."""

    def __init__(self, hidden: int = 64, dropout: float = 0.0, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


#: What the hooks of :class:`ProbedClassifier` saw, for the tests to read.
CALLS: list[tuple[str, int]] = []


class ProbedClassifier(LitClassifier):
    """LitClassifier that records its hooks and logs what Lightning tells it."""

    def on_train_start(self):
        CALLS.append(("on_train_start", self.global_step))

    def configure_optimizers(self):
        CALLS.append(("configure_optimizers", self.global_step))
        return super().configure_optimizers()

    def validation_step(self, batch, batch_idx):
        CALLS.append(("validation_step", self.global_step))
        super().validation_step(batch, batch_idx)
        self.log("global_step", float(self.global_step))
        self.log("epoch", float(self.current_epoch))
        self.log("max_steps", float(self.trainer.max_steps))


class NoForward(L.LightningModule):
    """No ``forward()``: the steps call the network directly."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_error", (logits.argmax(1) != y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class MetricsClassifier(LitClassifier):
    """Logs torchmetrics objects, as the torchmetrics-in-Lightning docs show."""

    def __init__(self, hidden: int = 64, dropout: float = 0.0, lr: float = 0.1):
        super().__init__(hidden, dropout, lr)
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10,
                                                                      average="micro")

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True)


class ManualClassifier(LitClassifier):
    """Manual optimization: it calls its optimizer itself."""

    def __init__(self, hidden: int = 64, dropout: float = 0.0, lr: float = 0.1):
        super().__init__(hidden, dropout, lr)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train_loss", loss)
        return loss


class DictClassifier(LitClassifier):
    """Steps that take dict batches."""

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["pixels"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        logits = self(batch["pixels"])
        self.log("val_acc", (logits.argmax(1) == batch["label"]).float().mean())


class LitRegressor(L.LightningModule):
    """A regression: MSE loss on float targets, val_mse logged."""

    def __init__(self, hidden: int = 32, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_mse", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class BrokenStep(LitClassifier):
    """A shape bug in training_step."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x[:, :32]), y)


class SelfContained(LitClassifier):
    """A module with its own dataloaders (no DataModule), taking the batch size itself."""

    def __init__(self, hidden: int = 64, dropout: float = 0.0, lr: float = 0.1,
                 batch_size: int = 32):
        super().__init__(hidden, dropout, lr)
        from mylab.data import DigitsDataModule

        self.data = DigitsDataModule(batch_size=batch_size)

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def train_dataloader(self):
        return self.data.train_dataloader()

    def val_dataloader(self):
        return self.data.val_dataloader()
