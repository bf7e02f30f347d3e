"""``tuner run``: create or resume a spec's batch-size studies and top each up to N trials.

Any number of these run at once, on one machine or many, against one storage: each is a worker
that claims trials from the studies' work queues (:mod:`tuner.run.trialqueue`) until every study has
N finished trials, waiting while the last ones run elsewhere (and re-running them if their
worker dies). ``--workers N`` starts N local worker processes (:mod:`tuner.run.workers`).

Fast workloads (``Workload.buffered``: the NQM, milliseconds a trial) claim a block of slots at
a time instead (:mod:`tuner.store.claims`), run it in an in-memory study without holding the
study lock, and store its finished trials whole, together, so several workers share one study.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.curves import Point, point
from tuner.store.rows import gc_paused, open_reader
from tuner.store.source import ANALYSIS_ATTRS, outcome_of, record, stored_trials
from tuner.store.compat import heartbeat_thread, storage_of, study_id, tell_pruned, trial_id
from tuner.store.claims import PREFIX as CLAIM_PREFIX
from tuner.store.claims import Block, Claimed, ClaimLost, claim_block, finished_count, release
from tuner.store.locking import Liveness, LockLost, study_lock, worker_lock
from tuner.run.objective import Objective
from tuner.store.persist import store_trials
from tuner.run.pruning import build_pruner
from tuner.run.sampling import ChosenPoints, build_sampler
from tuner.core.space import distributions
from tuner.run.signals import deferred, stop_cleanly
from tuner.spec import Spec
from tuner.store.storage import (check_studies, create_or_load, in_memory, open_storage,
                                 study_name)
from tuner.run.trialqueue import (FINISHED, Claim, claim, fail, finished_slots, mark_failed,
                                  requeue, slot_of)

#: Seconds between a running trial's heartbeats; a trial silent for twice as long is re-run.
HEARTBEAT = 30
#: Who runs a trial (trial attr ``worker``): host and process id.
WORKER = f"{socket.gethostname()}:{os.getpid()}"
#: Seconds between two looks at a buffered study whose last block runs in another worker.
BUFFERED_POLL = 0.2
#: A buffered block stores its finished trials at its end, or after this many seconds.
STORE_SECONDS = 1.0
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
        sampler = ChosenPoints(build_sampler(spec.sampler.name, spec.sampler.seed,
                                          spec.sampler.options, space))
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


def points(studies: dict[int, optuna.Study], url: str | None = None) -> list[Point]:
    """One summary point per batch size, from what is stored in ``url``: read back with
    analysis's SQL reader (:mod:`tuner.store.rows`; 1,000 NQM trials in 0.035 s, against
    1.39 s through ``Study.get_trials``) where the storage has this Optuna's schema, else
    (in memory, another schema version) through Optuna."""
    if not studies:
        return []
    opened = open_reader(url) if url is not None and not in_memory(url) else None
    storage = opened if opened is not None else storage_of(next(iter(studies.values())))
    try:
        with gc_paused():
            rows = stored_trials(storage, [study_id(s) for s in studies.values()],
                                 ANALYSIS_ATTRS, curves=False)
            return [point(b, [record(t, curve=False) for t in stored])
                    for b, stored in zip(studies, rows)]
    finally:
        if opened is not None:
            opened.engine.dispose()


def run(spec: Spec, url: str, batch_sizes: tuple[int, ...], trials: int,
        echo: Callable[[str], None] = lambda s: None, heartbeat: int = HEARTBEAT,
        poll: float = 5.0, summary: bool = True) -> list[Point]:
    """Work on the studies until each has ``trials`` finished trials; one point per batch size
    (none without ``summary``: the trials are not read back)."""
    storage, studies = prepare(spec, url, batch_sizes, heartbeat)
    echo(f"storage: {url}")
    buffered = spec.workload.buffered
    with stop_cleanly(), (worker_lock(url) if buffered else contextlib.nullcontext()) as live:
        _work_all(spec, url, storage, studies, trials, echo,
                  min(poll, heartbeat, BUFFERED_POLL if buffered else poll), heartbeat, live)
    return points(studies, url) if summary else []


def _work_all(spec: Spec, url: str, storage: RDBStorage, studies: dict[int, optuna.Study],
              trials: int, echo: Callable[[str], None], poll: float,
              heartbeat: float = HEARTBEAT, live: Liveness | None = None) -> None:
    left = dict(studies)
    said_waiting: set[int] = set()
    while left:
        for b, study in list(left.items()):
            n_done = (finished_count(storage, study_id(study)) if live is not None
                      else len(finished_slots(study.get_trials(deepcopy=False))))
            if n_done >= trials:
                echo(f"{spec.name} B={b}: {n_done} trials stored, nothing to run")
                del left[b]
                continue
            if b not in said_waiting:
                at_once = (f", {spec.trials_at_once} at once as one vectorised model"
                           if spec.trials_at_once > 1 else "")
                echo(f"{spec.name} B={b}: {n_done} trials stored, up to {trials - n_done} to run "
                     f"(budget {spec.max_steps(b)} steps, {len(spec.eval_steps(b))} evaluations"
                     f"{at_once})")
            if _work(spec, url, storage, b, study, trials, echo, heartbeat, live):
                del left[b]
            elif b not in said_waiting:
                echo(f"{spec.name} B={b}: the last trials are running in other workers; waiting")
                said_waiting.add(b)
        if left:
            time.sleep(poll)


def _work(spec: Spec, url: str, storage: RDBStorage, b: int, study: optuna.Study, n: int,
          echo: Callable[[str], None], heartbeat: float = HEARTBEAT, live: Liveness | None = None
          ) -> bool:
    """Run trials of one study until none is left to claim; True when it has ``n`` finished."""
    objective = Objective(spec, b, spec.workload)
    lock = partial(study_lock, url, study.study_name)
    if spec.trials_at_once > 1:
        return drain_at_once(study, n, objective, spec.trials_at_once, lock,
                             [progress(b, n, echo)], echo, heartbeat)
    if not spec.workload.buffered:
        return drain(study, n, objective, lock, [progress(b, n, echo)], echo, heartbeat)
    assert live is not None
    return _blocks(study, storage, n, objective, lock, live, [], echo,
                   _reads_history(spec, study))


def _blocks(study: optuna.Study, storage: RDBStorage, n: int,
            objective: Callable[[optuna.Trial], float],
            lock: Callable[[], contextlib.AbstractContextManager], live: Liveness,
            callbacks: list[Callback], echo: Callable[[str], None], history: bool = True
            ) -> bool:
    """The buffered path: claim a block of slots under the study lock, run it in memory without
    the lock, store its finished trials whole (in one transaction, while their slots are still
    claimed: :class:`_Pending`), drop the claim; again, until nothing is left to claim. True
    when the study has ``n`` finished trials.

    Other workers claim other blocks meanwhile (:mod:`tuner.store.claims`). A worker killed
    mid-block leaves only its claim, which the next worker to claim drops at once (its liveness
    lock is free): the block's trials not stored yet are re-run. Ctrl-C or SIGTERM stores the
    block's finished trials and the trial in hand as FAIL (re-run with its params), and drops
    the claim. ``history``: copy the other workers' trials into memory (for a sampler or pruner
    that reads them)."""
    b = study.user_attrs.get("batch_size")
    sid = study_id(study)
    mem: optuna.Study | None = None
    known = {"done": 0, "best": None}  # the study's finished slots and best, as far as known
    # A SQLite file has one writer at a time: its lock (the study lock, one for the file) makes
    # workers queue for it, woken at once, instead of sleeping in SQLite's busy handler (1 ms,
    # then 2, 5, 10, ...), which cost two workers a tenth of their time
    pending = _Pending(storage, sid, live, lock if live.db is not None else contextlib.nullcontext)
    callbacks = [pending.add, _block_progress(b, n, echo, known), *callbacks]
    tidied = False
    while True:
        block = None
        try:
            with deferred(), lock():
                block = _claim(storage, sid, n, live, echo, b)
                if block.active and not tidied:  # an older version's trials: fail, claim again
                    tidied = True
                    for t, why in _tidy_for_buffer(study):
                        echo(f"  B={b} trial #{t.number} (slot {slot_of(t)}): {why}")
                    block = _claim(storage, sid, n, live, echo, b)
            for who in block.dropped:
                echo(f"  B={b}: worker {who} is gone (its liveness lock is free); the slots it "
                     "had claimed are free again")
            if not block.slots:
                return block.finished >= n
            known.update(done=block.finished, best=block.best)
            # others' trials are copied in only for a sampler or pruner that reads them: reading
            # them back costs about what storing them did
            if mem is None:
                mem = _buffer(study, history)
            elif history:
                _catch_up(mem, study)
            for slot in block.slots:
                if slot in block.lost:  # failed before: the same params and seed again
                    requeue(mem, storage.get_trial(block.lost[slot]))
                else:
                    mem.enqueue_trial({}, user_attrs={"slot": slot})
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # heartbeat + ask(): in memory
                    trial = mem.ask()
                storage_of(mem).set_trial_system_attr(trial_id(trial), "heartbeat_interval",
                                                      HEARTBEAT)
                storage_of(mem).set_trial_system_attr(trial_id(trial), "worker", WORKER)
                run_trial(mem, trial, objective, contextlib.nullcontext, callbacks)
                if pending.due():
                    with deferred():
                        pending.store()
            with deferred():
                pending.store()
        except ClaimLost as exc:
            echo(f"  B={b}: {exc} (a storage outage?); its trials not stored yet were dropped; "
                 "re-reading the study")
        finally:
            if block is not None and block.slots:
                with deferred():
                    try:
                        pending.store()  # after Ctrl-C: what the block finished, and the FAIL
                    except ClaimLost:
                        pass
                    finally:
                        pending.trials.clear()
                        release(storage, sid, live)


class _Pending:
    """The finished in-memory trials of a block not stored yet (:meth:`add` is a callback).

    :meth:`store` writes them in one transaction (:func:`tuner.store.persist.store_trials`,
    holding ``lock``) that first checks that their slots are still this worker's claim
    (:class:`tuner.store.claims.Claimed`); the block stores at its end, or every
    :data:`STORE_SECONDS` if it runs longer.
    """

    def __init__(self, storage: RDBStorage, sid: int, live: Liveness,
                 lock: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.storage, self.sid, self.live, self.lock = storage, sid, live, lock
        self.trials: list[FrozenTrial] = []
        self.since = 0.0  # when the oldest trial kept was added

    def add(self, _: optuna.Study, t: FrozenTrial) -> None:
        """Keep a finished (or failed) trial to store."""
        if not self.trials:
            self.since = time.monotonic()
        self.trials.append(t)

    def due(self) -> bool:
        """Whether the oldest trial kept has waited :data:`STORE_SECONDS` or longer."""
        return bool(self.trials) and time.monotonic() - self.since >= STORE_SECONDS

    def store(self) -> None:
        """Store the trials kept, if any.

        Raises:
            ClaimLost: their slots are no longer this worker's claim; nothing was stored.
        """
        if self.trials:
            check = Claimed(self.sid, self.live.token, tuple(slot_of(t) for t in self.trials))
            with self.lock():
                store_trials(self.storage, self.sid, self.trials, {}, check)
            self.trials.clear()


def _reads_history(spec: Spec, study: optuna.Study) -> bool:
    """Whether the study's sampler or pruner looks at its other trials (TPE, any pruner): the
    quasi-random and random samplers take each slot's point from the slot alone."""
    return spec.sampler.name == "tpe" or not isinstance(study.pruner, optuna.pruners.NopPruner)


