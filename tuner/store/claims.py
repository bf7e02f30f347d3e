"""Block claims: the slots a buffered worker is running in memory, recorded in their study.

A buffered worker (:mod:`tuner.run.runner`: NQM trials take milliseconds, so they run in an
in-memory study and each is stored whole when it finishes, :mod:`tuner.store.persist`) claims a
*block* of slots at once and runs them without holding the study lock, so several workers share
one study. The claim is one study system attr, ``tuner:claim:<token>`` =
``{"worker": "<host>:<pid>", "slots": [...]}``, where ``token`` names the worker's liveness lock
(:class:`tuner.store.locking.Liveness`). It is deleted when the block is done: a buffered study
holds only finished (and failed) trials, and a killed worker leaves no trial behind.

:func:`claim_block` runs under the study lock, in one transaction that first locks the study's
row (PostgreSQL) or the database (SQLite), and reads

1. the study's slots (:mod:`tuner.run.trialqueue`): *done* (a COMPLETE or PRUNED trial), *lost*
   (FAIL trials only: re-run with the last one's params and seed), *active* (a RUNNING or
   WAITING trial, which buffered workers never leave: counted as busy);
2. every claim: the slots of a worker that holds its liveness lock are *busy*; the claim of a
   dead one (killed: the kernel or the server released its lock) is deleted, its slots free;

then claims the lowest free slots, :func:`block_size` of the ``N - done - busy`` left.

:class:`Claimed` is checked inside the transaction that stores a finished trial, after that
transaction has locked the study's row or the database: the trial is stored only while its slot
is still in this worker's claim. A worker judged dead meanwhile (a storage outage took its
liveness lock) finds its claim gone and stores nothing; the worker that judged it dead read the
slots done so far under the same lock. So no slot is ever finished twice, and none is lost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from tuner.store.compat import models, trial_id
from tuner.store.locking import Liveness
from tuner.store.source import slot_of

#: Study system attr key prefix of a claim (the worker's liveness token follows).
PREFIX = "tuner:claim:"
#: A block is this fraction (1/SHARE) of the slots left to run, at most MAX_BLOCK.
SHARE = 4
MAX_BLOCK = 32
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class ClaimLost(Exception):
    """This worker's claim is gone: another worker judged it dead (its liveness lock was lost in
    a storage outage) and runs its slots; the trial in hand was not stored."""


@dataclass
class Block:
    """What :func:`claim_block` found and claimed (counts in slots)."""

    slots: list[int]  # claimed, lowest first; empty: nothing left to claim
    finished: int
    busy: int  # run by other live workers, or RUNNING/WAITING trials
    lost: dict[int, int] = field(default_factory=dict)  # claimed slot -> its last FAIL trial's id
    dropped: list[str] = field(default_factory=list)  # dead workers whose claims were deleted
    active: int = 0  # slots with a RUNNING or WAITING trial (not finished)
    best: int | None = None  # fewest steps to the target of a COMPLETE trial that reached it


def block_size(room: int) -> int:
    """How many slots to claim when ``room`` are left to run: a quarter of them, 1 to
    :data:`MAX_BLOCK`. Workers take turns claiming, so the blocks shrink as the study fills
    and workers finish it within one small block of each other."""
    return max(1, min(MAX_BLOCK, math.ceil(room / SHARE)))


def plan(trials: list[tuple[int, int, TrialState, int | None]],
         claims: dict[str, dict[str, Any]], n: int, me: str, alive: Callable[[str], bool]
         ) -> tuple[Block, list[str]]:
    """The block to claim for worker ``me`` (a liveness token) in a study of ``n`` slots.

    ``trials``: (slot, trial id, state, steps to the target if it reached it) of every trial;
    ``claims``: token -> claim. Returns the block and the tokens of the claims to delete (dead
    workers', and ``me``'s own leftover).
    """
    done: set[int] = set()
    failed: dict[int, int] = {}
    active: set[int] = set()
    reached = [steps for _, _, state, steps in trials
               if state == TrialState.COMPLETE and steps is not None]
    for slot, tid, state, _ in sorted(trials, key=lambda x: x[1]):
        if state in FINISHED:
            done.add(slot)
        elif state == TrialState.FAIL:
            failed[slot] = tid  # the last one
        else:
            active.add(slot)
    active -= done
    busy = set(active)
    delete, dropped = [], []
    for token, claim in claims.items():
        if not claim.get("slots"):
            continue
        if token != me and alive(token):
            busy |= set(claim["slots"])
        else:
            delete.append(token)
            if token != me:
                dropped.append(str(claim.get("worker", "?")))
    busy -= done
    room = n - len(done) - len(busy)
    slots: list[int] = []
    s = 0
    while len(slots) < (block_size(room) if room > 0 else 0):
        if s not in done and s not in busy:
            slots.append(s)
        s += 1
    return Block(slots, len(done), len(busy), {s: failed[s] for s in slots if s in failed},
                 dropped, len(active), min(reached, default=None)), delete


def _steps(attrs: dict[str, Any]) -> int | None:
    """A trial's steps to the target if it reached it (user attrs ``reached``,
    ``steps_to_target``), else None."""
    steps = attrs.get("steps_to_target")
    ok = attrs.get("reached") and isinstance(steps, int) and not isinstance(steps, bool)
    return steps if ok else None


#: The user attrs :func:`claim_block` reads: the slot, and whether and when it reached.
READ = ("slot", "retry_of", "reached", "steps_to_target")


def _rows(conn: Any, study_id: int) -> list[tuple[int, int, TrialState, int | None]]:
    """(slot, trial id, state, steps to the target or None) of every trial of the study."""
    _, trials, user_attrs, _ = _tables()
    rows = conn.execute(
        sa.select(trials.c.trial_id, trials.c.number, trials.c.state, user_attrs.c.key,
                  user_attrs.c.value_json)
        .select_from(trials.outerjoin(user_attrs, (user_attrs.c.trial_id == trials.c.trial_id)
                                      & user_attrs.c.key.in_(READ)))
        .where(trials.c.study_id == study_id)).all()
    seen: dict[int, tuple[int, TrialState, dict[str, Any]]] = {}
    for tid, number, state, key, value in rows:
        a = seen.setdefault(tid, (number, state, {}))[2]
        if key is not None:
            a[key] = json.loads(value)
    return [(int(a.get("slot", a.get("retry_of", number))), tid, state, _steps(a))  # slot_of
            for tid, (number, state, a) in seen.items()]


def finished_count(storage: BaseStorage, study_id: int) -> int:
    """How many slots of the study have a finished trial (read without loading the trials)."""
    if not isinstance(storage, RDBStorage):
        return len({slot_of(t) for t in storage.get_all_trials(study_id, deepcopy=False,
                                                               states=FINISHED)})

    def read() -> int:
        with storage.engine.connect() as conn:
            return len({slot for slot, _, state, _ in _rows(conn, study_id)
                        if state in FINISHED})

    return _retrying(storage, read)


def _tables() -> tuple[Any, Any, Any, Any]:
    m = models()
    return (m.StudyModel.__table__, m.TrialModel.__table__, m.TrialUserAttributeModel.__table__,
            m.StudySystemAttributeModel.__table__)


def _retrying(storage: BaseStorage, fn: Callable[[], Any]) -> Any:
    retrying = getattr(storage, "retrying", None)  # tuner.store.retry.RetryingStorage
    return retrying(fn) if retrying is not None else fn()


def claim_block(storage: BaseStorage, study_id: int, n: int, live: Liveness, worker: str
                ) -> Block:
    """Claim the next block of slots of study ``study_id`` for this worker (see the module
    docstring). Hold the study lock.

    Raises:
        tuner.store.locking.LockLost: this worker's liveness lock is gone (an outage); call
            ``live.ensure()`` and claim again.
    """
    if not isinstance(storage, RDBStorage):  # Optuna's in-memory storage: one process
        return _claim_api(storage, study_id, n, live, worker)
    return _retrying(storage, lambda: _claim_rdb(storage, study_id, n, live, worker))


def _claim_rdb(storage: RDBStorage, study_id: int, n: int, live: Liveness, worker: str
               ) -> Block:
    studies, _, _, attrs = _tables()
    with storage.engine.begin() as conn:
        # lock the study's row (PostgreSQL; a store locks it too) or the database (SQLite)
        conn.execute(studies.update().where(studies.c.study_id == study_id)
                     .values(study_name=studies.c.study_name))
        live.check(conn)
        found = _rows(conn, study_id)
        claims = {key[len(PREFIX):]: json.loads(value) for key, value in conn.execute(
            sa.select(attrs.c.key, attrs.c.value_json).where(
                (attrs.c.study_id == study_id) & attrs.c.key.startswith(PREFIX, autoescape=True)))}
        block, delete = plan(found, claims, n, live.token, lambda t: live.alive(t, conn))
        if delete:
            conn.execute(attrs.delete().where((attrs.c.study_id == study_id) & attrs.c.key.in_(
                [PREFIX + t for t in delete])))
        if block.slots:
            conn.execute(attrs.insert().values(study_id=study_id, key=PREFIX + live.token,
                                               value_json=json.dumps({"worker": worker,
                                                                      "slots": block.slots})))
    return block


def _claim_api(storage: BaseStorage, study_id: int, n: int, live: Liveness, worker: str
               ) -> Block:
    found = [(slot_of(t), trial_id(t), t.state, _steps(t.user_attrs))
             for t in storage.get_all_trials(study_id, deepcopy=False)]
    claims = {k[len(PREFIX):]: v for k, v in storage.get_study_system_attrs(study_id).items()
              if k.startswith(PREFIX)}
    block, delete = plan(found, claims, n, live.token, live.alive)
    for t in delete:
        storage.set_study_system_attr(study_id, PREFIX + t, {"slots": []})
    if block.slots:
        storage.set_study_system_attr(study_id, PREFIX + live.token,
                                      {"worker": worker, "slots": block.slots})
    return block


def release(storage: BaseStorage, study_id: int, live: Liveness) -> None:
    """Delete this worker's claim in the study (nothing if it has none)."""
    if not isinstance(storage, RDBStorage):
        storage.set_study_system_attr(study_id, PREFIX + live.token, {"slots": []})
        return
    _, _, _, attrs = _tables()

    def delete() -> None:
        with storage.engine.begin() as conn:
            conn.execute(attrs.delete().where((attrs.c.study_id == study_id)
                                              & (attrs.c.key == PREFIX + live.token)))

    _retrying(storage, delete)


@dataclass(frozen=True)
class Claimed:
    """Slots of this worker's claim: :func:`tuner.store.persist.store_trials` calls
    :meth:`check` inside the transaction that stores their trials."""

    study_id: int
    token: str
    slots: tuple[int, ...]

    def check(self, conn: Any) -> None:
        """Raise :class:`ClaimLost` unless every slot is still in this worker's claim."""
        _, _, _, attrs = _tables()
        value = conn.execute(sa.select(attrs.c.value_json).where(
            (attrs.c.study_id == self.study_id) & (attrs.c.key == PREFIX + self.token))
        ).scalar_one_or_none()
        mine = set(json.loads(value).get("slots", ())) if value is not None else set()
        if lost := sorted(set(self.slots) - mine):
            raise ClaimLost(f"slot(s) {', '.join(map(str, lost))} no longer claimed by this "
                            "worker: another worker found its liveness lock gone and runs them")
