"""``tuner run``: create or resume a spec's batch-size studies and top each up to N trials.

Any number of these run at once, on one machine or many, against one storage: each is a worker
that claims trials from the studies' work queues (:mod:`tuner.run.trialqueue`) until every study has
N finished trials, waiting while the last ones run elsewhere (and re-running them if their
worker dies). ``--workers N`` starts N local worker processes (:mod:`tuner.run.workers`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable
from functools import partial

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.curves import Point, point
from tuner.store.source import outcome_of, record
from tuner.store.compat import heartbeat_thread, storage_of, study_id, tell_pruned, trial_id
from tuner.store.locking import Holder, LockLost, study_lock
from tuner.run.objective import make_objective
from tuner.store.persist import store_trial
from tuner.run.pruning import build_pruner
from tuner.run.sampling import build_sampler
from tuner.core.space import distributions
from tuner.run.signals import deferred, stop_cleanly
from tuner.spec import Spec
from tuner.store.storage import check_studies, create_or_load, open_storage, study_name
from tuner.run.trialqueue import FINISHED, Claim, claim, fail, finished_slots, mark_failed, slot_of

#: Seconds between a running trial's heartbeats; a trial silent for twice as long is re-run.
HEARTBEAT = 30
#: Who runs a trial (trial attr ``worker``): host and process id.
WORKER = f"{socket.gethostname()}:{os.getpid()}"
Callback = Callable[[optuna.Study, FrozenTrial], None]


def select_batch_sizes(spec: Spec, requested: tuple[int, ...]) -> tuple[int, ...]:
    """The spec's batch sizes, or the requested subset of them.

    Raises:
        UsageError: a requested batch size is not in the spec.
    """
    from tuner.core.errors import UsageError

    for b in requested:
        if b not in spec.batch_sizes:
            raise UsageError(f"--batch-size {b}: not in {spec.path}'s batch_sizes; allowed: "
                             f"{', '.join(map(str, spec.batch_sizes))}")
    return tuple(sorted(set(requested))) if requested else spec.batch_sizes


def prepare(spec: Spec, url: str, batch_sizes: tuple[int, ...], heartbeat: int = HEARTBEAT
            ) -> tuple[RDBStorage, dict[int, optuna.Study]]:
    """Check the stored studies against the spec (before writing anything), then create or load
    each batch-size study with its sampler and pruner."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_before_opening(spec, url, batch_sizes)
    storage = open_storage(url, heartbeat)
    check_studies(storage, spec, batch_sizes)
    space = distributions(spec.space)
    studies = {}
    for b in batch_sizes:
        sampler = build_sampler(spec.sampler.name, spec.sampler.seed, spec.sampler.options, space)
        p = spec.pruner
        with study_lock(url, study_name(spec, b)):
            studies[b] = create_or_load(storage, spec, b, sampler,
                                        build_pruner(p.name, p.slack, p.lossless, p.options))
    return storage, studies


def _check_before_opening(spec: Spec, url: str, batch_sizes: tuple[int, ...]) -> None:
    """Refuse a changed spec or a foreign study in an existing SQLite file through a read-only
    connection, before :func:`open_storage` touches the file (it switches it to WAL)."""
    from tuner.store.storage import open_readonly, sqlite_file

    db = sqlite_file(url)
    if db is None or not db.is_file() or not db.stat().st_size:
        return
    try:
        ro = open_readonly(url)
        ro.get_all_studies()
    except Exception:  # noqa: BLE001 - not an Optuna storage yet: open_storage says what it is
        return
    try:
        check_studies(ro, spec, batch_sizes)
    finally:
        ro.engine.dispose()


def points(studies: dict[int, optuna.Study]) -> list[Point]:
    """One summary point per batch size, from what is stored."""
    return [point(b, [record(t) for t in s.get_trials(deepcopy=False)])
            for b, s in studies.items()]


def run(spec: Spec, url: str, batch_sizes: tuple[int, ...], trials: int,
        echo: Callable[[str], None] = lambda s: None, heartbeat: int = HEARTBEAT,
        poll: float = 5.0) -> list[Point]:
    """Work on the studies until each has ``trials`` finished trials; one point per batch size."""
    storage, studies = prepare(spec, url, batch_sizes, heartbeat)
    echo(f"storage: {url}")
    with stop_cleanly():
        _work_all(spec, url, storage, studies, trials, echo, min(poll, heartbeat), heartbeat)
    return points(studies)