def _claim(storage: RDBStorage, sid: int, n: int, live: Liveness, echo: Callable[[str], None],
           b: object) -> Block:
    """:func:`claim_block`, taking this worker's liveness lock again if an outage took it."""
    while True:
        if live.ensure():
            echo(f"  B={b}: this worker's liveness lock was lost (a storage outage?); "
                 "taken again")
        try:
            return claim_block(storage, sid, n, live, WORKER)
        except LockLost as exc:
            echo(f"  B={b}: {exc} (a storage outage?); taking it again")
            live.ensure(lost=True)


def drain(study: optuna.Study, n: int, objective: Callable[[optuna.Trial], float],
          lock: Callable[[], contextlib.AbstractContextManager], callbacks: list[Callback],
          echo: Callable[[str], None], heartbeat: float = HEARTBEAT) -> bool:
    """Claim and run the study's trials (:func:`tuner.run.trialqueue.claim`) until none is left
    to claim; True when it has ``n`` finished (also ``tuner confirm``'s loop)."""
    b = study.user_attrs.get("batch_size")
    while True:
        c: Claim | None = None
        try:
            with deferred(), lock():
                c = claim(study, n, heartbeat, WORKER)
            _said_claim(c, b, echo)
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


def drain_at_once(study: optuna.Study, n: int, objective: Objective, k: int,
                  lock: Callable[[], contextlib.AbstractContextManager],
                  callbacks: list[Callback], echo: Callable[[str], None],
                  heartbeat: float = HEARTBEAT) -> bool:
    """:func:`drain` for ``[trainer] trials_at_once = k``: claim up to ``k`` trials, one by one
    through :func:`tuner.run.trialqueue.claim` (so every guarantee of the slot queue holds),
    and train them together (the workload's ``run_many``); a lane whose trial ended claims the
    next. Each claimed trial is RUNNING with its own heartbeat until it is told on its own, with
    the attrs one trial at a time gets. An exception, Ctrl-C or SIGTERM fails every trial in
    hand and re-queues its slot (same params, same seed), then propagates. A trial that another
    worker took meanwhile (it found it stale) is left to that worker, as :func:`run_trial`
    does: its lane stops, and the others train on. True when the study has ``n`` finished
    trials."""
    b = study.user_attrs.get("batch_size")
    while True:
        last: list[Claim] = []
        beats: dict[int, contextlib.ExitStack] = {}  # trial number -> its heartbeat
        held: dict[int, optuna.Trial] = {}
        taken: set[int] = set()

        def next_trial() -> tuple[optuna.Trial, Any, Any] | None:
            c: Claim | None = None
            try:
                with deferred(), lock():
                    c = claim(study, n, heartbeat, WORKER)
            finally:  # a signal deferred while claiming is raised here: fail the claimed trial
                if c is not None and c.trial is not None:
                    held[c.trial.number] = c.trial
            last.append(c)
            _said_claim(c, b, echo)
            if c.trial is None:
                return None
            trial = c.trial
            beat = beats[trial.number] = contextlib.ExitStack()
            beat.enter_context(heartbeat_thread(trial_id(trial), storage_of(study)))
            _mark_worker(trial)
            request, report = objective.start(trial)

            def report_here(step: int, metrics: dict[str, float]) -> bool:
                try:
                    return report(step, metrics)
                except Exception:
                    if not _taken(study, trial):
                        raise
                    taken.add(trial.number)
                    return True  # stop its lane: another worker runs its slot

            return trial, request, report_here

        def done(trial: optuna.Trial, result: Any) -> None:
            beats.pop(trial.number).close()
            state, value = TrialState.COMPLETE, None
            try:
                if trial.number not in taken:
                    value = objective.finish(trial, result)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except Exception:
                if not _taken(study, trial):
                    raise
                taken.add(trial.number)
            if trial.number in taken:
                _said_taken(study, trial)
            else:
                _tell(study, trial, value, state, callbacks)
            del held[trial.number]

        try:
            ran = objective.workload.run_many(next_trial, done, k)
        except BaseException as exc:
            for beat in beats.values():
                beat.close()
            with deferred(), lock():
                for trial in held.values():
                    if (frozen := fail(study, trial, _reason(exc))) is not None:
                        for cb in callbacks:
                            cb(study, frozen)
            raise
        if not ran:
            return last[-1].finished >= n


