"""The work queue of one batch-size study: exactly N finished trials on N distinct slots.

Every trial is a *slot* s = 0, 1, 2, ... (user attr ``slot``). The sampler derives the trial's
point from its slot (the s-th point of the quasi-random sequence; random and TPE reseed per slot)
and the objective derives its seed from it, so a slot's params and seed do not depend on which
worker runs it, or when, or how often it failed before.

The queue is kept **by slot**, never by Optuna's retry attrs (``RetryHeartbeatStaleTrialCallback``
copies ``failed_trial`` into a retry of a retry, so they cannot tell whether a failure has been
re-queued). A slot is

- *done* once one of its trials finished (COMPLETE or PRUNED);
- *active* while one of its trials is RUNNING or WAITING;
- *lost* when all its trials FAILed: it gets one WAITING copy of its last failed trial (same
  params, slot and seed), so a slot is re-queued at most once per failure.

:func:`claim` is the only way a worker gets a trial, and it runs under the study lock
(:mod:`tuner.store.locking`):

1. fail stale RUNNING trials (``fail_reason`` says so): a trial whose last heartbeat is older
   than twice *its own worker's* heartbeat interval (system attr ``heartbeat_interval``), or one
   that never beat and started longer ago than that (its worker died right after claiming it);
2. fail WAITING trials of a slot that is done or already active (left by older versions);
3. re-queue every lost slot once;
4. if done + running slots >= N, claim nothing (finished, or the rest runs elsewhere);
5. pop the oldest WAITING trial (a retry), else enqueue the next slot and pop it; its heartbeat
   is recorded *before* it turns RUNNING, so a worker killed at any moment leaves a trial that
   step 1 recognises.
"""

from __future__ import annotations

import copy
import datetime as dt
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tuner.store.compat import (forget_cached_trials, heartbeats, is_heartbeat_enabled,
                                record_heartbeat, storage_of, study_id, trial_id)
from tuner.store.source import slot_of

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: Heartbeat interval (s) assumed for trials stored without one (and storages without it).
DEFAULT_INTERVAL = 30.0
ACTIVE = (TrialState.RUNNING, TrialState.WAITING)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    #: Enqueues a WAITING copy of a failed trial (same params and user attrs, incl. the slot).
    RETRY = RetryHeartbeatStaleTrialCallback()


