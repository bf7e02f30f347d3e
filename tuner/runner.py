"""``tuner run``: create or resume a spec's batch-size studies and top each up to N trials."""

from __future__ import annotations

import time
from typing import Callable

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.curves import Point, point
from tuner.analysis.load import outcome_of, record
from tuner.objective import make_objective
from tuner.persist import store_trial
from tuner.pruning import build_pruner
from tuner.sampling import build_sampler
from tuner.space import distributions
from tuner.spec import Spec
from tuner.storage import check_studies, create_or_load, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def select_batch_sizes(spec: Spec, requested: tuple[int, ...]) -> tuple[int, ...]:
    """The spec's batch sizes, or the requested subset of them.

    Raises:
        UsageError: a requested batch size is not in the spec.
    """
    from tuner.errors import UsageError

    for b in requested:
        if b not in spec.batch_sizes:
            raise UsageError(f"--batch-size {b}: not in {spec.path}'s batch_sizes; allowed: "
                             f"{', '.join(map(str, spec.batch_sizes))}")
    return tuple(sorted(set(requested))) if requested else spec.batch_sizes


def run(spec: Spec, url: str, batch_sizes: tuple[int, ...], trials: int,
        echo: Callable[[str], None] = lambda s: None) -> list[Point]:
    """Run the studies; returns one summary point per batch size."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    check_studies(storage, spec, batch_sizes)
    echo(f"storage: {url}")
    space = distributions(spec.space)
    points = []
    for b in batch_sizes:
        sampler = build_sampler(spec.sampler.name, spec.sampler.seed, spec.sampler.options, space)
        p = spec.pruner
        study = create_or_load(storage, spec, b, sampler,
                               build_pruner(p.name, p.slack, p.lossless, p.options))
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        need = trials - done
        if need > 0:
            # Fast workloads run each trial in memory and store it whole in one transaction.
            target = _buffer(study) if spec.workload.buffered else study
            if requeued := requeue_failed(target):
                echo(f"{spec.name} B={b}: re-running {requeued} failed trial(s) with their params")
            echo(f"{spec.name} B={b}: {done} trials stored, running {need} more "
                 f"(budget {spec.max_steps(b)} steps, {len(spec.eval_steps(b))} evaluations)")
            callbacks = [_progress(b, trials, echo)]
            if target is not study:
                callbacks.insert(0, _persist(target, study, storage))
            target.optimize(make_objective(spec, b, spec.workload), n_trials=need,
                            callbacks=callbacks, gc_after_trial=False)
        else:
            echo(f"{spec.name} B={b}: {done} trials stored, nothing to run")
        points.append(point(b, [record(t) for t in study.get_trials(deepcopy=False)]))
    return points


def _buffer(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of ``study`` (trials and system attrs, e.g. the QMC position).

    Trials run there and :func:`_persist` stores each finished one in ``study`` with a single
    transaction (:func:`tuner.persist.store_trial`), instead of one per reported value.
    A killed run loses only the trial in flight. One writer per study: this is not the path for
    several workers on one storage.
    """
    mem = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="minimize",
                              sampler=study.sampler, pruner=study.pruner)
    for k, v in study._storage.get_study_system_attrs(study._study_id).items():
        mem._storage.set_study_system_attr(mem._study_id, k, v)
    mem.add_trials(study.get_trials(deepcopy=False,
                                     states=(*FINISHED, TrialState.FAIL, TrialState.WAITING)))
    return mem


def _persist(mem: optuna.Study, study: optuna.Study, storage: BaseStorage
             ) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Store each finished trial of ``mem`` in ``study`` with the study attributes the sampler
    changed (its position in the quasi-random sequence), in one transaction (tuner.persist)."""
    sid = study._study_id
    synced = dict(storage.get_study_system_attrs(sid))

    def callback(_: optuna.Study, t: FrozenTrial) -> None:
        changed = {k: v for k, v in mem._storage.get_study_system_attrs(mem._study_id).items()
                   if synced.get(k) != v}
        store_trial(storage, sid, t, changed)
        synced.update(changed)

    return callback


def requeue_failed(study: optuna.Study) -> int:
    """Enqueue the params of each FAILED trial (an exception, Ctrl-C) not yet retried.

    The quasi-random sequence already moved past them; re-running their params keeps every
    point of it in the study. The retry carries ``retry_of`` and reuses the failed trial's seed.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    n = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.params and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            n += 1
    return n


def _progress(b: int, total: int, echo: Callable[[str], None]
              ) -> Callable[[optuna.Study, FrozenTrial], None]:
    best: list[int | None] = [None]
    started = time.monotonic()

    def callback(study: optuna.Study, t: FrozenTrial) -> None:
        kind = outcome_of(t)
        a = t.user_attrs
        if kind == "reached" and (best[0] is None or a["steps_to_target"] < best[0]):
            best[0] = a["steps_to_target"]
        if best[0] is None:
            best[0] = point(b, [record(t) for t in study.get_trials(deepcopy=False)]).best_steps
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        what = (f"reached at step {a['steps_to_target']}" if kind == "reached"
                else f"{kind} at step {a.get('stopped_at_step')}")
        echo(f"  B={b} trial {done}/{total} (#{t.number}): {what:28s} best so far "
             f"{best[0] if best[0] is not None else '-':>6}  [{time.monotonic() - started:.0f}s]")

    return callback
