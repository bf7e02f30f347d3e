"""Block claims of buffered workers (tuner.store.claims): which slots a claim takes, and that a
trial is stored only while its slot is still claimed, on a SQLite file and on PostgreSQL.

Two liveness locks in this process stand for two workers; a "dead" worker is one whose lock
was released (as the kernel or the server does when it dies).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner.store.claims import (PREFIX, ClaimLost, Claimed, block_size, claim_block,
                                finished_count, plan, release)
from tuner.store.compat import study_id
from tuner.store.locking import Liveness
from tuner.store.persist import store_trial, store_trials
from tuner.store.storage import open_storage


def finished(slot: int, state: TrialState = TrialState.COMPLETE, steps: int | None = 50
             ) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, value=None if state != TrialState.COMPLETE else 1.0,
                     params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                     user_attrs={"slot": slot, "reached": steps is not None,
                                 "steps_to_target": steps})
    t.datetime_start = datetime.datetime(2026, 12, 2)
    t.datetime_complete = t.datetime_start + datetime.timedelta(seconds=1)
    return t


def test_block_size_is_a_quarter_of_what_is_left_bounded() -> None:
    assert [block_size(r) for r in (1, 2, 4, 5, 12, 100, 1000)] == [1, 1, 1, 2, 3, 25, 32]


def test_plan_takes_the_lowest_free_slots_and_drops_dead_claims() -> None:
    C, F, R = TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING
    trials = [(0, 10, C, 40), (1, 11, F, None), (2, 12, C, None), (3, 13, R, None),
              (1, 14, F, None), (6, 15, C, 30)]
    claims = {"live": {"worker": "h:1", "slots": [4, 5]},
              "dead": {"worker": "h:2", "slots": [7, 8]},
              "me": {"worker": "h:3", "slots": [9]},  # a leftover of this worker's own
              "empty": {"slots": []}}
    block, delete = plan(trials, claims, 20, "me", lambda t: t == "live")
    # done 0, 2, 6; busy 3 (RUNNING), 4, 5 (a live claim); left 20 - 3 - 3 = 14: claims 4
    assert block.slots == [1, 7, 8, 9]
    assert (block.finished, block.busy, block.active) == (3, 3, 1)
    assert block.lost == {1: 14}  # re-run with its last failed trial's params
    assert sorted(delete) == ["dead", "me"] and block.dropped == ["h:2"]
    assert block.best == 30
    full, _ = plan(trials, claims, 6, "me", lambda t: t == "live")  # 3 done + 3 busy
    assert full.slots == [] and full.finished == 3


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'claims.db'}"
    return request.getfixturevalue("postgres_url")


def test_a_taken_claim_stores_nothing_and_slots_are_never_finished_twice(url: str) -> None:
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    sid = study_id(study)
    a, b = Liveness(url), Liveness(url)
    a.acquire()
    b.acquire()
    try:
        first = claim_block(storage, sid, 12, a, "h:a")
        assert first.slots == [0, 1, 2]
        second = claim_block(storage, sid, 12, b, "h:b")
        assert second.slots == [3, 4, 5]  # a quarter of the 9 left; a's are busy
        store_trial(storage, sid, finished(0), {}, Claimed(sid, a.token, (0,)))
        with pytest.raises(ClaimLost):  # not a's slot
            store_trial(storage, sid, finished(3), {}, Claimed(sid, a.token, (3,)))
        assert finished_count(storage, sid) == 1

        a.release()  # a "dies" with slots 1 and 2 claimed; b drops its claim and takes them
        release(storage, sid, b)
        third = claim_block(storage, sid, 12, b, "h:b")
        assert third.dropped == ["h:a"] and third.slots[:2] == [1, 2]
        with pytest.raises(ClaimLost, match="slot.s. 1, 2 no longer claimed"):
            # a, back, finds its claim gone: stores nothing of what it ran
            store_trials(storage, sid, [finished(1), finished(2)], {},
                         Claimed(sid, a.token, (1, 2)))
        with pytest.raises(ClaimLost, match="slot.s. 9 no longer"):  # all or nothing
            store_trials(storage, sid, [finished(2), finished(9)], {},
                         Claimed(sid, b.token, (2, 9)))
        store_trials(storage, sid, [finished(1), finished(2)], {}, Claimed(sid, b.token, (1, 2)))
        release(storage, sid, b)
        trials = study.get_trials()
        assert sorted(t.user_attrs["slot"] for t in trials) == [0, 1, 2]
        assert [t.number for t in trials] == [0, 1, 2]
        assert not [k for k in storage.get_study_system_attrs(sid) if k.startswith(PREFIX)]
    finally:
        for live in (a, b):
            live.release()
