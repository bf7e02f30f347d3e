"""The character-level language model: the KJV text from Debian's packages, a user's text file,
the seeded block split, dict batches, and a tiny real Lightning fit that logs val_bpc."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from workloads.charlm import (
    DEFAULT_VOCAB,
    KJV_DATA,
    KJV_VOCAB,
    CharDataModule,
    CharTransformer,
    read_kjv,
)

needs_kjv = pytest.mark.skipif(
    shutil.which("bible") is None or not Path(KJV_DATA).is_file(),
    reason="Debian's bible-kjv and bible-kjv-text are not installed; `make test` installs them")

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


def text_file(tmp_path: Path, text: str = TEXT) -> str:
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


@needs_kjv
def test_kjv_text_is_the_bible() -> None:
    text = read_kjv()
    lines = text.splitlines()
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert lines[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert len(lines) == 31102  # verses
    assert len(set(text)) == KJV_VOCAB <= DEFAULT_VOCAB
    dm = CharDataModule(batch_size=4, max_chars=50_000, block=1000)
    dm.setup("fit")
    assert dm.vocab_size == KJV_VOCAB  # the whole text's vocabulary, not the first 50,000's
    assert dm.decode(dm.train_set[0]["input_ids"]) in text[:50_000]


def test_text_path_vocabulary_and_windows(tmp_path: Path) -> None:
    dm = CharDataModule(batch_size=4, context=16, block=100, text_path=text_file(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab == "".join(sorted(set(TEXT))) and dm.vocab_size == len(set(TEXT))
    for ds in (dm.train_set, dm.val_set):
        item = ds[len(ds) - 1]
        x, y = dm.decode(item["input_ids"]), dm.decode(item["labels"])
        assert len(x) == 16 and x[1:] == y[:-1]  # labels are the inputs shifted by one
        assert (x + y[-1]) in TEXT


def test_missing_text_path_is_one_clear_error(tmp_path: Path) -> None:
    dm = CharDataModule(batch_size=4, text_path=str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        dm.prepare_data()


def test_split_is_seeded_disjoint_contiguous_blocks(tmp_path: Path) -> None:
    path = text_file(tmp_path)
    block, context = 200, 32

    def setup(seed: int) -> CharDataModule:
        dm = CharDataModule(batch_size=4, context=context, block=block, val_fraction=0.25,
                            split_seed=seed, text_path=path)
        dm.setup("fit")
        return dm

    a, b, c = setup(0), setup(0), setup(1)
    n_blocks = len(TEXT) // block
    assert (a.train_blocks, a.val_blocks) == (b.train_blocks, b.val_blocks)
    assert a.val_blocks != c.val_blocks
    assert set(a.train_blocks).isdisjoint(a.val_blocks)
    assert sorted(a.train_blocks + a.val_blocks) == list(range(n_blocks))
    assert len(a.val_blocks) == round(0.25 * n_blocks)
    # Each training window lies inside one training block: item i of the set is block
    # train_blocks[i // per] at offset i % per; every start in the block is an example.
    per = block - context
    assert len(a.train_set) == len(a.train_blocks) * per
    for i in (0, per - 1, per, len(a.train_set) - 1):
        start = a.train_blocks[i // per] * block + i % per
        item = a.train_set[i]
        assert a.decode(item["input_ids"]) == TEXT[start:start + context]
        assert a.decode(item["labels"]) == TEXT[start + 1:start + context + 1]
    # Validation: the non-overlapping windows of each validation block, a fixed set.
    per_val = (block - 1) // context
    assert len(a.val_set) == len(a.val_blocks) * per_val
    starts = [a.val_blocks[i // per_val] * block + (i % per_val) * context
              for i in range(len(a.val_set))]
    got = [a.decode(a.val_set[i]["input_ids"]) for i in range(len(a.val_set))]
    assert got == [TEXT[s:s + context] for s in starts]
    assert got == [b.decode(b.val_set[i]["input_ids"]) for i in range(len(b.val_set))]


def test_a_test_split_comes_out_of_the_training_blocks(tmp_path: Path) -> None:
    """``test_fraction``: the next seeded blocks after validation's, which stays as it was;
    read only through ``test_dataloader`` (``Trainer.test`` logs test_loss and test_bpc)."""
    path = text_file(tmp_path)
    kw = dict(batch_size=4, context=32, block=200, val_fraction=0.25, text_path=path,
              eval_batch_size=8)
    plain, dm = CharDataModule(**kw), CharDataModule(**kw, test_fraction=0.2)
    plain.setup("fit")
    dm.setup("fit")
    n_blocks = len(TEXT) // 200
    assert dm.val_blocks == plain.val_blocks and len(dm.test_blocks) == round(0.2 * n_blocks)
    assert set(dm.test_blocks) <= set(plain.train_blocks)
    assert sorted(dm.train_blocks + dm.test_blocks) == plain.train_blocks
    per = (200 - 1) // 32
    first = dm.test_set[0]["input_ids"]
    assert len(dm.test_set) == len(dm.test_blocks) * per
    assert dm.decode(first) == TEXT[dm.test_blocks[0] * 200:dm.test_blocks[0] * 200 + 32]
    with pytest.raises(ValueError, match="no test split: set test_fraction"):
        plain.test_dataloader()
    with pytest.raises(ValueError, match="test_fraction 0.8; allowed"):
        CharDataModule(**kw, test_fraction=0.8)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_test_batches=2)
    model = CharTransformer(n_layer=1, n_head=2, n_embd=32, context=32)
    [res] = trainer.test(model, datamodule=dm, verbose=False)
    assert set(res) == {"test_loss", "test_bpc"}
    assert math.isclose(res["test_bpc"], res["test_loss"] / math.log(2), rel_tol=1e-5)


def test_batches_are_dicts(tmp_path: Path) -> None:
    dm = CharDataModule(batch_size=8, context=24, block=120, text_path=text_file(tmp_path),
                        eval_batch_size=8)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"input_ids", "labels"}
        assert batch["input_ids"].shape == batch["labels"].shape == (8, 24)
        assert batch["input_ids"].dtype == torch.long
        assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_tiny_fit_logs_val_bpc(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    dm = CharDataModule(batch_size=8, context=32, block=160, text_path=text_file(tmp_path))
    model = CharTransformer(n_layer=1, n_head=2, n_embd=32, context=32, learning_rate=3e-3)
    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    m = trainer.callback_metrics
    assert math.isclose(float(m["val_bpc"]), float(m["val_loss"]) / math.log(2), rel_tol=1e-5)
    # Two steps barely move an initial model: about ln(vocab) nats per character.
    assert abs(float(m["val_loss"]) - math.log(DEFAULT_VOCAB)) < 0.5
    assert model.head.weight is model.tok.weight  # tied by default


def test_vocabulary_larger_than_the_model_is_refused(tmp_path: Path) -> None:
    dm = CharDataModule(batch_size=4, context=16, block=100, text_path=text_file(tmp_path))
    model = CharTransformer(vocab_size=8, n_layer=1, n_head=2, n_embd=16, context=16)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=rf"{len(set(TEXT))} distinct characters.*vocab_size=8"):
        trainer.fit(model, datamodule=dm)
    dm.setup("fit")  # outside a Trainer: the first batch says so
    with pytest.raises(ValueError, match="vocab_size=8"):
        model.training_step(next(iter(dm.train_dataloader())), 0)
