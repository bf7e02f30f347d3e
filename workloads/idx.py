"""IDX files (the MNIST / Fashion-MNIST format), gzipped or raw: plain torch, no tuner."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzipped or raw) as a uint8 tensor of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    count = 1
    for d in shape:
        count *= d
    if len(body) != count:
        raise ValueError(f"{path}: header says {count} bytes of data, file has {len(body)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def idx_count(path: Path) -> int:
    """The number of items an IDX file declares (reads only its header)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(8)
    return struct.unpack(">I", header[4:8])[0]


def find_idx(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None
