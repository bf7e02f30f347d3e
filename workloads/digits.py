"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) with a small MLP.

The fast CPU test bed: no download, a whole trial in well under a second. A seeded split holds
``val_fraction`` of the images out for validation; there is no test set in play.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tuner.workload import Data, TrainedWorkload


@dataclass
class DigitsOptions:
    """Options of the ``digits`` workload."""

    hidden: list[int] = field(default_factory=lambda: [128])  # hidden layer widths
    val_fraction: float = 0.2  # share of the 1,797 images held out for validation
    data_seed: int = 0  # seed of the train/validation split (same for every trial)


def mlp(sizes: list[int]) -> nn.Sequential:
    """A ReLU MLP through ``sizes`` (input, hidden..., output)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def split(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, validation) index split of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


class Digits(TrainedWorkload):
    """8x8 digits, MLP classifier."""

    name = "digits"
    Options = DigitsOptions
    num_classes = 10
    N_IMAGES = 1797

    def check_options(self) -> list[tuple[str, str]]:
        """Problems with the options, as (key, message)."""
        o = self.options
        problems = []
        if not 0.0 < o.val_fraction < 1.0:
            problems.append(("val_fraction", f"{o.val_fraction} is outside (0, 1)"))
        if any(h <= 0 for h in o.hidden):
            problems.append(("hidden", f"{o.hidden}: widths must be positive integers"))
        return problems

    def _n_val(self) -> int:
        return max(1, round(self.options.val_fraction * self.N_IMAGES))

    def num_val_examples(self) -> int:
        """Images held out for validation."""
        return self._n_val()

    def num_train_examples(self) -> int:
        """Training images after the validation hold-out."""
        return self.N_IMAGES - self._n_val()

    def load_data(self) -> Data:
        """Digits as float tensors scaled to [0, 1]."""
        from sklearn.datasets import (
            load_digits,  # heavy: scikit-learn, only when needed
        )

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32) / 16.0
        y = torch.tensor(y, dtype=torch.long)
        tr, va = split(len(x), self._n_val(), self.options.data_seed)
        return Data(x[tr], y[tr], x[va], y[va])

    def build_model(self) -> nn.Module:
        """MLP 64 -> hidden... -> 10."""
        return mlp([64, *self.options.hidden, 10])
