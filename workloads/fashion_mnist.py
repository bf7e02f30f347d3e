"""Fashion-MNIST (70,000 28x28 grey images, 10 classes) with Shallue et al.'s models.

``model = "cnn"``: the simple CNN (conv 5x5 32 -> max-pool -> conv 5x5 64 -> max-pool ->
fully connected 1024 -> 10). ``model = "mlp"``: a fully connected ReLU net of ``depth`` hidden
layers of ``width`` units.

Data comes from, in order: ``data_dir`` if set (IDX files, gzipped or not); torchvision's
downloader when ``download = true`` (into ``data_dir`` or ``~/.cache/tuner``); otherwise Debian's
``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``. Only the training file
is read for training: a seeded ``val_size`` hold-out of it decides the target. The test file
(``t10k``) is read only by :meth:`FashionMNIST.test_data`, for ``tuner confirm``'s test metric
at the step a confirmation trial reached the target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tuner.workload import Data, TrainedWorkload
from workloads.digits import mlp, split
from workloads.idx import find_idx, idx_count, read_idx

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
N_TRAIN_FILE = 60000
MODELS = ("cnn", "mlp")


@dataclass
class FashionMNISTOptions:
    """Options of the ``fashion_mnist`` workload."""

    model: str = "cnn"  # "cnn" (Shallue's simple CNN) or "mlp"
    depth: int = 2  # mlp: hidden layers
    width: int = 256  # mlp: units per hidden layer
    data_dir: str = ""  # a folder of IDX files; empty: Debian's package folder
    download: bool = False  # fetch with torchvision's downloader (needs a network)
    val_size: int = 10000  # validation hold-out taken from the training file
    train_size: int = 0  # use only this many training examples (0: all the rest)
    data_seed: int = 0  # seed of the hold-out split (same for every trial)


class SimpleCNN(nn.Module):
    """Shallue et al.'s simple CNN for 28x28 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.classifier(self.features(x.view(-1, 1, 28, 28)))


class FashionMNIST(TrainedWorkload):
    """Fashion-MNIST classification."""

    name = "fashion_mnist"
    Options = FashionMNISTOptions
    num_classes = 10

    def check_options(self) -> list[tuple[str, str]]:
        """Problems with the options, as (key, message)."""
        o = self.options
        problems = []
        if o.model not in MODELS:
            problems.append(("model", f"{o.model!r}; allowed: {', '.join(MODELS)}"))
        if o.depth < 1 or o.width < 1:
            problems.append(("depth", "depth and width must be positive integers"))
        if not o.download:
            folder = Path(o.data_dir or DEBIAN_DIR)
            for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
                if find_idx(folder, stem) is None:
                    return [("data_dir", f"no {stem}[.gz] in {folder}; install Debian's "
                             "dataset-fashion-mnist, set data_dir, or set download = true")]
        n = self._n_file()
        if not 0 < o.val_size < n:
            problems.append(("val_size", f"{o.val_size}; allowed: 1 .. {n - 1} "
                             f"(the training file has {n} images)"))
        elif o.train_size < 0 or o.train_size > n - o.val_size:
            problems.append(("train_size",
                             f"{o.train_size}; allowed: 0 (all) .. {n - o.val_size}"))
        return problems

    def _n_file(self) -> int:
        """Images in the training file (60,000 unless a local folder says otherwise)."""
        o = self.options
        labels = None if o.download else find_idx(Path(o.data_dir or DEBIAN_DIR),
                                                   "train-labels-idx1-ubyte")
        return idx_count(labels) if labels is not None else N_TRAIN_FILE

    def num_val_examples(self) -> int:
        """Images held out for validation."""
        return self.options.val_size

    def num_train_examples(self) -> int:
        """Training images after the hold-out (and the optional ``train_size`` cut)."""
        o = self.options
        return o.train_size or (self._n_file() - o.val_size)

    def _raw(self) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        if o.download:
            from torchvision.datasets import (
                FashionMNIST as TV,  # heavy: torchvision, only when needed
            )

            root = o.data_dir or os.path.expanduser("~/.cache/tuner")
            ds = TV(root=root, train=True, download=True)
            return ds.data, ds.targets
        folder = Path(o.data_dir or DEBIAN_DIR)
        images = read_idx(find_idx(folder, "train-images-idx3-ubyte"))  # type: ignore[arg-type]
        labels = read_idx(find_idx(folder, "train-labels-idx1-ubyte"))  # type: ignore[arg-type]
        return images, labels

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 10,000 test images, standardised with the training split's mean and std."""
        o = self.options
        if o.download:
            from torchvision.datasets import (
                FashionMNIST as TV,  # heavy: torchvision, only when needed
            )

            ds = TV(root=o.data_dir or os.path.expanduser("~/.cache/tuner"), train=False,
                    download=True)
            images, labels = ds.data, ds.targets
        else:
            folder = Path(o.data_dir or DEBIAN_DIR)
            images = read_idx(find_idx(folder, "t10k-images-idx3-ubyte"))  # type: ignore[arg-type]
            labels = read_idx(find_idx(folder, "t10k-labels-idx1-ubyte"))  # type: ignore[arg-type]
        mean, std = self._norm()
        x = (images.reshape(len(images), -1).float() / 255.0 - mean) / std
        return x, labels.long()

    def _scaled_split(self, images: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training-file images flattened and scaled to [0, 1], and the (train, validation)
        indices: the seeded hold-out, then the optional ``train_size`` cut."""
        o = self.options
        x = images.reshape(len(images), -1).float() / 255.0
        tr, va = split(len(x), o.val_size, o.data_seed)
        if o.train_size:
            tr = tr[:o.train_size]
        return x, tr, va

    def _norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split's mean and std (of images scaled to [0, 1])."""
        x, tr, _ = self._scaled_split(self._raw()[0])
        return x[tr].mean(), x[tr].std()

    def load_data(self) -> Data:
        """Images scaled to [0, 1] then standardised with the training split's mean and std."""
        o = self.options
        images, labels = self._raw()
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if o.val_size >= len(images):
            raise ValueError(f"val_size {o.val_size} >= {len(images)} training images")
        x, tr, va = self._scaled_split(images)
        y = labels.long()
        mean, std = x[tr].mean(), x[tr].std()
        x = (x - mean) / std
        return Data(x[tr], y[tr], x[va], y[va])

    def build_model(self) -> nn.Module:
        """The simple CNN, or an MLP 784 -> width x depth -> 10."""
        o = self.options
        if o.model == "cnn":
            return SimpleCNN()
        return mlp([784, *([o.width] * o.depth), 10])
