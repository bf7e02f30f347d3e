"""ChosenPoints: the slots a study names run their chosen params, every other slot its sampler's."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tuner.run.sampling import CHOSEN_ATTR, ChosenPoints, build_sampler
from tuner.run.trialqueue import claim
from tuner.store.storage import open_storage

SPACE = {"x": FloatDistribution(1e-3, 1.0, log=True),
         "act": CategoricalDistribution(("relu", "gelu"))}


@pytest.mark.parametrize("name", ["qmc", "random", "tpe"])
def test_chosen_slots_run_their_points_and_the_rest_the_samplers(tmp_path: Path, name: str
                                                                   ) -> None:
    def study(file: str, chosen: bool) -> optuna.Study:
        s = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / file}"),
                                sampler=ChosenPoints(build_sampler(name, 7, {}, SPACE)))
        if chosen:
            s.set_user_attr(CHOSEN_ATTR, {"points": {"0": {"x": 0.5, "act": "gelu"},
                                                     "3": {"x": 0.25}},
                                          "why": {"0": "a test", "3": "a test"}})
        for _ in range(5):  # through the work queue, as every worker claims a trial
            t = claim(s, 5).trial
            assert t is not None
            t.suggest_float("x", 1e-3, 1.0, log=True)
            t.suggest_categorical("act", ("relu", "gelu"))
            s.tell(t, 1.0)
        return s

    plain = [t.params for t in study("plain.db", False).trials]
    chosen = [t.params for t in study("chosen.db", True).trials]
    assert chosen[0] == {"x": 0.5, "act": "gelu"}
    assert chosen[3]["x"] == 0.25  # and its act is the sampler's (a point may name some only)
    if name == "qmc":  # slot s is the sequence's point s, with or without chosen slots
        assert chosen[3]["act"] in ("relu", "gelu")
        assert [chosen[i] for i in (1, 2, 4)] == [plain[i] for i in (1, 2, 4)]
    if name == "random":  # seeded per slot: the same draws at the other slots
        assert [chosen[i] for i in (1, 2, 4)] == [plain[i] for i in (1, 2, 4)]
    assert plain[0] != chosen[0]


def test_a_study_without_chosen_points_is_the_samplers_own() -> None:
    inner = build_sampler("qmc", 7, {}, SPACE)
    s = optuna.create_study(sampler=ChosenPoints(inner))
    for slot in range(4):
        s.enqueue_trial({}, user_attrs={"slot": slot})
        assert s.ask(SPACE).params == inner.point(slot)