def slots(trials: list[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """The trials of each slot, oldest first."""
    out: dict[int, list[FrozenTrial]] = defaultdict(list)
    for t in sorted(trials, key=lambda t: t.number):
        out[slot_of(t)].append(t)
    return dict(out)


def finished_slots(trials: list[FrozenTrial]) -> set[int]:
    """The slots with a finished (COMPLETE or PRUNED) trial."""
    return {slot_of(t) for t in trials if t.state in FINISHED}


#: User attrs of the worker that ran a trial (``runner._mark_worker``), not copied to its retry:
#: the worker that runs the retry writes its own, or none.
WORKER_ATTRS = ("worker", "cuda_visible_devices", "omp_num_threads")


def requeue(study: optuna.Study, failed: FrozenTrial) -> None:
    """Enqueue a WAITING copy of a FAIL trial: same params, slot and seed."""
    t = copy.copy(failed)
    t.user_attrs = {**{k: v for k, v in failed.user_attrs.items() if k not in WORKER_ATTRS},
                    "slot": slot_of(failed)}
    t.system_attrs = {k: v for k, v in failed.system_attrs.items()
                      if k not in ("fail_reason", "heartbeat_interval")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RETRY(study, t)


@dataclass
class Claim:
    """What :func:`claim` found: a trial to run (or None) and the study's counts (in slots)."""

    trial: optuna.Trial | None
    finished: int
    running: int
    requeued: int
    stale: list[FrozenTrial] = field(default_factory=list)  # failed here: their worker died
    superseded: int = 0  # WAITING copies of done or active slots, failed here


def mark_failed(study: optuna.Study, t: FrozenTrial, reason: str) -> FrozenTrial | None:
    """Mark ``t`` FAIL with ``reason``; None if it finished meanwhile."""
    storage = storage_of(study)
    try:
        storage.set_trial_system_attr(trial_id(t), "fail_reason", reason)
        if not storage.set_trial_state_values(trial_id(t), state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(trial_id(t))


def stale_trials(study: optuna.Study, trials: list[FrozenTrial], default_interval: float
                 ) -> list[tuple[FrozenTrial, str]]:
    """RUNNING trials whose worker is gone, each with the reason (see the module docstring).

    A trial's own ``heartbeat_interval`` system attr decides; ``default_interval`` is for trials
    stored by versions that did not record it.
    """
    storage = storage_of(study)
    if not is_heartbeat_enabled(storage):
        return []
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return []
    now, beats = heartbeats(storage, study_id(study))
    local_now = dt.datetime.now()
    out = []
    for t in running:
        interval = float(t.system_attrs.get("heartbeat_interval", default_interval))
        grace = 2 * interval
        who = t.user_attrs.get("worker") or t.system_attrs.get("worker", "?")
        if trial_id(t) in beats:
            silent = (now - beats[trial_id(t)]).total_seconds()
            if silent > grace:
                out.append((t, f"stale: worker {who} sent no heartbeat for {silent:.0f} s "
                               f"(its interval {interval:g} s); re-queued"))
        elif t.datetime_start is not None:
            # never beat: the worker died between claiming and its first heartbeat (or an older
            # version claimed it); datetime_start is the claiming machine's local clock
            age = (local_now - t.datetime_start).total_seconds()
            if age > grace:
                out.append((t, f"stale: worker {who} never sent a heartbeat ({age:.0f} s since "
                               f"it started); re-queued"))
    return out


def claim(study: optuna.Study, n_trials: int, heartbeat_interval: float | None = None,
          worker: str = "") -> Claim:
    """The next trial of ``study`` to run, as in the module docstring. Hold the study lock.

    ``heartbeat_interval`` is this worker's (default: its storage's; stored with the trial it
    claims, so other workers judge the trial by its own interval); ``worker`` names it (system
    attr ``worker``).
    """
    if heartbeat_interval is None:
        get = getattr(storage_of(study), "get_heartbeat_interval", lambda: None)
        heartbeat_interval = get() or DEFAULT_INTERVAL
    trials = study.get_trials(deepcopy=False)
    stale = []
    for t, reason in stale_trials(study, trials, heartbeat_interval):
        if (frozen := mark_failed(study, t, reason)) is not None:
            stale.append(frozen)
    if stale:
        trials = study.get_trials(deepcopy=False)

    superseded = 0
    for s, ts in slots(trials).items():
        done = any(t.state in FINISHED for t in ts)
        running = any(t.state == TrialState.RUNNING for t in ts)
        waiting = [t for t in ts if t.state == TrialState.WAITING]
        extra = waiting if (done or running) else waiting[1:]
        for t in extra:
            why = "finished" if done else "running" if running else "queued"
            superseded += mark_failed(study, t, f"superseded: slot {s} is already {why}") is not None
    requeued = 0
    by_slot = slots(study.get_trials(deepcopy=False)) if superseded else slots(trials)
    for s, ts in by_slot.items():
        if all(t.state == TrialState.FAIL for t in ts):
            requeue(study, ts[-1])
            requeued += 1

    trials = study.get_trials(deepcopy=False)
    by_slot = slots(trials)
    finished = len(finished_slots(trials))
    running = sum(any(t.state == TrialState.RUNNING for t in ts) and
                  not any(t.state in FINISHED for t in ts) for ts in by_slot.values())
    if finished + running >= n_trials:
        return Claim(None, finished, running, requeued, stale, superseded)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if not waiting:
        slot = max(by_slot, default=-1) + 1
        study.enqueue_trial({}, user_attrs={"slot": slot})
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # Optuna's ask() pops the oldest WAITING trial; nobody else pops while we hold the lock.
    # Its heartbeat is recorded first: a worker killed right after ask() leaves a stale trial.
    nxt = min(waiting, key=trial_id)
    storage_of(study).set_trial_system_attr(trial_id(nxt), "heartbeat_interval", heartbeat_interval)
    if worker:
        storage_of(study).set_trial_system_attr(trial_id(nxt), "worker", worker)
    record_heartbeat(storage_of(study), trial_id(nxt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat ... used with Study.optimize"
        trial = study.ask()
    assert trial_id(trial) == trial_id(nxt), (trial_id(trial), trial_id(nxt))
    return Claim(trial, finished, running + 1, requeued, stale, superseded)


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> FrozenTrial | None:
    """Mark a running trial FAIL (with ``fail_reason``) and re-queue its slot. Hold the study
    lock. None if the trial was no longer running (another worker took it)."""
    frozen = mark_failed(study, storage_of(study).get_trial(trial_id(trial)), reason)
    if frozen is None:
        return None
    forget_cached_trials(study)
    trials = study.get_trials(deepcopy=False)
    mine = slot_of(frozen)
    if not any(slot_of(t) == mine and t.state in (*FINISHED, *ACTIVE) for t in trials):
        requeue(study, frozen)
    return frozen
