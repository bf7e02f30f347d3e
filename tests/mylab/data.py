"""LightningDataModules over torch Datasets (scikit-learn's bundled digits and diabetes data)."""

from __future__ import annotations

import lightning as L
import torch
from sklearn.datasets import load_diabetes, load_digits
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, random_split


class DigitsDataModule(L.LightningDataModule):
    """8x8 digits as flat 64-pixel vectors, a seeded 80/20 train/validation split."""

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.2, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        full = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
        n_val = int(len(full) * self.hparams.val_fraction)
        self.train_set, self.val_set = random_split(
            full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(42))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class DigitsTestSplitDataModule(DigitsDataModule):
    """Digits with a held-out test split too: seeded 70/15/15 train/validation/test."""

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        full = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
        n_val = n_test = int(len(full) * 0.15)
        self.train_set, self.val_set, self.test_set = random_split(
            full, [len(full) - n_val - n_test, n_val, n_test],
            generator=torch.Generator().manual_seed(42))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class FixedBatchDigits(DigitsDataModule):
    """A DataModule that ignores its batch-size argument (a bug the tool must catch)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=50, shuffle=True)


class DictDigits(Dataset):
    """Digits as dict examples: {"pixels": ..., "label": ...}."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.base[i]
        return {"pixels": x, "label": y}


class DictDigitsDataModule(DigitsDataModule):
    """The same data as dict batches."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.train_set, self.val_set = DictDigits(self.train_set), DictDigits(self.val_set)


class StreamingDigits(IterableDataset):
    """Digits streamed in a fresh seeded order every pass, as a streaming loader would."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        order = torch.randperm(len(self.x))  # the global RNG: seeded by seed_everything
        for i in order.tolist():
            yield self.x[i], self.y[i]


class StreamingDigitsDataModule(DigitsDataModule):
    """Training data as an IterableDataset (no __len__)."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        idx = torch.tensor(self.train_set.indices)
        base = self.train_set.dataset
        self.train_set = StreamingDigits(base.tensors[0][idx], base.tensors[1][idx])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)


class DiabetesDataModule(L.LightningDataModule):
    """scikit-learn's diabetes regression (442 patients, 10 features), standardised."""

    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        x, y = load_diabetes(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.float32)
        x = (x - x.mean(0)) / x.std(0)
        y = (y - y.mean()) / y.std()
        self.train_set, self.val_set = random_split(
            TensorDataset(x, y), [354, 88], generator=torch.Generator().manual_seed(0))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=128)
