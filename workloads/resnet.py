"""A ResNet-8 with ghost batch norm on Fashion-MNIST or CIFAR-10, as plain Lightning code.

``ImageDataModule`` reads Fashion-MNIST from a folder of IDX files (``data_dir``; by default
Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``) or torchvision's
downloader (``download=True``); CIFAR-10 through torchvision's ``CIFAR10`` (``data_dir`` holding
``cifar-10-batches-py/``, or ``download=True``). A seeded ``val_size`` hold-out of the training
images is the validation set. The test set (Fashion-MNIST's ``t10k`` files, CIFAR-10's
``test_batch``) is read only for ``test_dataloader`` (``Trainer.test``; ``tuner confirm`` runs
it on the weights at the target), never for a target or in ``fit``. Training
images are augmented on the fly in ``__getitem__`` (a random crop of the image zero-padded by
``crop_padding`` pixels, then a random horizontal flip), so each epoch sees different crops;
validation images are not augmented. Both are standardised per channel with the training split's
mean and standard deviation.

``ResNet8``: a 3x3 conv stem, three stages of one basic residual block each (widths w, 2w, 4w;
stride 2 at the start of stages 2 and 3, a 1x1 projection shortcut where the shape changes),
global average pooling and a linear layer: 1 + 2 x 3 + 1 = 8 weight layers. Every batch norm is a
``GhostBatchNorm2d``: in training it normalises each run of ``ghost_batch_size`` consecutive
examples with their own statistics. It logs ``val_loss`` and ``val_acc`` (and in ``test_step``
``test_loss`` and ``test_acc``).

Usage::

    dm = ImageDataModule(batch_size=128, dataset="cifar10", data_dir="data", download=True)
    model = ResNet8(in_channels=3)
    L.Trainer(max_steps=2000).fit(model, datamodule=dm)
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CIFAR10, FashionMNIST

from workloads.idx import find_idx, read_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
DEFAULT_ROOT = "~/.cache/tuner"  # where download=True puts files when data_dir is empty
DATASETS = ("fashion_mnist", "cifar10")


class AugmentedImages(Dataset):
    """Images (uint8, N x C x H x W) and labels; standardised, optionally augmented per item.

    Augmentation draws from torch's global generator (seeded by ``L.seed_everything``; each
    DataLoader worker gets its own seed per epoch), so the same index gives a different crop
    each time it is read.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, augment: bool, crop_padding: int = 4,
                 flip: bool = True) -> None:
        self.augment = augment
        self.pad = crop_padding if augment else 0
        self.flip = flip and augment
        self.size = images.shape[-2:]
        self.images = F.pad(images, (self.pad,) * 4) if self.pad else images
        self.labels = labels
        self.mean = mean.view(-1, 1, 1)
        self.std = std.view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        if self.pad:
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = img[:, dy:dy + self.size[0], dx:dx + self.size[1]]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img.float() / 255.0 - self.mean) / self.std, self.labels[i]


