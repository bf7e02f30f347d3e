"""``tuner confirm``: the best configurations of each batch size re-run with fresh seeds.

The best-of-N steps over noisy trials is an optimistic draw; re-running the K best
configurations with S new seeds measures how optimistic, and what the seed noise of
steps-to-target is. Per batch size, one *confirmation study* ``NAME.B<b>.seed<s>.confirm`` with
the spec's study attrs under the spec name ``NAME.confirm`` (so ``tuner curve NAME.confirm``
reads it like any spec) plus ``confirms = {spec, study, top, seeds, configs}``. Its trials
are slots like any study's (:mod:`tuner.run.trialqueue`): configuration k, seed j is slot
``SLOT_BASE + k * MAX_SEEDS + j``, enqueued with the configuration's params, so its trial seed
(from the slot) is fresh, a killed run resumes where it stopped and re-runs a lost slot with the
same params and seed, and several workers can share the work. No pruning: every confirmation
trial runs to the target or its budget. Trained workloads on one device also measure, where
the target is reached, the test split (the only place it is evaluated) and the sharpness
(:mod:`tuner.train.sharpness`; for a LightningModule :mod:`tuner.train.fit_at_target`), stored
as the trial attr ``at_target``.

The configurations are fixed when a batch size is first confirmed (stored in ``confirms``); a
later run with a larger ``--top`` adds the next best, and a larger ``--seeds`` more seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import optuna

from tuner.analysis.records import SpecStudies, TrialRecord
from tuner.core.errors import UsageError
from tuner.run import runner
from tuner.run.objective import Objective
from tuner.run.trialqueue import slots
from tuner.spec import Spec
from tuner.store.locking import study_lock
from tuner.store.storage import open_storage, study_attrs, study_name, write_study_attrs

SLOT_BASE = 1_000_000
MAX_SEEDS = 1000
SUFFIX = ".confirm"


def confirm_name(spec_name: str) -> str:
    """The spec name confirmation studies are stored under."""
    return spec_name + SUFFIX


def top_configs(trials: list[TrialRecord], k: int) -> list[dict[str, Any]]:
    """The ``k`` reached trials with the fewest steps (ties: the lower number), as
    ``{trial, slot, steps, params}``."""
    reached = sorted((t for t in trials if t.outcome == "reached"),
                     key=lambda t: (t.steps_to_target, t.number))
    return [{"trial": t.number, "slot": t.slot, "steps": t.steps_to_target, "params": t.params}
            for t in reached[:k]]


def plan(stored: SpecStudies, top: int) -> dict[int, list[dict[str, Any]]]:
    """Batch size -> the configurations to confirm (batch sizes without a reached trial left
    out)."""
    out = {st.batch_size: top_configs(st.trials, top) for st in stored.studies}
    return {b: c for b, c in out.items() if c}


def _configs(study: optuna.Study, fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's stored configurations, extended with the next best of ``fresh``."""
    have = list(study.user_attrs.get("confirms", {}).get("configs", []))
    known = {c["trial"] for c in have}
    for c in fresh:
        if len(have) >= len(fresh):
            break
        if c["trial"] not in known:
            have.append(c)
    return have


def prepare(spec: Spec, url: str, stored: SpecStudies, top: int, seeds: int,
            heartbeat: int) -> tuple[Any, dict[int, tuple[optuna.Study, int]]]:
    """Create (or extend) the confirmation studies and enqueue every missing slot; the storage,
    and per batch size the study and the trial count it must reach (configurations x seeds)."""
    if seeds > MAX_SEEDS:
        raise UsageError(f"--seeds {seeds}: allowed: at most {MAX_SEEDS}")
    todo = plan(stored, top)
    if not todo:
        raise UsageError(f"{spec.name}: no batch size has a trial that reached the target: "
                         "nothing to confirm")
    storage = open_storage(url, heartbeat)
    studies: dict[int, tuple[optuna.Study, int]] = {}
    for b, fresh in todo.items():
        name = study_name(spec, b) + SUFFIX
        with study_lock(url, name):
            study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                        sampler=optuna.samplers.RandomSampler(spec.seed),
                                        pruner=optuna.pruners.NopPruner(), load_if_exists=True)
            configs = _configs(study, fresh)
            attrs = study_attrs(spec, b)
            attrs["spec_name"] = confirm_name(spec.name)
            attrs["confirms"] = {"spec": spec.name, "study": study_name(spec, b), "top": top,
                                 "seeds": max(seeds, study.user_attrs.get("confirms", {})
                                              .get("seeds", 0)), "configs": configs,
                                 "slot_base": SLOT_BASE, "max_seeds": MAX_SEEDS}
            attrs["pruner"] = {"name": "none", "slack": None, "lossless": False, "options": {}}
            write_study_attrs(study, attrs)
            existing = slots(study.get_trials(deepcopy=False))
            for k, c in enumerate(configs[:top]):
                for j in range(seeds):
                    slot = SLOT_BASE + k * MAX_SEEDS + j
                    if slot not in existing:
                        study.enqueue_trial(c["params"], user_attrs={
                            "slot": slot, "confirms_trial": c["trial"], "config": k,
                            "seed_index": j}, skip_if_exists=False)
            studies[b] = (study, len(configs[:top]) * seeds)
    return storage, studies


def run(spec: Spec, url: str, stored: SpecStudies, top: int, seeds: int,
        echo: Callable[[str], None] = lambda s: None, heartbeat: int = runner.HEARTBEAT
        ) -> dict[int, optuna.Study]:
    """Run every confirmation trial of the spec's batch sizes (see the module doc)."""
    storage, studies = prepare(spec, url, stored, top, seeds, heartbeat)
    with runner.stop_cleanly():
        for b, (study, n) in studies.items():
            echo(f"{spec.name} B={b}: confirming the best {n // seeds} configuration(s) with "
                 f"{seeds} fresh seed(s) each ({study.study_name})")
            objective = Objective(spec, b, spec.workload, measure=True)
            lock = partial(study_lock, url, study.study_name)
            runner.drain(study, n, objective, lock, [runner.progress(b, n, echo)], echo,
                         heartbeat)
    return {b: s for b, (s, _) in studies.items()}
