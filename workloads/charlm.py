"""A character-level language model on the King James Bible, as plain Lightning code.

``CharDataModule`` reads a text (by default the King James Version from Debian's
``bible-kjv-text``, dumped by the ``bible`` program of Debian's ``bible-kjv``; or any UTF-8 file,
``text_path``), cuts it into blocks of ``block`` characters and sends a seeded ``val_fraction`` of
the blocks to validation (and, with ``test_fraction``, the next seeded share to a test split that
only ``test_dataloader`` reads). Training examples are all windows of ``context + 1`` characters
inside one training block (any start position); validation (and test) examples are the
non-overlapping windows of their blocks, a fixed set. A batch is a dict ``{"input_ids": (B,
T), "labels": (B, T)}`` of character ids, the labels shifted by one.

``CharTransformer`` is a small nanoGPT-like causal Transformer (pre-LN blocks, learned position
embeddings, ``scaled_dot_product_attention(is_causal=True)``, tied input/output embeddings by
default). It logs ``val_loss`` (nats per character) and ``val_bpc`` (bits per character), and
``test_loss`` / ``test_bpc`` in ``test_step``.

The vocabulary is the sorted set of characters of the whole text (before any ``max_chars`` cut),
so ids do not depend on ``max_chars`` or the split. The KJV text has 63 distinct characters;
``CharTransformer``'s ``vocab_size`` defaults to 64 (the KJV's 63 rounded up to a power of two),
so a spec need not repeat it. Another text may need more: pass ``vocab_size=dm.vocab_size``; a
text whose vocabulary does not fit stops at the first batch with a message saying so.

Usage::

    dm = CharDataModule(batch_size=64)
    model = CharTransformer(n_layer=2)
    L.Trainer(max_steps=1000).fit(model, datamodule=dm)
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

KJV_DATA = "/usr/lib/bible.data"  # Debian's bible-kjv-text (a compressed format)
KJV_RANGE = "Gen1:1-Rev22:21"  # the whole text, for the `bible` program
KJV_VOCAB = 63  # distinct characters of the KJV text as read_kjv returns it
DEFAULT_VOCAB = 64  # CharTransformer's default vocab_size: KJV_VOCAB rounded up


def read_kjv(data_file: str = KJV_DATA) -> str:
    """The King James Version as plain text: one verse a line, verse references removed.

    Runs Debian's ``bible`` program (package ``bible-kjv``) on ``data_file`` (package
    ``bible-kjv-text``); ``bible -f`` prints ``Ge1:1 In the beginning ...`` one verse a line.
    """
    exe = shutil.which("bible")
    path = Path(data_file)
    if exe is None or not path.is_file():
        raise FileNotFoundError(
            "the King James text needs Debian's bible-kjv and bible-kjv-text packages "
            f"(the `bible` program and {data_file}); install them or pass text_path")
    out = subprocess.run(
        [exe, "-f", "-p", str(path.parent), "-d", path.name, KJV_RANGE],
        check=True, capture_output=True, text=True, encoding="utf-8",
    ).stdout
    return re.sub(r"(?m)^\S+ ", "", out)  # drop "Ge1:1 " at each line's start


def read_text(text_path: str = "") -> str:
    """``text_path`` as UTF-8 text, or the King James Version when it is empty."""
    if not text_path:
        return read_kjv()
    return Path(text_path).read_text(encoding="utf-8")


def encode(text: str, vocab: str) -> torch.Tensor:
    """Character ids of ``text`` (int64) under the sorted character list ``vocab``."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(table, codes)
    return torch.from_numpy(ids.astype(np.int64))


def split_blocks(n_blocks: int, val_fraction: float, seed: int, test_fraction: float = 0.0
                 ) -> tuple[list[int], list[int], list[int]]:
    """Training, validation and test block indices (each sorted): a seeded random permutation's
    first ``val_fraction`` of the blocks (at least one) go to validation, the next
    ``test_fraction`` (at least one where it is not 0) to test, and at least one block is left
    for training. The validation blocks do not depend on ``test_fraction`` (unless they would
    leave no block for training and test): the test blocks come out of the training blocks."""
    n_test_min = 1 if test_fraction > 0 else 0
    if n_blocks < 2 + n_test_min:
        raise ValueError(f"{n_blocks} block(s): need at least {2 + n_test_min} to split; use a "
                         "smaller block or more text")
    n_val = min(max(1, round(val_fraction * n_blocks)), n_blocks - 1 - n_test_min)
    n_test = min(max(n_test_min, round(test_fraction * n_blocks)), n_blocks - n_val - 1)
    perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    return (sorted(perm[n_val + n_test:]), sorted(perm[:n_val]),
            sorted(perm[n_val:n_val + n_test]))


