"""Helpers for fault tests: real ``tuner run`` processes, signals, and what the storage holds.

A :class:`Worker` is one ``python -m tuner.cli ...`` subprocess (the tests' PYTHONPATH, so the
code under test) whose stderr is read line by line as it comes, so a test can act on a
progress line the moment it is printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

TUNER = [sys.executable, "-m", "tuner.cli"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Worker:
    """A running ``tuner ARGS`` process; its stdout and stderr lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen([*TUNER, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1,
                                      env={**os.environ, **(env or {})})
        self.out: list[str] = []
        self.err: list[str] = []
        self._new = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.popen.stdout, self.out),
                                          (self.popen.stderr, self.err))]
        for t in self._readers:
            t.start()

    def _read(self, stream, lines: list[str]) -> None:  # noqa: ANN001 - a text stream
        for line in stream:
            with self._new:
                lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker (nothing if it has exited)."""
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def wait_line(self, match: Callable[[str], bool], timeout: float) -> str | None:
        """The first stderr line (old or new) for which ``match`` is true; None if the process
        exits or ``timeout`` seconds pass without one."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new:
            while True:
                for line in self.err[seen:]:
                    if match(line):
                        return line
                seen = len(self.err)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None
                                 and not any(t.is_alive() for t in self._readers)):
                    return None
                self._new.wait(min(left, 0.2))

    def wait(self, timeout: float) -> int:
        """The exit status (negative: killed by that signal); kills it and fails past timeout."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"tuner {' '.join(self.args)} still running after {timeout} s; "
                                 f"last lines: {self.err[-5:]}") from None
        for t in self._readers:
            t.join(timeout=10)
        return code

    def stop(self) -> None:
        """Kill it if it still runs (cleanup)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)


@contextlib.contextmanager
def workers() -> Iterator[list[Worker]]:
    """A list to put started workers in; every one still running at the end is killed."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for w in started:
            w.stop()


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``tuner ARGS`` to the end."""
    return subprocess.run([*TUNER, *args], capture_output=True, text=True, timeout=timeout)


def reader(url: str) -> optuna.storages.RDBStorage:
    """A storage to look at ``url`` with: no connection pool, so polling it often leaves no idle
    connections behind on the (shared, max_connections = 200) PostgreSQL test server."""
    from sqlalchemy.pool import NullPool

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})


def studies(url: str) -> dict[str, optuna.Study]:
    """Every study in the storage, by name."""
    storage = reader(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def trials_of(url: str) -> dict[int, list[FrozenTrial]]:
    """The trials of each batch-size study (studies still without a ``batch_size`` are left out)."""
    out = {}
    for study in studies(url).values():
        if "batch_size" in study.user_attrs:
            out[study.user_attrs["batch_size"]] = study.get_trials()
    return out


def wait_for(find: Callable[[], object], timeout: float, what: str, poll: float = 0.25
             ) -> object:
    """Poll ``find()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_trial(url: str, w: Worker, mid: bool = True) -> FrozenTrial | None:
    """The RUNNING trial of worker ``w`` (attr ``worker`` ends in its pid), with at least one
    reported value if ``mid`` (the trial is training)."""
    for ts in trials_of(url).values():
        for t in ts:
            if (t.state == TrialState.RUNNING and (t.intermediate_values or not mid)
                    and str(t.user_attrs.get("worker", "")).endswith(f":{w.pid}")):
                return t
    return None


def wait_mid_trial(url: str, w: Worker, timeout: float = 120) -> FrozenTrial:
    """Wait until worker ``w`` trains a trial (fails if it exits first)."""
    def find() -> FrozenTrial | None:
        if w.popen.poll() is not None:
            raise AssertionError(f"worker exited ({w.popen.returncode}) before a trial ran: "
                                 f"{w.err[-5:]}")
        return running_trial(url, w)

    return wait_for(find, timeout, f"worker {w.pid} mid-trial")  # type: ignore[return-value]


def stop_mid_trial(url: str, w: Worker, timeout: float = 120) -> FrozenTrial:
    """SIGSTOP worker ``w`` while it trains a trial, and return that trial: still RUNNING in the
    storage after the stop. A trial of a small spec lasts well under a second on a fast machine,
    so one seen running may have ended before the signal; then ``w`` is let go and caught at a
    later trial. The caller sends what it tests (SIGKILL, SIGINT, nothing) and ``SIGCONT``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = wait_mid_trial(url, w, max(deadline - time.monotonic(), 1))
        w.send(signal.SIGSTOP)
        [now] = [t for ts in trials_of(url).values() for t in ts if t.number == seen.number
                 and t.user_attrs.get("worker") == seen.user_attrs.get("worker")]
        if now.state == TrialState.RUNNING:
            return now
        w.send(signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"worker {w.pid} never stopped mid-trial in {timeout} s")


def slot_points(spec_path: Path | str, n: int) -> list[dict[str, float]]:
    """The params of slots 0..n-1: the spec's sampler (tuner.run.sampling.build_sampler) asked for
    a trial with that ``slot`` user attr, as the work queue does (tests/run/test_trialqueue.py)."""
    from tuner.run import specs as spec_mod
    from tuner.run.sampling import build_sampler
    from tuner.core.space import distributions

    spec = spec_mod.load(str(spec_path))
    space = distributions(spec.space)
    sampler = build_sampler(spec.sampler.name, spec.sampler.seed, spec.sampler.options, space)
    study = optuna.create_study(sampler=sampler)
    points = []
    for s in range(n):
        study.enqueue_trial({}, user_attrs={"slot": s})
        t = study.ask(space)
        points.append(t.params)
        study.tell(t, 0.0)
    return points


def check_exact(trials: list[FrozenTrial], n: int, points: list[dict[str, float]]) -> None:
    """Exactly n finished trials on slots 0..n-1, each with its slot's point; nothing WAITING or
    RUNNING left behind."""
    states = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in FINISHED]
    slots = sorted(t.user_attrs.get("slot", -1) for t in finished)
    assert slots == list(range(n)), (f"finished slots {slots}, states {dict(states)}")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], states
    for t in finished:
        assert t.params == points[t.user_attrs["slot"]], (t.number, t.user_attrs["slot"])
