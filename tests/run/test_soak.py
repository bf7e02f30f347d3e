"""Soak (issue 13): six workers on one PostgreSQL storage, a random one killed every few seconds.

Three workers run a small NQM spec (the buffered path), three a small digits spec (real
training, one trial at a time with heartbeats). Every few seconds a random live worker gets
SIGKILL or SIGINT and is started again. At the end every study has exactly N finished trials on
N distinct slots, each with its slot's point, and nothing WAITING or RUNNING.

Bounded to about 5 minutes; not part of ``make test`` (``-m 'not soak'``): run ``make soak``.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import optuna
import pytest

from conftest import write
from procs import Worker, check_exact, reader, slot_points
from test_faults import FAULT, NQM
from tuner.run import specs as spec_mod
from tuner.store.storage import study_name

SOAK_NQM = (NQM.replace("batch_sizes = [16, 1024]", "batch_sizes = [16, 256, 4096]")
            .replace("trials = 12", "trials = 250"))
SOAK_DIGITS = FAULT.replace("batch_sizes = [16, 128]", "batch_sizes = [16, 64, 128]").replace(
    "trials = 4", "trials = 5")
#: Seconds of killing (then the workers finish undisturbed); the whole test stays under ~5 min.
KILL_FOR = 120
DEADLINE = 290


@pytest.mark.slow
@pytest.mark.soak
def test_six_workers_survive_random_kills(tmp_path: Path, postgres_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres_url
    specs = {"nqm": write(tmp_path, SOAK_NQM, "soak_nqm.toml"),
             "digits": write(tmp_path, SOAK_DIGITS, "soak_digits.toml")}
    args = {"nqm": ["run", str(specs["nqm"]), "--storage", url],
            "digits": ["run", str(specs["digits"]), "--storage", url, "--heartbeat", "2"]}
    kinds = ["nqm"] * 3 + ["digits"] * 3
    rng = random.Random(20261201)
    start = time.monotonic()
    live: dict[int, Worker] = {k: Worker(args[kind]) for k, kind in enumerate(kinds)}
    done: set[int] = set()
    kills = {signal.SIGKILL: 0, signal.SIGINT: 0}
    unexpected: list[str] = []
    try:
        while len(done) < len(kinds) and time.monotonic() - start < DEADLINE:
            time.sleep(rng.uniform(3.0, 7.0))
            for k, w in list(live.items()):  # workers that ended by themselves
                if k not in done and w.popen.poll() is not None:
                    if w.popen.returncode == 0:
                        done.add(k)
                    else:
                        unexpected.append(f"worker {k} exit {w.popen.returncode}: {w.err[-5:]}")
                        live[k] = Worker(args[kinds[k]])
            alive = [k for k in live if k not in done]
            if not alive or time.monotonic() - start > KILL_FOR:
                continue
            k = rng.choice(alive)
            sig = rng.choice([signal.SIGKILL, signal.SIGINT])
            if not live[k].err:  # still importing (before tuner's handlers): Ctrl-C is Python's
                sig = signal.SIGKILL
            live[k].send(sig)
            code = live[k].wait(120)
            if code == 0:  # it had just finished
                done.add(k)
                continue
            assert code in (-9, 130), (code, live[k].err[-10:])
            assert "Traceback" not in live[k].stderr, live[k].stderr[-3000:]
            kills[sig] += 1
            live[k] = Worker(args[kinds[k]])
        codes = {k: w.wait(max(1.0, DEADLINE + 10 - (time.monotonic() - start)))
                 for k, w in live.items()}
    finally:
        for w in live.values():
            w.stop()
    assert not unexpected, unexpected
    assert set(codes.values()) == {0}, {k: (c, live[k].err[-5:]) for k, c in codes.items()}
    for k, w in live.items():
        assert "Traceback" not in w.stderr, (k, w.stderr[-3000:])
    for kind, path in specs.items():
        spec = spec_mod.load(str(path))
        points = slot_points(path, spec.trials)
        for b in spec.batch_sizes:
            study = optuna.load_study(study_name=study_name(spec, b), storage=reader(url))
            check_exact(study.get_trials(), spec.trials, points)
    total = sum(kills.values())
    with capsys.disabled():
        print(f"\nsoak: {total} kills survived ({kills[signal.SIGKILL]} SIGKILL, "
              f"{kills[signal.SIGINT]} SIGINT) by 6 workers in {time.monotonic() - start:.0f} s; "
              f"every study exact")
    assert total >= 10
