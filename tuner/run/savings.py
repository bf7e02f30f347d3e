"""What pruning saves: the same seeded trials run with the spec's pruner and without any
(tests/run/test_pruning.py, benchmarks/pruning_savings.py)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.run import runner
from tuner.spec import PrunerSpec, Spec
from tuner.store.storage import open_storage, study_name


@dataclass
class RunTotals:
    """What running a spec's studies cost, and each batch size's best trial."""

    total_steps: int  # summed over every finished trial (stopped_at_step)
    trial_seconds: float  # the trials' own wall time, summed
    wall_seconds: float  # the whole run, storage included
    best: dict[int, tuple[int | None, int | None, dict]]  # B -> (trial number, steps, params)


def unpruned(spec: Spec) -> Spec:
    """The same spec with pruning off (neither lossless nor Optuna's)."""
    return dataclasses.replace(spec, pruner=PrunerSpec(name="none", lossless=False))


def run_totals(spec: Spec, url: str, batch_sizes: tuple[int, ...], trials: int) -> RunTotals:
    """Run ``spec``'s studies into ``url`` (:func:`tuner.run.runner.run`) and total their cost."""
    started = time.perf_counter()
    points = runner.run(spec, url, batch_sizes, trials)
    wall = time.perf_counter() - started
    storage = open_storage(url)
    finished = [t for b in batch_sizes
                for t in optuna.load_study(study_name=study_name(spec, b), storage=storage)
                .get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    return RunTotals(
        total_steps=sum(t.user_attrs.get("stopped_at_step", 0) for t in finished),
        trial_seconds=sum(t.user_attrs.get("wall_seconds", 0.0) for t in finished),
        wall_seconds=wall,
        best={p.batch_size: (p.best_trial, p.best_steps, p.best_params) for p in points},
    )


def savings(spec: Spec, folder: Path, batch_sizes: tuple[int, ...], trials: int
            ) -> tuple[RunTotals, RunTotals]:
    """The same seeded trials with the spec's pruner and without any, each into a fresh SQLite
    file in ``folder``: (pruned run, unpruned run). The sampler and the trial seeds do not depend
    on outcomes, so trial n has the same params and seed in both runs."""
    pruned = run_totals(spec, f"sqlite:///{folder / 'pruned.db'}", batch_sizes, trials)
    full = run_totals(unpruned(spec), f"sqlite:///{folder / 'unpruned.db'}", batch_sizes, trials)
    return pruned, full
