"""ResNet-8 with ghost batch norm: on-the-fly augmentation (training only), CIFAR-format files
read through torchvision's own download path, ghost BN against nn.BatchNorm2d, a tiny fit."""

from __future__ import annotations

import hashlib
import math
import pickle
import tarfile
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
from torch import nn
from torchvision.datasets import CIFAR10

from workloads.resnet import (
    FASHION_MNIST_DIR,
    GhostBatchNorm2d,
    ImageDataModule,
    ResNet8,
)

needs_debian = pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed; `make test` installs it")


@pytest.fixture(scope="module")
def fashion() -> ImageDataModule:
    dm = ImageDataModule(batch_size=16, val_size=64, train_size=128)
    dm.setup("fit")
    return dm


@needs_debian
def test_two_epochs_see_different_crops(fashion: ImageDataModule) -> None:
    ds = fashion.train_set
    assert ds.images.shape[-2:] == (36, 36)  # zero-padded by 4 once, cropped per item
    torch.manual_seed(0)
    epoch1 = [ds[i][0] for i in range(32)]
    epoch2 = [ds[i][0] for i in range(32)]
    assert all(x.shape == (1, 28, 28) for x in epoch1)
    assert sum(not torch.equal(a, b) for a, b in zip(epoch1, epoch2)) >= 30
    # Each is a crop of the padded image, maybe flipped, standardised.
    padded = (ds.images[5].float() / 255.0 - ds.mean) / ds.std
    crops = [padded[:, dy:dy + 28, dx:dx + 28] for dy in range(9) for dx in range(9)]
    crops += [c.flip(-1) for c in crops]
    for x in (epoch1[5], epoch2[5]):
        assert any(torch.allclose(x, c) for c in crops)
    # Through the DataLoader too: each epoch's batches differ beyond their order.
    first = [torch.cat([x for x, _ in fashion.train_dataloader()]).sum(0) for _ in range(2)]
    assert not torch.allclose(first[0], first[1])


@needs_debian
def test_validation_is_a_fixed_unaugmented_holdout(fashion: ImageDataModule) -> None:
    val = fashion.val_set
    assert len(val) == 64 and len(fashion.train_set) == 128
    assert val.images.shape[-2:] == (28, 28)
    assert all(torch.equal(val[i][0], val[i][0]) for i in range(8))
    images, labels = fashion.load()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    for i in (0, 63):
        raw = images[perm[i]].float() / 255.0
        assert torch.allclose(val[i][0], (raw - val.mean) / val.std)
        assert val[i][1] == labels[perm[i]]
    # Standardised with the training split's statistics (per channel).
    train_raw = images[perm[64:192]].float() / 255.0
    assert torch.allclose(val.mean.flatten(), train_raw.mean().reshape(1))
    # The training set is the next 128 of the same permutation (its images padded by 4).
    train = fashion.train_set
    assert torch.equal(train.images[0][:, 4:32, 4:32], images[perm[64]])
    assert torch.equal(train.labels, labels[perm[64:192]])


def write_cifar(root: Path, per_batch: int = 6) -> tuple[torch.Tensor, list[int]]:
    """CIFAR-10's python-pickle layout with random images, tarred as torchvision downloads it.

    Returns the training images (N, 32, 32, 3) and labels in file order, then the test
    batch's."""
    g = torch.Generator().manual_seed(0)
    folder = root / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = torch.randint(0, 256, (per_batch, 3 * 32 * 32), generator=g, dtype=torch.uint8)
        ys = torch.randint(0, 10, (per_batch,), generator=g).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data.numpy(), "labels": ys,
                         "filenames": [f"{name}_{j}.png" for j in range(per_batch)]}, f)
        images.append(data.view(-1, 3, 32, 32).permute(0, 2, 3, 1))
        labels += ys
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)],
                     "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    with tarfile.open(root / CIFAR10.filename, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return torch.cat(images), labels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def checksummed(root: Path) -> type[CIFAR10]:
    """torchvision's CIFAR10 with the checksums of the files the test wrote (and a URL that
    cannot be reached, so any attempt to download fails instead of fetching)."""
    built = root / "build" / "cifar-10-batches-py"

    class TestCIFAR10(CIFAR10):
        url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
        tgz_md5 = md5(root / CIFAR10.filename)
        train_list: ClassVar = [[n, md5(built / n)] for n, _ in CIFAR10.train_list]
        test_list: ClassVar = [[n, md5(built / n)] for n, _ in CIFAR10.test_list]
        meta: ClassVar = {**CIFAR10.meta, "md5": md5(built / "batches.meta")}

    return TestCIFAR10


