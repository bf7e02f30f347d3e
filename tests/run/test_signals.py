"""tuner.run.signals with real signals sent to this process: SIGINT and SIGTERM raise
KeyboardInterrupt inside ``stop_cleanly``, are held inside ``deferred`` until the block ends, and
the previous handlers come back afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tuner.run.signals import deferred, stop_cleanly


def send(signum: int) -> None:
    """Send ``signum`` to this process and give Python the chance to run its handler (it runs
    in the main thread between bytecodes; a sleep is interrupted by it)."""
    os.kill(os.getpid(), signum)
    for _ in range(50):
        time.sleep(0.001)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_stop_cleanly_is_a_keyboard_interrupt(signum: int) -> None:
    before = signal.getsignal(signum)
    after_send = []
    with pytest.raises(KeyboardInterrupt, match=f"^{signal.Signals(signum).name}$"):
        with stop_cleanly():
            send(signum)
            after_send.append(True)
    assert not after_send  # raised where it arrived, not later
    assert signal.getsignal(signum) is before  # the old handler is back


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_deferred_is_raised_when_the_block_ends(signum: int) -> None:
    steps = []
    with stop_cleanly():
        with pytest.raises(KeyboardInterrupt, match=f"^{signal.Signals(signum).name}$"):
            with deferred():
                send(signum)
                steps.append("write finished")  # the rest of the block still runs
            steps.append("after the block")  # not reached: it raised at the block's end
        assert steps == ["write finished"]
        # handled once: a later block without a signal ends quietly
        with deferred():
            steps.append("next write")
    assert steps == ["write finished", "next write"]


def test_nested_deferred_blocks_raise_at_the_outermost_end_once() -> None:
    steps = []
    with stop_cleanly(), pytest.raises(KeyboardInterrupt, match="^SIGTERM$"):
        with deferred():
            with deferred():
                send(signal.SIGINT)
                send(signal.SIGTERM)  # two signals: one interrupt, for the last
                steps.append("inner done")
            steps.append("outer done")  # the inner block's end does not raise
        steps.append("after")
    assert steps == ["inner done", "outer done"]
    with stop_cleanly(), deferred():
        pass  # nothing left pending


def test_stop_cleanly_off_the_main_thread_leaves_the_handlers_alone() -> None:
    # Python lets only the main thread set handlers; a worker thread's block just runs
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen: list[object] = []

    def body() -> None:
        try:
            with stop_cleanly():
                seen.append({s: signal.getsignal(s) for s in before})
        except BaseException as exc:  # noqa: BLE001 - reported below
            seen.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert seen == [before]
