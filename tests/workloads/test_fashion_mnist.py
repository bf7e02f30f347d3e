"""Fashion-MNIST: Debian's real files, a folder of IDX files the test writes, torchvision's path,
and a short real CNN study at two batch sizes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import optuna
import pytest
import torch

from conftest import run_cli, write
from workloads.fashion_mnist import DEBIAN_DIR, FashionMNIST, FashionMNISTOptions, read_idx

needs_debian = pytest.mark.skipif(
    not Path(DEBIAN_DIR, "train-images-idx3-ubyte.gz").exists(),
    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_DIR}); `make test` "
           "installs it")


def write_idx(folder: Path, n: int, gz: bool, seed: int = 0, split: str = "train"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Write n random 28x28 images and labels as IDX files; return what was written."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, header, body in (
        (f"{split}-images-idx3-ubyte", struct.pack(">HBBIII", 0, 8, 3, n, 28, 28), images),
        (f"{split}-labels-idx1-ubyte", struct.pack(">HBBI", 0, 8, 1, n), labels),
    ):
        raw = header + body.numpy().tobytes()
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return images, labels


@needs_debian
def test_debian_files_are_real_fashion_mnist() -> None:
    images = read_idx(Path(DEBIAN_DIR, "train-images-idx3-ubyte.gz"))
    labels = read_idx(Path(DEBIAN_DIR, "train-labels-idx1-ubyte.gz"))
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert torch.bincount(labels.long()).tolist() == [6000] * 10
    w = FashionMNIST(FashionMNISTOptions(val_size=10000))
    assert w.check_options() == [] and w.num_train_examples() == 50000
    d = w.load_data()
    assert d.train_x.shape == (50000, 784) and d.val_x.shape == (10000, 784)
    assert abs(d.train_x.mean().item()) < 1e-3  # standardised with the training split


@pytest.mark.parametrize("gz", [True, False])
def test_user_folder_of_idx_files(tmp_path: Path, gz: bool) -> None:
    images, labels = write_idx(tmp_path / "fm", 120, gz)
    w = FashionMNIST(FashionMNISTOptions(data_dir=str(tmp_path / "fm"), val_size=20))
    assert w.check_options() == [] and w.num_train_examples() == 100
    d = w.load_data()
    assert d.train_x.shape == (100, 784) and d.val_x.shape == (20, 784)
    got = torch.cat([d.train_y, d.val_y]).sort().values
    assert torch.equal(got, labels.long().sort().values)
    # the split is seeded: same options, same split
    assert torch.equal(w.load_data().val_y, FashionMNIST(w.options).load_data().val_y)


def test_torchvision_downloader_path_reads_its_folder(tmp_path: Path) -> None:
    # torchvision skips the download when its raw files are present; we lay them out as it does.
    raw = tmp_path / "FashionMNIST" / "raw"
    images, labels = write_idx(raw, 64, gz=False)
    write_idx(raw, 8, gz=False, seed=1, split="t10k")  # torchvision wants all four files
    w = FashionMNIST(FashionMNISTOptions(data_dir=str(tmp_path), download=True, val_size=16))
    d = w.load_data()
    assert d.train_x.shape == (48, 784)
    assert sorted(torch.cat([d.train_y, d.val_y]).tolist()) == sorted(labels.tolist())


def test_missing_files_are_a_spec_error(tmp_path: Path) -> None:
    w = FashionMNIST(FashionMNISTOptions(data_dir=str(tmp_path)))
    [(key, message)] = w.check_options()
    assert key == "data_dir" and "dataset-fashion-mnist" in message
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 4)
    with pytest.raises(ValueError):
        read_idx(tmp_path / "train-images-idx3-ubyte")


CNN_SPEC = """\
batch_sizes = [32, 128]
trials = 2

[workload]
name = "fashion_mnist"
model = "cnn"
val_size = 1000
train_size = 4000

[optimizer]
name = "momentum"

[search_space]
learning_rate = { low = 0.01, high = 0.1, log = true }
one_minus_momentum = { low = 0.05, high = 0.2, log = true }

[target]
metric = "error"
value = 0.5

[budget]
max_steps = 150

[eval]
first_step = 10
min_interval = 10
"""


@needs_debian
def test_simple_cnn_short_study_at_two_batch_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, CNN_SPEC, "fm_cnn.toml")
    url = f"sqlite:///{tmp_path / 'fm.db'}"
    code, out, err = run_cli(["run", str(spec), "--storage", url], capsys)
    assert code == 0, err
    print(out)
    for s in optuna.get_all_study_summaries(url):
        trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
        assert len(trials) == 2
        assert any(t.user_attrs["reached"] for t in trials), [t.user_attrs for t in trials]
