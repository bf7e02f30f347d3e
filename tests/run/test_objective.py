"""The objective's mapping (tuner.run.objective): a workload's TrialResult -> the stored trial's
state, value, constraint and user attrs, for each outcome (reached, missed, diverged, pruned).

The workload is a real plug-in (a Workload subclass, registered by name) whose ``run`` reports
a given curve and answers a given TrialResult; the trials run through ``tuner run``'s own path
(runner.run: claim, heartbeat, objective, tell) into a real SQLite file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import optuna
import pytest
from optuna.trial import TrialState

from tuner.core.trial import Reporter, TrialRequest, TrialResult
from tuner.run import runner, specs as spec_mod
from tuner.run.objective import trial_seed
from tuner.store.source import outcome_of, slot_of
from tuner.workload import registry
from tuner.workload.base import Workload


class Canned(Workload):
    """Answers the trials of slots 0, 1, ... with ``ANSWERS`` in turn, reporting their curves."""

    name = "canned_for_objective_test"
    metrics: ClassVar[dict[str, str]] = {"error": "minimize"}
    ANSWERS: ClassVar[list[TrialResult]] = []
    requests: ClassVar[list[TrialRequest]] = []
    said_stop: ClassVar[list[list[bool]]] = []

    def num_train_examples(self) -> int:
        return 1000

    def run(self, request: TrialRequest, report: Reporter) -> TrialResult:
        result = self.ANSWERS[len(self.requests)]
        self.requests.append(request)
        self.said_stop.append([report(step, m) for step, m in result.curve])
        return result


SPEC = """\
seed = 5
batch_sizes = [8]
trials = 4

[workload]
name = "canned_for_objective_test"

[optimizer]
name = "sgd"
weight_decay = 0.01

[search_space]
learning_rate = { low = 0.01, high = 1.0, log = true }

[target]
metric = "error"
value = 0.1

[budget]
max_steps = 100

[eval]
first_step = 10
relative = 0.0
min_interval = 10

[pruner]
name = "none"
lossless = false
"""


def result(reached: bool = False, diverged: bool = False, pruned: bool = False,
           stop: int = 100, errors: tuple[float, ...] = (0.5, 0.3)) -> TrialResult:
    curve = [(10 * (i + 1), {"error": e, "loss": 2 * e}) for i, e in enumerate(errors)]
    return TrialResult(
        reached=reached, steps_to_target=stop if reached else None, stopped_at_step=stop,
        diverged=diverged, pruned=pruned, examples_seen=8 * stop, wall_seconds=2.0,
        best_metric=min(errors), curve=curve, steps_after=stop - 10 if reached else None,
        eval_seconds=0.5, device="cpu")


# slot -> (what the workload answers, the outcome the objective must store)
CASES = [
    (result(reached=True, stop=30, errors=(0.5, 0.3, 0.05)), "reached"),
    (result(stop=100, errors=(0.5, 0.3, 0.2)), "missed"),
    (result(diverged=True, stop=20, errors=(0.5, 9.0)), "diverged"),
    (result(pruned=True, stop=20, errors=(0.5, 0.4)), "pruned"),
]


@pytest.fixture
def canned() -> Iterator[type[Canned]]:
    registry.register(Canned)
    Canned.ANSWERS[:] = [r for r, _ in CASES]
    Canned.requests.clear()
    Canned.said_stop.clear()
    try:
        yield Canned
    finally:
        registry._REGISTERED.pop(Canned.name, None)


def test_each_outcome_is_stored_as_the_contract_says(canned: type[Canned], tmp_path: Path
                                                     ) -> None:
    spec = spec_mod.parse(tomllib.loads(SPEC), str(tmp_path / "canned.toml"), SPEC)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    runner.run(spec, url, (8,), 4)
    [s] = optuna.get_all_study_summaries(url)
    trials = sorted(optuna.load_study(study_name=s.study_name, storage=url).get_trials(),
                    key=slot_of)
    assert [slot_of(t) for t in trials] == [0, 1, 2, 3]  # one trial per slot, none re-run

    # what the workload was asked
    for slot, (t, req) in enumerate(zip(trials, canned.requests)):
        assert req.batch_size == 8 and req.max_steps == 100 and req.optimizer == "sgd"
        assert req.eval_steps == tuple(range(10, 101, 10))
        assert req.params == {"weight_decay": 0.01, "learning_rate": t.params["learning_rate"]}
        assert req.seed == t.user_attrs["seed"] == trial_seed(5, 8, slot)
    # with no pruner, report never says stop
    assert canned.said_stop == [[False] * len(r.curve) for r, _ in CASES]

    for t, (r, kind) in zip(trials, CASES):
        a = t.user_attrs
        assert a["outcome"] == kind == outcome_of(t)  # analysis reads it back the same way
        assert a["reached"] is r.reached and a["diverged"] is r.diverged
        assert a["steps_to_target"] == r.steps_to_target
        assert a["steps_to_target_after"] == r.steps_after
        assert a["stopped_at_step"] == r.stopped_at_step
        assert a["examples_seen"] == r.examples_seen and a["best_metric"] == r.best_metric
        assert a["wall_seconds"] == 2.0 and a["eval_seconds"] == 0.5 and a["eval_share"] == 0.25
        assert a["final_metrics"] == r.curve[-1][1]
        assert a["max_steps"] == 100 and a["device"] == "cpu" and a["devices"] == 1
        # the learning curve in the target metric, at global steps
        assert t.intermediate_values == {step: m["error"] for step, m in r.curve}
        # feasible only when reached, so a missed trial's budget value is never best_trial
        assert t.constraints == {"reached": 0.0 if r.reached else 1.0}
        if kind == "pruned":
            assert t.state == TrialState.PRUNED and t.value is None
        else:
            assert t.state == TrialState.COMPLETE
            assert t.value == (r.steps_to_target if r.reached else 100)
    [reached] = [t for t in trials if t.user_attrs["reached"]]
    assert reached.value == 30