def _work_all(spec: Spec, url: str, storage: RDBStorage, studies: dict[int, optuna.Study],
              trials: int, echo: Callable[[str], None], poll: float,
              heartbeat: float = HEARTBEAT) -> None:
    left = dict(studies)
    said_waiting: set[int] = set()
    while left:
        for b, study in list(left.items()):
            n_done = len(finished_slots(study.get_trials(deepcopy=False)))
            if n_done >= trials:
                echo(f"{spec.name} B={b}: {n_done} trials stored, nothing to run")
                del left[b]
                continue
            if b not in said_waiting:
                echo(f"{spec.name} B={b}: {n_done} trials stored, up to {trials - n_done} to run "
                     f"(budget {spec.max_steps(b)} steps, {len(spec.eval_steps(b))} evaluations)")
            if _work(spec, url, storage, b, study, trials, echo, heartbeat):
                del left[b]
            elif b not in said_waiting:
                echo(f"{spec.name} B={b}: the last trials are running in other workers; waiting")
                said_waiting.add(b)
        if left:
            time.sleep(poll)


def _work(spec: Spec, url: str, storage: RDBStorage, b: int, study: optuna.Study, n: int,
          echo: Callable[[str], None], heartbeat: float = HEARTBEAT) -> bool:
    """Run trials of one study until none is left to claim; True when it has ``n`` finished."""
    objective = make_objective(spec, b, spec.workload)
    lock = partial(study_lock, url, study.study_name)
    callbacks: list[Callback] = [_progress(b, n, echo)]
    if not spec.workload.buffered:
        return _drain(study, n, objective, lock, callbacks, echo, heartbeat)
    # Fast workloads (the NQM) run each trial in memory and store it whole in one transaction,
    # holding the study lock throughout: other workers wait, then find the study full.
    # A storage outage can take the lock away (the server drops the connection that holds it):
    # each store checks it still holds it, and on losing it the worker starts this study over.
    try:
        with lock() as holder:
            for t, why in _tidy_for_buffer(study, heartbeat):
                echo(f"  B={b} trial #{t.number} (slot {slot_of(t)}): {why}")
            mem = _buffer(study)
            return _drain(mem, n, objective, contextlib.nullcontext,
                          [_persist(study, storage, holder), *callbacks], echo)
    except LockLost as exc:
        echo(f"  B={b}: {exc} (a storage outage?); the trial in hand was not stored; "
             "re-reading the study")
        return False


def _drain(study: optuna.Study, n: int, objective: Callable[[optuna.Trial], float],
           lock: Callable[[], contextlib.AbstractContextManager], callbacks: list[Callback],
           echo: Callable[[str], None], heartbeat: float = HEARTBEAT) -> bool:
    b = study.user_attrs.get("batch_size")
    while True:
        c: Claim | None = None
        try:
            with deferred(), lock():
                c = claim(study, n, heartbeat, WORKER)
            for t in c.stale:
                echo(f"  B={b} trial #{t.number} (slot {slot_of(t)}): "
                     f"{t.system_attrs.get('fail_reason')}")
            if c.superseded:
                echo(f"  B={b}: failed {c.superseded} duplicate WAITING trial(s) of slots "
                     "already finished or queued (left by an older version)")
            if c.requeued:
                echo(f"  B={b}: re-queued {c.requeued} failed trial(s) with their params")
            if c.trial is None:
                return c.finished >= n
            run_trial(study, c.trial, objective, lock, callbacks)
        except KeyboardInterrupt as exc:
            # a signal that arrived while claiming (it waits until the claim is written) or
            # before the trial started: the claimed trial is failed and re-queued now, not
            # left RUNNING until its heartbeat goes stale (a no-op if run_trial did it)
            if c is not None and c.trial is not None:
                with deferred(), lock():
                    if (frozen := fail(study, c.trial, _reason(exc))) is not None:
                        for cb in callbacks:
                            cb(study, frozen)
            raise


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip(": ")