def _said_claim(c: Claim, b: object, echo: Callable[[str], None]) -> None:
    """What a claim did besides claiming: trials failed as stale or superseded, slots
    re-queued."""
    for t in c.stale:
        echo(f"  B={b} trial #{t.number} (slot {slot_of(t)}): "
             f"{t.system_attrs.get('fail_reason')}")
    if c.superseded:
        echo(f"  B={b}: failed {c.superseded} duplicate WAITING trial(s) of slots "
             "already finished or queued (left by an older version)")
    if c.requeued:
        echo(f"  B={b}: re-queued {c.requeued} failed trial(s) with their params")


def _mark_worker(trial: optuna.Trial) -> None:
    """Record who runs the trial (user attrs ``worker`` and, when set, the worker's
    ``cuda_visible_devices``: ``--gpus`` pins a worker to one GPU, and ``omp_num_threads``:
    ``--workers`` shares the CPUs out, and step times depend on it)."""
    trial.set_user_attr("worker", WORKER)
    if (gpus := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        trial.set_user_attr("cuda_visible_devices", gpus)
    if threads := os.environ.get("OMP_NUM_THREADS"):
        trial.set_user_attr("omp_num_threads", threads)


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
            _mark_worker(trial)
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
    return _tell(study, trial, value, state, callbacks)


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState,
          callbacks: list[Callback]) -> FrozenTrial | None:
    """Tell the study how a trial ended (signals deferred meanwhile) and run the callbacks;
    None (one line on stderr) when another worker took the trial meanwhile."""
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


