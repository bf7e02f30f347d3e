"""The work queue of one batch-size study: exactly N finished trials, whichever workers run them.

Every trial is a *slot* s = 0, 1, 2, ... (user attr ``slot``). The sampler derives the trial's
point from its slot (the s-th point of the quasi-random sequence; random and TPE reseed per slot)
and the objective derives its seed from it, so a slot's params and seed do not depend on which
worker runs it, or when. A failed slot (an exception, Ctrl-C, SIGTERM, or a worker killed and
caught by the heartbeat) is re-queued as a WAITING copy with the same params and slot by
Optuna's ``RetryHeartbeatStaleTrialCallback``; it counts once it finishes.

:func:`claim` is the only way a worker gets a trial, and it runs under the study lock
(:mod:`tuner.locking`):

1. fail stale trials (their heartbeat stopped; the storage's callback re-queues them);
2. re-queue FAIL trials that have no retry yet;
3. if finished + running >= N, claim nothing (done, or the rest is running elsewhere);
4. pop the oldest WAITING trial (a retry), else enqueue the next slot and pop it.

So no worker starts a trial beyond N, no two workers get the same slot, and a slot whose
worker died is run again by another.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    #: Re-queues a failed trial as a WAITING copy (same params and user attrs, incl. the slot).
    RETRY = RetryHeartbeatStaleTrialCallback()


def retried_number(t: FrozenTrial) -> int | None:
    """The number of the failed trial that ``t`` re-runs, or None for an original trial."""
    n = t.system_attrs.get("failed_trial")
    return n if n is not None else t.user_attrs.get("retry_of")  # retries made by tuner 0.1.0


def slot_of(t: FrozenTrial) -> int:
    """The trial's slot (its trial number in studies that predate slots)."""
    return int(t.user_attrs.get("slot", t.number))


def requeue(study: optuna.Study, failed: FrozenTrial) -> None:
    """Enqueue a WAITING copy of a FAIL trial: same params, slot and seed."""
    t = copy.copy(failed)
    t.user_attrs = {**failed.user_attrs, "slot": slot_of(failed)}
    t.system_attrs = {k: v for k, v in failed.system_attrs.items() if k != "fail_reason"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RETRY(study, t)


def requeue_failed(study: optuna.Study) -> int:
    """Re-queue every FAIL trial that has no retry yet; returns how many."""
    trials = study.get_trials(deepcopy=False)
    retried = {retried_number(t) for t in trials}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    for t in failed:
        requeue(study, t)
    return len(failed)


@dataclass
class Claim:
    """What :func:`claim` found: a trial to run (or None) and the study's counts."""

    trial: optuna.Trial | None
    finished: int
    running: int
    requeued: int


def claim(study: optuna.Study, n_trials: int) -> Claim:
    """The next trial of ``study`` to run, as in the module docstring. Hold the study lock."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)
    requeued = requeue_failed(study)
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if finished + running >= n_trials:
        return Claim(None, finished, running, requeued)
    if not any(t.state == TrialState.WAITING for t in trials):
        slot = sum(retried_number(t) is None for t in trials)
        study.enqueue_trial({}, user_attrs={"slot": slot})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat ... used with Study.optimize"
        trial = study.ask()  # pops the oldest WAITING trial: nobody else pops while we hold the lock
    if is_heartbeat_enabled(study._storage):
        study._storage.record_heartbeat(trial._trial_id)  # stale from now on if this worker dies
    return Claim(trial, finished, running + 1, requeued)


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> FrozenTrial:
    """Mark a running trial FAIL (with ``fail_reason``) and re-queue it. Hold the study lock."""
    study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", reason)
    frozen = study.tell(trial, state=TrialState.FAIL)
    requeue(study, frozen)
    return frozen