class TrainWindows(Dataset):
    """Every window of ``context + 1`` characters inside one row of ``blocks`` (n, block)."""

    def __init__(self, blocks: torch.Tensor, context: int) -> None:
        self.blocks = blocks
        self.context = context
        self.per_block = blocks.shape[1] - context

    def __len__(self) -> int:
        return self.blocks.shape[0] * self.per_block

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row, start = divmod(i, self.per_block)
        w = self.blocks[row, start:start + self.context + 1]
        return {"input_ids": w[:-1], "labels": w[1:]}


class ValWindows(Dataset):
    """The non-overlapping windows of ``context + 1`` characters of each row of ``blocks``:
    starts 0, context, 2 context, ... (each target character is scored once)."""

    def __init__(self, blocks: torch.Tensor, context: int) -> None:
        self.blocks = blocks
        self.context = context
        self.per_block = (blocks.shape[1] - 1) // context

    def __len__(self) -> int:
        return self.blocks.shape[0] * self.per_block

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row, k = divmod(i, self.per_block)
        start = k * self.context
        w = self.blocks[row, start:start + self.context + 1]
        return {"input_ids": w[:-1], "labels": w[1:]}


class CharDataModule(L.LightningDataModule):
    """Character windows of a text, split into training and validation by contiguous blocks.

    Args:
        batch_size: windows per batch.
        context: characters a window feeds the model (its labels are the next ``context``).
        val_fraction: share of the blocks held out for validation.
        test_fraction: share of the blocks held out for a test split (0: none), taken from
            the training blocks; the validation blocks stay the same.
        block: block length in characters; the text's last ``len % block`` characters are
            unused. Must exceed ``context``.
        split_seed: seed of which blocks are held out (the same for every trial).
        max_chars: use only the text's first ``max_chars`` characters (0: all).
        text_path: a UTF-8 text file; empty: the King James Version (Debian packages).
        num_workers: DataLoader worker processes.
        eval_batch_size: examples per validation batch (validation is in eval mode: the
            result does not depend on it, only the time does).
    """

    def __init__(self, batch_size: int = 64, context: int = 128, val_fraction: float = 0.1,
                 block: int = 4096, split_seed: int = 0, max_chars: int = 0,
                 text_path: str = "", num_workers: int = 0,
                 eval_batch_size: int = 256, test_fraction: float = 0.0) -> None:
        super().__init__()
        if block <= context:
            raise ValueError(f"block ({block}) must exceed context ({context})")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction {val_fraction}; allowed: between 0 and 1")
        if not 0.0 <= test_fraction < 1.0 - val_fraction:
            raise ValueError(f"test_fraction {test_fraction}; allowed: 0 (none) up to below "
                             f"1 - val_fraction ({1.0 - val_fraction:g})")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.vocab: str | None = None
        self.train_set: TrainWindows | None = None
        self.val_set: ValWindows | None = None
        self.test_set: ValWindows | None = None
        self.train_blocks: list[int] = []
        self.val_blocks: list[int] = []
        self.test_blocks: list[int] = []

    def prepare_data(self) -> None:
        """Check that the text can be read (there is nothing to download)."""
        if self.hparams.text_path:
            if not Path(self.hparams.text_path).is_file():
                raise FileNotFoundError(f"text_path {self.hparams.text_path}: no such file")
        elif shutil.which("bible") is None or not Path(KJV_DATA).is_file():
            read_kjv()  # raises the message naming the packages

    def setup(self, stage: str | None = None) -> None:
        """Read and encode the text, split it into blocks, build the window sets."""
        if self.train_set is not None:
            return
        h = self.hparams
        text = read_text(h.text_path)
        self.vocab = "".join(sorted(set(text)))
        if h.max_chars:
            text = text[:h.max_chars]
        ids = encode(text, self.vocab)
        n_blocks = len(ids) // h.block
        blocks = ids[:n_blocks * h.block].view(n_blocks, h.block)
        self.train_blocks, self.val_blocks, self.test_blocks = split_blocks(
            n_blocks, h.val_fraction, h.split_seed, h.test_fraction)
        self.train_set = TrainWindows(blocks[self.train_blocks], h.context)
        self.val_set = ValWindows(blocks[self.val_blocks], h.context)
        if self.test_blocks:
            self.test_set = ValWindows(blocks[self.test_blocks], h.context)

    @property
    def vocab_size(self) -> int:
        """Distinct characters of the whole text (reads it if ``setup`` has not run)."""
        if self.vocab is None:
            self.vocab = "".join(sorted(set(read_text(self.hparams.text_path))))
        return len(self.vocab)

    def decode(self, ids: torch.Tensor) -> str:
        """The text of a 1-d tensor of character ids."""
        assert self.vocab is not None, "call setup() first"
        return "".join(self.vocab[i] for i in ids.tolist())

    def train_dataloader(self) -> DataLoader:
        """Shuffled training windows."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        """The fixed validation windows, in order."""
        return DataLoader(self.val_set, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        """The fixed test windows, in order (``test_fraction`` > 0)."""
        if self.test_set is None:
            raise ValueError("no test split: set test_fraction (e.g. 0.1)")
        return DataLoader(self.test_set, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    """A pre-LN Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(L.LightningModule):
    """A small causal Transformer over characters (nanoGPT-like).

    Args:
        vocab_size: output classes; at least the data's vocabulary (KJV: 63; default 64).
        n_layer, n_head, n_embd: depth, attention heads, width.
        context: the longest sequence (position embeddings); at least the data's context.
        dropout: on embeddings, attention weights and residual branches.
        tie_weights: the output layer shares the token embedding's weights.
        learning_rate, weight_decay: of ``configure_optimizers``' AdamW (decay on matrices
            only).
    """

    def __init__(self, vocab_size: int = DEFAULT_VOCAB, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 128, context: int = 128, dropout: float = 0.0,
                 tie_weights: bool = True, learning_rate: float = 1e-3,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(context, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        if tie_weights:
            self.head.weight = self.tok.weight
        self._vocab_checked = False

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) of the next character at each position."""
        t = input_ids.shape[1]
        if t > self.hparams.context:
            raise ValueError(f"sequence of {t} characters; the model's context is "
                             f"{self.hparams.context}")
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok(input_ids) + self.pos(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def setup(self, stage: str) -> None:
        """Refuse a datamodule whose vocabulary the model cannot represent."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(dm, "vocab_size", None)
        if isinstance(size, int) and size > self.hparams.vocab_size:
            raise ValueError(self._vocab_message(size))

    def _vocab_message(self, size: int) -> str:
        return (f"the text has {size} distinct characters but CharTransformer(vocab_size="
                f"{self.hparams.vocab_size}); pass vocab_size >= {size}")

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, y = batch["input_ids"], batch["labels"]
        if not self._vocab_checked:  # once: an id out of range fails obscurely on a GPU
            top = int(torch.maximum(x.max(), y.max()))
            if top >= self.hparams.vocab_size:
                raise ValueError(self._vocab_message(top + 1))
            self._vocab_checked = True
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mean cross-entropy (nats per character) of the next character."""
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log ``val_loss`` (nats per character) and ``val_bpc`` (bits per character)."""
        loss = self._loss(batch)
        n = batch["input_ids"].shape[0]
        self.log("val_loss", loss, batch_size=n, prog_bar=True)
        self.log("val_bpc", loss / math.log(2), batch_size=n, prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log ``test_loss`` and ``test_bpc``, as :meth:`validation_step` logs its own."""
        loss = self._loss(batch)
        n = batch["input_ids"].shape[0]
        self.log("test_loss", loss, batch_size=n)
        self.log("test_bpc", loss / math.log(2), batch_size=n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW; weight decay on weight matrices and embeddings, not on biases or norms."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay},
                  {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.hparams.learning_rate, betas=(0.9, 0.99))