def test_cifar_files_load_through_torchvision(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()  # only the archive is in data_dir
    test_images, test_labels = images[30:], labels[30:]
    images, labels = images[:30], labels[:30]

    class DM(ImageDataModule):
        cifar_class = checksummed(tmp_path)

    dm = DM(batch_size=4, dataset="cifar10", data_dir=str(tmp_path), download=True, val_size=10)
    dm.prepare_data()  # torchvision's download(): the archive is intact, so it only extracts it
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
    dm.setup("fit")
    assert len(dm.train_set) == 20 and len(dm.val_set) == 10 and dm.in_channels == 3
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    x, y = dm.val_set[3]
    raw = images[perm[3]].permute(2, 0, 1).float() / 255.0
    assert x.shape == (3, 32, 32) and int(y) == labels[perm[3]]
    assert torch.allclose(x, (raw - dm.val_set.mean) / dm.val_set.std, atol=1e-6)
    assert dm.val_set.mean.numel() == 3  # per-channel statistics
    # The extracted files now load without download as well.
    again = DM(batch_size=4, dataset="cifar10", data_dir=str(tmp_path), val_size=10)
    again.setup("fit")
    assert torch.equal(again.val_set[3][0], x)
    # torchvision's own class checks CIFAR-10's published checksums: these files fail them.
    plain = ImageDataModule(batch_size=4, dataset="cifar10", data_dir=str(tmp_path), val_size=10)
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        plain.setup("fit")
    # A ResNet8 for 3 channels takes the batches.
    batch = next(iter(dm.train_dataloader()))
    assert ResNet8(in_channels=3, width=4)(batch[0]).shape == (4, 10)
    # The test batch: read for testing only, standardised with the training split's statistics.
    assert dm.test_set is None
    dm.setup("test")
    (x, y), raw = dm.test_set[2], test_images[2].permute(2, 0, 1).float() / 255.0
    assert len(dm.test_set) == 6 and int(y) == test_labels[2]
    assert torch.allclose(x, (raw - dm.train_set.mean) / dm.train_set.std, atol=1e-6)


def bn_pair(ghost: int, c: int = 3) -> tuple[GhostBatchNorm2d, nn.BatchNorm2d]:
    torch.manual_seed(1)
    gbn, bn = GhostBatchNorm2d(c, ghost), nn.BatchNorm2d(c)
    with torch.no_grad():
        gbn.weight.uniform_(0.5, 1.5)
        gbn.bias.uniform_(-0.5, 0.5)
    bn.load_state_dict(gbn.state_dict())
    return gbn, bn


@pytest.mark.parametrize(("n", "ghost"), [(8, 8), (8, 4), (12, 4), (10, 4), (8, 0)])
def test_ghost_bn_is_bn_on_each_ghost_batch(n: int, ghost: int) -> None:
    """ghost = n (or 0) is nn.BatchNorm2d; otherwise BN on consecutive runs of ghost examples in
    turn (8 by 4: the two halves; 10 by 4: 4, 4, 2): outputs, gradients, running statistics."""
    gbn, bn = bn_pair(ghost)
    x = (torch.randn(n, 3, 5, 5) * 2 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    w = torch.randn(n, 3, 5, 5)
    for _ in range(2):  # twice: the second step starts from updated running statistics
        y = gbn(x)
        chunks = x2.split(ghost) if ghost else [x2]
        ref = torch.cat([bn(c) for c in chunks])
        torch.testing.assert_close(y, ref)
        (y * w).sum().backward()
        (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(gbn.weight.grad, bn.weight.grad)
    torch.testing.assert_close(gbn.bias.grad, bn.bias.grad)
    torch.testing.assert_close(gbn.running_mean, bn.running_mean)
    torch.testing.assert_close(gbn.running_var, bn.running_var)
    assert int(gbn.num_batches_tracked) == int(bn.num_batches_tracked)
    gbn.eval()
    bn.eval()  # evaluation: the running statistics, whatever the batch
    torch.testing.assert_close(gbn(x.detach()[:3]), bn(x.detach()[:3]))


def test_resnet8_has_eight_weight_layers() -> None:
    model = ResNet8(in_channels=1, width=16, ghost_batch_size=32)
    main = [m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in name]
    assert len(main) == 8
    assert [m.out_channels for m in main if isinstance(m, nn.Conv2d)] == [16] * 3 + [32] * 2 + [64] * 2
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, GhostBatchNorm2d) and m.ghost_batch_size == 32 for m in bns)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@needs_debian
def test_the_t10k_test_set_is_read_for_testing_only(fashion: ImageDataModule) -> None:
    """Fitting reads no test file; ``setup("test")`` reads Fashion-MNIST's t10k images,
    unaugmented, standardised like validation; ``Trainer.test`` logs test_loss and test_acc."""
    assert fashion.test_set is None
    dm = ImageDataModule(batch_size=16, val_size=64, train_size=128)
    dm.setup("test")
    test = dm.test_set
    images, labels = dm.load(train=False)
    assert len(test) == len(images) == 10_000 and torch.equal(test.labels, labels)
    raw = images[7].float() / 255.0
    assert torch.allclose(test[7][0], (raw - dm.train_set.mean) / dm.train_set.std)
    assert torch.equal(test[7][0], test[7][0])  # no augmentation
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_test_batches=2)
    [res] = trainer.test(ResNet8(width=4, ghost_batch_size=8), datamodule=dm, verbose=False)
    assert set(res) == {"test_loss", "test_acc"} and 0.0 <= res["test_acc"] <= 1.0


@needs_debian
def test_tiny_fit_logs_val_acc() -> None:
    L.seed_everything(0, verbose=False)
    dm = ImageDataModule(batch_size=16, val_size=32, train_size=64)
    model = ResNet8(width=4, ghost_batch_size=8, learning_rate=0.05)
    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    m = trainer.callback_metrics
    acc = float(m["val_acc"])
    assert 0.0 <= acc <= 1.0 and acc * 32 == pytest.approx(round(acc * 32))  # a share of 32
    assert math.isfinite(float(m["val_loss"]))
    # val_acc is the plain share right on those two batches (not class-averaged).
    model.eval()
    with torch.no_grad():
        xs, ys = zip(*[dm.val_set[i] for i in range(32)])
        right = (model(torch.stack(xs)).argmax(1) == torch.stack(ys)).float().mean()
    assert acc == pytest.approx(float(right))