def _buffer(study: optuna.Study, trials: bool = True) -> optuna.Study:
    """An in-memory copy of ``study``: its sampler, pruner, attrs and (if ``trials``) finished
    trials.

    Buffered trials run there and :class:`_Pending` stores the finished ones in ``study``, a
    block's in a single transaction (:func:`tuner.store.persist.store_trials`), instead of one
    per reported value. A killed run loses only the trials of its block not stored yet.
    """
    mem = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="minimize",
                              sampler=study.sampler, pruner=study.pruner)
    for k, v in storage_of(study).get_study_system_attrs(study_id(study)).items():
        if not k.startswith(CLAIM_PREFIX):
            storage_of(mem).set_study_system_attr(study_id(mem), k, v)
    for k, v in study.user_attrs.items():
        mem.set_user_attr(k, v)
    if trials:
        _catch_up(mem, study)
    return mem


def _catch_up(mem: optuna.Study, study: optuna.Study) -> None:
    """Copy into ``mem`` the trials of slots finished in ``study`` (by other workers too) and
    not in ``mem``."""
    have = finished_slots(mem.get_trials(deepcopy=False, states=FINISHED))
    new = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if slot_of(t) not in have]
    if new:
        mem.add_trials(new)


def _tidy_for_buffer(study: optuna.Study) -> list[tuple[FrozenTrial, str]]:
    """When a worker starts on a buffered study (under the study lock): fail the RUNNING and
    WAITING trials of ``study``. Buffered workers never leave any (their trials run in memory), so
    these are an older version's, whose worker is gone. Their slots are then lost, and re-run
    with their params (:func:`tuner.store.claims.claim_block`)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        why = (f"stale: worker {t.user_attrs.get('worker', '?')} left it RUNNING (buffered "
               "trials run in memory, so it is gone); re-queued" if t.state == TrialState.RUNNING
               else "superseded: the buffered path re-runs its slot in memory")
        if (frozen := mark_failed(study, t, why)) is not None:
            out.append((frozen, why))
    return out


def _block_progress(b: int, total: int, echo: Callable[[str], None], known: dict[str, Any]
                    ) -> Callback:
    """A progress line per buffered trial: the study's count and best as of the last claim
    (:class:`tuner.store.claims.Block`) and this worker's trials since (stored or not yet)."""
    started = time.monotonic()

    def callback(study: optuna.Study, t: FrozenTrial) -> None:
        a = t.user_attrs
        if t.state in FINISHED:
            known["done"] += 1
        kind = outcome_of(t)
        steps = a.get("steps_to_target")
        if kind == "reached" and isinstance(steps, int) and (
                known["best"] is None or steps < known["best"]):
            known["best"] = steps
        what = (f"reached at step {steps}" if kind == "reached"
                else f"{kind} at step {a.get('stopped_at_step')}" if t.state in FINISHED
                else f"failed ({t.system_attrs.get('fail_reason', '?')}), re-queued")
        best = known["best"]
        echo(f"  B={b} trial {known['done']}/{total} (#{t.number}): {what:28s} best so far "
             f"{best if best is not None else '-':>6}  [{time.monotonic() - started:.0f}s]")

    return callback


def progress(b: int, total: int, echo: Callable[[str], None]) -> Callback:
    """The callback that prints a progress line per finished trial."""
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
