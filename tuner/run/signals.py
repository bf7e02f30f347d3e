"""SIGINT and SIGTERM stop a worker cleanly: as KeyboardInterrupt, but never mid-write.

While the study is being written (claiming, telling, failing a trial) a signal is held and
raised as soon as the write is done, so a stopped worker leaves no trial half-told.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_state = {"depth": 0, "pending": None}


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["depth"]:
        _state["pending"] = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_cleanly() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise KeyboardInterrupt (outside :func:`deferred`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then raise KeyboardInterrupt for them."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["pending"] is not None:
            signum, _state["pending"] = _state["pending"], None
            raise KeyboardInterrupt(signal.Signals(signum).name)