class ImageDataModule(L.LightningDataModule):
    """Fashion-MNIST or CIFAR-10 training images, a seeded validation hold-out, augmentation.

    Args:
        batch_size: images per batch.
        dataset: ``"fashion_mnist"`` (1 x 28 x 28) or ``"cifar10"`` (3 x 32 x 32).
        data_dir: fashion_mnist: a folder of IDX files (empty: Debian's); cifar10: the folder
            holding ``cifar-10-batches-py``. With ``download`` (empty: ``~/.cache/tuner``) the
            files are fetched there by torchvision unless already present and intact.
        download: fetch with torchvision's downloader (needs a network the first time).
        crop_padding: random crops of the image zero-padded by this many pixels (0: no crop).
        flip: random horizontal flips.
        augment: augment the training images at all (validation images never are).
        val_size: images held out of the training set for validation.
        train_size: use only this many of the remaining training images (0: all).
        data_seed: seed of the hold-out split (the same for every trial).
        num_workers: DataLoader worker processes.
        eval_batch_size: examples per validation batch (validation is in eval mode: the
            result does not depend on it, only the time does).
    """

    cifar_class: type[CIFAR10] = CIFAR10  # a subclass may read another CIFAR-format copy

    def __init__(self, batch_size: int = 128, dataset: str = "fashion_mnist", data_dir: str = "",
                 download: bool = False, crop_padding: int = 4, flip: bool = True,
                 augment: bool = True, val_size: int = 10000, train_size: int = 0,
                 data_seed: int = 0, num_workers: int = 0,
                 eval_batch_size: int = 256) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
        if val_size < 1 or train_size < 0 or crop_padding < 0:
            raise ValueError("val_size must be >= 1, train_size and crop_padding >= 0")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.train_set: AugmentedImages | None = None
        self.val_set: AugmentedImages | None = None
        self.test_set: AugmentedImages | None = None

    @property
    def root(self) -> str:
        """The folder torchvision reads (and downloads into)."""
        return os.path.expanduser(self.hparams.data_dir or DEFAULT_ROOT)

    @property
    def num_classes(self) -> int:
        """Ten for both data sets."""
        return 10

    @property
    def in_channels(self) -> int:
        """Image channels: 1 (Fashion-MNIST) or 3 (CIFAR-10)."""
        return 1 if self.hparams.dataset == "fashion_mnist" else 3

    def prepare_data(self) -> None:
        """Download the training files when ``download`` is set (torchvision skips intact ones)."""
        if not self.hparams.download:
            return
        if self.hparams.dataset == "cifar10":
            self.cifar_class(self.root, train=True, download=True)
        else:
            FashionMNIST(self.root, train=True, download=True)

    def load(self, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """All training (or, with ``train=False``, test) images (uint8, N x C x H x W) and
        labels (int64)."""
        h = self.hparams
        if h.dataset == "cifar10":
            ds = self.cifar_class(self.root, train=train, download=False)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
            return images, torch.tensor(ds.targets, dtype=torch.long)
        if h.download:  # the training files came in prepare_data, the test files come here
            ds = FashionMNIST(self.root, train=train, download=not train)
            return ds.data.unsqueeze(1), ds.targets.long()
        folder = Path(h.data_dir or FASHION_MNIST_DIR)
        part = "train" if train else "t10k"
        paths = [find_idx(folder, f"{part}-{stem}") for stem in ("images-idx3-ubyte",
                                                                 "labels-idx1-ubyte")]
        if None in paths:
            raise FileNotFoundError(f"no {part}-*-idx*-ubyte[.gz] in {folder}; install Debian's "
                                    "dataset-fashion-mnist, set data_dir, or set download=True")
        images, labels = (read_idx(p) for p in paths)
        return images.unsqueeze(1), labels.long()

    def setup(self, stage: str | None = None) -> None:
        """Load, split (seeded), compute the training split's per-channel mean and std; for
        ``stage="test"`` also the test images (standardised with the same statistics)."""
        if self.train_set is None:
            self._split()
        if stage == "test" and self.test_set is None:
            assert self.train_set is not None
            images, labels = self.load(train=False)
            self.test_set = AugmentedImages(images, labels, self.train_set.mean,
                                            self.train_set.std, augment=False)

    def _split(self) -> None:
        """The seeded training / validation split of the training images."""
        h = self.hparams
        images, labels = self.load()
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        n = len(images)
        if h.val_size >= n:
            raise ValueError(f"val_size {h.val_size} >= {n} training images")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(h.data_seed))
        val_idx, train_idx = perm[:h.val_size], perm[h.val_size:]
        if h.train_size:
            if h.train_size > len(train_idx):
                raise ValueError(f"train_size {h.train_size} > {len(train_idx)} images left "
                                 "after the validation hold-out")
            train_idx = train_idx[:h.train_size]
        train_x = images[train_idx]
        pixels = train_x.transpose(0, 1).reshape(train_x.shape[1], -1).float() / 255.0
        mean, std = pixels.mean(dim=1), pixels.std(dim=1)
        self.train_set = AugmentedImages(train_x, labels[train_idx], mean, std,
                                         augment=h.augment, crop_padding=h.crop_padding,
                                         flip=h.flip)
        self.val_set = AugmentedImages(images[val_idx], labels[val_idx], mean, std,
                                       augment=False)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training images."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        """The validation hold-out, unaugmented, in order."""
        return DataLoader(self.val_set, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        """The test images, unaugmented, in order (read by ``setup("test")``)."""
        return DataLoader(self.test_set, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over virtual ("ghost") batches (Hoffer et al., 2017).

    In training a batch of N is cut into consecutive runs of ``ghost_batch_size`` examples (the
    last one shorter if N is not a multiple), each normalised with its own mean and variance;
    the running statistics are updated once per ghost batch, exactly as if ``nn.BatchNorm2d``
    had been called on each in turn. In evaluation, or when ``ghost_batch_size`` is 0 or at
    least N, it is ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 32, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if ghost_batch_size < 0:
            raise ValueError(f"ghost_batch_size {ghost_batch_size}; must be >= 0")
        self.ghost_batch_size = ghost_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, n = self.ghost_batch_size, x.shape[0]
        if not self.training or g == 0 or n <= g:
            return super().forward(x)
        if n % g or self.momentum is None or not self.track_running_stats:
            return torch.cat([super(GhostBatchNorm2d, self).forward(c) for c in x.split(g)])
        return self._even(x, n // g)

    def _even(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """k ghost batches in one ``F.batch_norm`` call: ghost batch j's channels become
        channels j*C .. j*C + C - 1 of a (g, k*C, H, W) tensor."""
        n, c, h, w = x.shape
        g = n // k
        xs = x.view(k, g, c, h, w).transpose(0, 1).reshape(g, k * c, h, w)
        run_mean = self.running_mean.repeat(k)
        run_var = self.running_var.repeat(k)
        m = self.momentum
        y = F.batch_norm(xs, run_mean, run_var,
                         None if self.weight is None else self.weight.repeat(k),
                         None if self.bias is None else self.bias.repeat(k),
                         training=True, momentum=m, eps=self.eps)
        with torch.no_grad():
            # run_*[j] = (1 - m) r + m s_j for each ghost batch's statistic s_j; applying the
            # k updates in turn gives (1 - m)^k r + sum_j (1 - m)^(k-1-j) m s_j.
            decay = (1.0 - m) ** torch.arange(k - 1, -1, -1, dtype=x.dtype, device=x.device)
            for buf, ran in ((self.running_mean, run_mean), (self.running_var, run_var)):
                steps = ran.view(k, c) - (1.0 - m) * buf  # m s_j
                buf.mul_((1.0 - m) ** k).add_((decay[:, None] * steps).sum(0))
            self.num_batches_tracked.add_(k)
        return y.view(g, k, c, h, w).transpose(0, 1).reshape(n, c, h, w)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, ghost: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = GhostBatchNorm2d(c_out, ghost)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = GhostBatchNorm2d(c_out, ghost)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), GhostBatchNorm2d(c_out, ghost))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(L.LightningModule):
    """ResNet-8: stem, 3 stages of one basic block (w, 2w, 4w), global average pool, linear.

    Args:
        num_classes: outputs.
        in_channels: image channels (Fashion-MNIST 1, CIFAR-10 3).
        width: channels of the stem and the first stage (w).
        ghost_batch_size: examples per ghost batch of every batch norm (0: ordinary BN).
        dropout: before the linear layer.
        learning_rate, momentum, weight_decay: of ``configure_optimizers``' SGD.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 ghost_batch_size: int = 32, dropout: float = 0.0, learning_rate: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        w, gb = width, ghost_batch_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), GhostBatchNorm2d(w, gb),
            nn.ReLU())
        self.stages = nn.Sequential(
            BasicBlock(w, w, 1, gb), BasicBlock(w, 2 * w, 2, gb), BasicBlock(2 * w, 4 * w, 2, gb))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes,
                                                                      average="micro")
        self.test_acc = torchmetrics.classification.MulticlassAccuracy(num_classes,
                                                                       average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images (N, in_channels, H, W)."""
        x = self.stages(self.stem(x))
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
                      ) -> torch.Tensor:
        """Mean cross-entropy of the batch."""
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log ``val_loss`` (mean cross-entropy) and ``val_acc`` (share classified right)."""
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log ``test_loss`` and ``test_acc``, as :meth:`validation_step` logs its own."""
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.test_acc(logits, y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD with momentum; weight decay on conv and linear weights, not BN or biases."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() > 1],
                   "weight_decay": self.hparams.weight_decay},
                  {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=self.hparams.learning_rate,
                               momentum=self.hparams.momentum)
