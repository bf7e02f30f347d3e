"""Many workers on one storage: exact counts, no duplicate points (crash and signal recovery:
tests/run/test_faults.py).

Real worker processes (``tuner run``) against a real PostgreSQL server on loopback (started by
scripts/postgres.sh) and against the default SQLite file.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import SMALL_DIGITS, SMALL_NQM, write
from tuner.run import workers as workers_mod
from tuner.store.compat import study_id

TUNER = [sys.executable, "-m", "tuner.cli"]
# Every trial runs its whole budget (the target is out of reach): seconds long, to kill mid-way.
SLOW = SMALL_DIGITS.replace("value = 0.12", "value = 0.001").replace("max_steps = 400",
                                                                      "max_steps = 1000")


def trials_of(url: str) -> dict[int, list[optuna.trial.FrozenTrial]]:
    out = {}
    for s in optuna.get_all_study_summaries(url):
        if "batch_size" not in s.user_attrs:  # being created by a worker right now
            continue
        out[s.user_attrs["batch_size"]] = optuna.load_study(study_name=s.study_name,
                                                            storage=url).get_trials()
    return out


def check_exact(trials: list[optuna.trial.FrozenTrial], n: int) -> None:
    """n finished trials, one per slot 0..n-1, no two with the same params, none left running."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n, Counter(t.state.name for t in trials)
    assert sorted(t.user_attrs["slot"] for t in finished) == list(range(n))
    assert len({tuple(sorted(t.params.items())) for t in finished}) == n
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.slow
def test_four_workers_on_postgresql_run_exactly_n_trials(tmp_path: Path, postgres_url: str
                                                         ) -> None:
    spec = write(tmp_path, SMALL_DIGITS, "pg4.toml")
    r = subprocess.run([*TUNER, "run", str(spec), "--storage", postgres_url, "--workers", "4",
                        "-n", "6"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    found = trials_of(postgres_url)
    assert sorted(found) == [16, 128]
    for trials in found.values():
        check_exact(trials, 6)
        assert not [t for t in trials if t.state == TrialState.FAIL]
    assert len({t.user_attrs["worker"] for ts in found.values() for t in ts}) > 1
    assert "[worker 3]" in r.stderr and "16" in r.stdout


@pytest.mark.slow
def test_two_workers_on_the_default_sqlite_file(tmp_path: Path) -> None:
    spec = write(tmp_path, SMALL_DIGITS, "lite.toml")
    url = f"sqlite:///{tmp_path / 'two.db'}"
    env = {k: v for k, v in os.environ.items() if k not in workers_mod.THREAD_VARS}
    r = subprocess.run([*TUNER, "run", str(spec), "--storage", url, "--workers", "2", "-n", "5"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and "locked" not in r.stderr, r.stderr[-2000:]
    # the CPUs shared out: one torch thread pool per core would oversubscribe the machine
    threads = max(1, workers_mod.cpus() // 2)
    assert f"starting 2 workers, {threads} CPU thread" in r.stderr, r.stderr[-2000:]
    for trials in trials_of(url).values():
        check_exact(trials, 5)
        assert {t.user_attrs["omp_num_threads"] for t in trials} == {str(threads)}


def test_a_users_omp_num_threads_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in workers_mod.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    cpus = workers_mod.cpus()
    assert workers_mod.threads_per_worker(2) == max(1, cpus // 2)
    assert workers_mod.threads_per_worker(cpus + 1) == 1
    assert workers_mod.threads_per_worker(1) is None  # one worker (one --gpus): torch's default
    assert workers_mod.threads_said(None) == ""
    for var in workers_mod.THREAD_VARS:  # either one sizes torch's pool: the user's is kept
        monkeypatch.setenv(var, "3")
        assert workers_mod.threads_per_worker(2) is None
        assert f"{var}=3" in workers_mod.threads_said(None)
        monkeypatch.delenv(var)


def _holding(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (a worker waiting for that lock file)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


def results_by_slot(trials: list[optuna.trial.FrozenTrial]) -> dict[int, tuple]:
    """slot -> what the finished trial found: its params, value, seed, outcome and curve."""
    return {t.user_attrs["slot"]: (t.params, t.value, t.user_attrs["seed"],
                                   t.user_attrs["outcome"], t.intermediate_values)
            for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def test_two_buffered_workers_share_each_nqm_study(tmp_path: Path) -> None:
    # Buffered (NQM) workers claim blocks of slots and run them without the study lock, so
    # two of them split a study: both store some of its trials, every slot exactly once,
    # each with what one worker alone finds for it. Both start together: the test holds the
    # SQLite file's lock until each waits for it.
    n = 40
    spec = write(tmp_path, SMALL_NQM.replace("dimensions = 1000", "dimensions = 10000")
                 .replace("trials = 12", f"trials = {n}"), "nqm.toml")
    db = tmp_path / "two.db"
    url = f"sqlite:///{db}"
    lock = Path(f"{db}.lock")
    args = [*TUNER, "run", str(spec), "--storage", url, "-q"]
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        deadline = time.monotonic() + 120
        while not all(_holding(p.pid, lock) for p in procs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.poll() for p in procs]
            time.sleep(0.05)
        fcntl.flock(fh, fcntl.LOCK_UN)
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    one = f"sqlite:///{tmp_path / 'one.db'}"
    r = subprocess.run([*TUNER, "run", str(spec), "--storage", one, "-q"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

    found, alone = trials_of(url), trials_of(one)
    assert sorted(found) == sorted(alone) == [16, 1024]
    pids = {str(p.pid) for p in procs}
    for b, trials in found.items():
        check_exact(trials, n)
        assert not [t for t in trials if t.state == TrialState.FAIL]
        workers = {t.user_attrs["worker"] for t in trials}
        assert {w.rsplit(":", 1)[1] for w in workers} == pids, (b, workers)
        assert {t.system_attrs["worker"] for t in trials} == workers
        assert results_by_slot(trials) == results_by_slot(alone[b])
    # nothing of the claims is left behind: no study attr, no liveness lock file
    storage = optuna.storages.RDBStorage(url)
    for s in storage.get_all_studies():
        assert not [k for k in storage.get_study_system_attrs(study_id(s))
                    if k.startswith("tuner:claim:")]
    assert not list(tmp_path.glob("two.db.worker-*"))


@pytest.mark.slow
def test_gpus_pin_one_worker_per_gpu(tmp_path: Path) -> None:
    # `tuner run --gpus` refuses GPUs this machine lacks (tests/test_cli.py); the launcher
    # behind it pins each worker process to its GPU with CUDA_VISIBLE_DEVICES whatever is there
    from tuner.run.workers import launch

    spec = write(tmp_path, SMALL_DIGITS, "gpus.toml")
    url = f"sqlite:///{tmp_path / 'g.db'}"
    lines: list[str] = []
    code = launch(["run", str(spec), "--storage", url, "-n", "4", "-b", "128"], 2, ["0", "1"],
                  lines.append)
    assert code == 0, lines[-20:]
    assert any(line.startswith("[worker 1 gpu 1]") for line in lines)
    [trials] = trials_of(url).values()
    check_exact(trials, 4)
    gpus_of: dict[str, set[str]] = {}
    for t in trials:  # each worker process saw exactly one of the two GPUs
        gpus_of.setdefault(t.user_attrs["worker"], set()).add(t.user_attrs["cuda_visible_devices"])
    assert all(len(g) == 1 for g in gpus_of.values()) and set.union(*gpus_of.values()) <= {"0", "1"}


@pytest.mark.parametrize("args, fragment", [
    (["--gpus", "0,x"], "--gpus '0,x': allowed"),
    (["--workers", "2", "--storage", "sqlite://"], "cannot be shared"),
    (["--storage", "mysql://u@h/db"], "back end 'mysql' is not supported"),
])
def test_bad_worker_options_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    spec = write(tmp_path, SMALL_DIGITS, "bad.toml")
    r = subprocess.run([*TUNER, "run", str(spec), *args], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "results").exists()