def _taken(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether another worker finished ``trial`` (found it stale and re-queued it)."""
    try:
        return storage_of(study).get_trial(trial_id(trial)).state != TrialState.RUNNING
    except Exception:  # noqa: BLE001 - the storage itself is failing: not a taken trial
        return False


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
              lock: Callable[[], contextlib.AbstractContextManager], callbacks: list[Callback]
              ) -> FrozenTrial | None:
    """Run a claimed trial with a heartbeat, and tell the study how it ended.

    An exception, Ctrl-C or SIGTERM inside the objective marks the trial FAIL and re-queues it
    (same params, same seed), then propagates. SIGINT/SIGTERM are deferred while the study is
    written, so a trial is never left half-told. A trial that another worker took meanwhile (it
    found it stale: this process was paused, or its heartbeats did not get through) is left to
    that worker: one line on stderr, and None, so this worker carries on with the next slot.
    """
    value: float | None = None
    state = TrialState.COMPLETE
    try:
        with heartbeat_thread(trial_id(trial), storage_of(study)):
            trial.set_user_attr("worker", WORKER)
            if (gpus := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
                trial.set_user_attr("cuda_visible_devices", gpus)  # --gpus pins a worker to one
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt) and _taken(study, trial):
            return _said_taken(study, trial)
        with deferred(), lock():
            frozen = fail(study, trial, _reason(exc))
            for cb in callbacks if frozen is not None else ():
                cb(study, frozen)
        raise
    with deferred():
        try:
            if state == TrialState.PRUNED:
                tell_pruned(study, trial)  # no value: the dashboard would draw an error as steps
                frozen = storage_of(study).get_trial(trial_id(trial))
            else:
                frozen = study.tell(trial, value, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if _taken(study, trial):
                return _said_taken(study, trial)
            raise
        for cb in callbacks:
            cb(study, frozen)
    return frozen


def _said_taken(study: optuna.Study, trial: optuna.Trial) -> None:
    t = storage_of(study).get_trial(trial_id(trial))
    print(f"  B={study.user_attrs.get('batch_size')} trial #{t.number} (slot {slot_of(t)}): taken "
          f"from this worker ({t.system_attrs.get('fail_reason', t.state.name)}); another worker "
          "runs its slot: carrying on with the next", file=sys.stderr, flush=True)
    return None


def _buffer(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of ``study`` (its trials, same numbers, and system attrs).

    Trials run there and :func:`_persist` stores each finished one in ``study`` with a single
    transaction (:func:`tuner.store.persist.store_trial`), instead of one per reported value.
    A killed run loses only the trial in flight.
    """
    mem = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="minimize",
                              sampler=study.sampler, pruner=study.pruner)
    for k, v in storage_of(study).get_study_system_attrs(study_id(study)).items():
        storage_of(mem).set_study_system_attr(study_id(mem), k, v)
    for k, v in study.user_attrs.items():
        mem.set_user_attr(k, v)
    mem.add_trials(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL)))
    return mem


def _tidy_for_buffer(study: optuna.Study, heartbeat: float) -> list[tuple[FrozenTrial, str]]:
    """Before a buffered run (which holds the study lock throughout, so nobody else runs a
    trial of ``study``): fail the RUNNING and WAITING trials left in ``study`` by a killed
    worker or an older version. Their slots, if lost, are re-run in memory (:func:`_buffer`
    copies the FAIL trials; the work queue re-queues each lost slot once)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        why = (f"stale: worker {t.user_attrs.get('worker', '?')} left it RUNNING (the study lock "
               "was free, so it is gone); re-queued" if t.state == TrialState.RUNNING
               else "superseded: the buffered path re-runs its slot in memory")
        if (frozen := mark_failed(study, t, why)) is not None:
            out.append((frozen, why))
    return out


def _persist(study: optuna.Study, storage: RDBStorage, holder: Holder | None = None
             ) -> Callback:
    """Store each finished trial in ``study`` (of ``storage``) in one transaction, while
    ``holder`` (if given) still holds the study lock."""
    sid = study_id(study)

    def callback(_: optuna.Study, t: FrozenTrial) -> None:
        store_trial(storage, sid, t, {}, holder)

    return callback


def _progress(b: int, total: int, echo: Callable[[str], None]) -> Callback:
    started = time.monotonic()
    best: list[int | None] = []

    def callback(study: optuna.Study, t: FrozenTrial) -> None:
        kind = outcome_of(t)
        a = t.user_attrs
        # from the study, where other workers add trials too; in memory, nobody else does
        if not best or not isinstance(storage_of(study), optuna.storages.InMemoryStorage):
            best[:] = [point(b, [record(x) for x in study.get_trials(deepcopy=False)]).best_steps]
        elif kind == "reached" and a.get("steps_to_target") is not None and (
                best[0] is None or a["steps_to_target"] < best[0]):
            best[0] = a["steps_to_target"]
        done = len(finished_slots(study.get_trials(deepcopy=False)))
        what = (f"reached at step {a.get('steps_to_target')}" if kind == "reached"
                else f"{kind} at step {a.get('stopped_at_step')}" if t.state in FINISHED
                else f"failed ({t.system_attrs.get('fail_reason', '?')}), re-queued")
        echo(f"  B={b} trial {done}/{total} (#{t.number}): {what:28s} best so far "
             f"{best[0] if best[0] is not None else '-':>6}  [{time.monotonic() - started:.0f}s]")

    return callback
