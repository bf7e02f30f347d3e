"""``tuner run SPEC --adaptive``: measure the batch sizes that move B_crit, stop when it is known.

The rules are :mod:`tuner.analysis.adaptive`'s; this module runs them against the storage: each
batch size's study is topped up round by round with :func:`tuner.run.runner.run` (so the slot
queue's guarantees hold: exact trial counts, crash recovery, resuming a stopped run), and what
is stored is read back after every round, so a resumed run re-plans from the stored trials.
The warm starts and compass steps are points chosen for the study's next slots (:func:`choose`:
the study attr ``chosen_points``, which :class:`tuner.run.sampling.ChosenPoints` reads), written
before those slots run and never changed after, so they too replay on a resumed run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuner.analysis.adaptive import (Plan, Progress, Step, around, first_batch_sizes,
                                     interval_span, next_batch_size, stop_reason, study_stop,
                                     trained_examples, warm_start)
from tuner.analysis.adequacy import assess
from tuner.analysis.fit import Fit, fit_with_bootstrap
from tuner.analysis.records import TrialRecord, best
from tuner.core.errors import UsageError
from tuner.run import runner
from tuner.run.sampling import CHOSEN_ATTR
from tuner.spec import Spec
from tuner.store.locking import study_lock
from tuner.store.rows import open_reader
from tuner.store.storage import study_name
from tuner.store.source import load_spec


@dataclass
class Result:
    """An adaptive measurement's outcome."""

    progress: Progress
    trials: dict[int, list[TrialRecord]]  # of the measured batch sizes
    fit: Fit | None
    reason: str  # why it stopped


def stored_trials(spec: Spec, url: str) -> dict[int, list[TrialRecord]]:
    """The stored trials of the spec's studies, by batch size."""
    reader = open_reader(url)
    try:
        return {s.batch_size: s.trials for s in load_spec(reader, spec, curves=False).studies}
    finally:
        reader.engine.dispose()


def first_slots(trials: list[TrialRecord], n: int) -> list[TrialRecord]:
    """The first ``n`` finished trials in the study's sequence (slot, else trial number): what
    the study held after the round that brought it to ``n``."""
    done = [t for t in trials if t.finished]
    return sorted(done, key=lambda t: (t.slot is None, t.slot or 0, t.number))[:n]


def choose(spec: Spec, url: str, b: int, first: int, points: list[dict[str, Any]], why: str
           ) -> list[dict[str, Any]]:
    """Make ``points`` the params of B's slots ``first``, ``first + 1``, ...
    (:class:`tuner.run.sampling.ChosenPoints`), for each slot that has neither a point nor a
    trial yet (a resumed run keeps what it chose before); the points those slots have."""
    storage, studies = runner.prepare(spec, url, (b,))
    try:
        study = studies[b]
        with study_lock(url, study_name(spec, b)):
            attr = study.user_attrs.get(CHOSEN_ATTR) or {"points": {}, "why": {}}
            used = {t.user_attrs.get("slot") for t in study.get_trials(deepcopy=False)}
            changed = False
            for slot, point in enumerate(points, first):
                if str(slot) not in attr["points"] and slot not in used:
                    attr["points"][str(slot)], attr["why"][str(slot)] = point, why
                    changed = True
            if changed:
                study.set_user_attr(CHOSEN_ATTR, attr)
        return [attr["points"].get(str(s), {}) for s in range(first, first + len(points))]
    finally:
        storage.engine.dispose()


def _shown(point: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                     for k, v in point.items())


def measure(spec: Spec, url: str, b: int, plan: Plan, cap: int, spent: float,
            say: Callable[[str], None], echo: Callable[[str], None], heartbeat: int,
            warm: tuple[dict[str, Any], str] | None = None) -> list[TrialRecord]:
    """Top up B's study in rounds of ``plan.chunk`` trials until :func:`study_stop` stops it
    (at most ``cap`` trials; ``spent``: examples the measurement trained before this batch
    size, against the plan's budget); its stored trials. ``warm``: the params predicted for
    B and how; its first trials are those and the points :func:`around` them. Once the rounds
    stop adequate or on a plateau, :func:`compass` steps around the best (with
    ``plan.warm_start``). Each round is judged on the study's first trials
    (:func:`first_slots`), so a resumed run replays the rounds already stored and adds trials
    only where the run stopped. ``say`` prints the plan, ``echo`` the runner's progress."""
    n, bests = 0, []
    space = spec.space_by_name()
    try:
        trials = stored_trials(spec, url).get(b, [])
    except UsageError:  # nothing stored yet (the runner refuses a changed spec itself)
        trials = []
    if warm is not None:
        points = choose(spec, url, b, 0, [warm[0], *around(warm[0], space, plan.step)],
                        f"predicted: {warm[1]}")
        if points[0]:
            say(f"  B = {b}: first {len(points)} trials around {_shown(points[0])} (predicted: "
                f"{warm[1]}; then each numeric parameter alone {plan.step:g} octave(s) down "
                "and up)")
        else:
            say(f"  B = {b}: no warm start (the study had trials before this run)")

    def left(trials: list[TrialRecord]) -> float | None:
        return None if plan.max_examples is None else \
            plan.max_examples - spent - trained_examples(b, trials)

    while True:
        n = min(n + plan.chunk, cap)
        if len(first_slots(trials, n)) < n:
            runner.run(spec, url, (b,), n, _quieter(echo), heartbeat, summary=False)
            trials = stored_trials(spec, url)[b]
        judged = first_slots(trials, n)
        a = assess(b, judged, space, plan.rule)
        why = study_stop(plan, a, bests, len(judged), cap, left(trials))
        if why is None and len(judged) < n == cap:
            # the runner has the cap's slots finished, but some lack their results (stopped
            # while being stored): another round would add nothing
            why = f"{len(judged)} of the {cap} finished trials have results"
        if why is not None:
            if plan.warm_start and a.best_steps is not None and len(judged) == n and \
                    why.startswith(("adequate", "a plateau")):
                trials, n, steps = compass(spec, url, b, n, trials, plan, cap, left, echo,
                                           heartbeat)
                found = best(first_slots(trials, n))
                assert found is not None
                say(f"  B = {b}: {n} trials, best {found.steps_to_target} steps ({why}; then "
                    f"{steps} compass step(s) around the best)")
            else:
                say(f"  B = {b}: {len(judged)} trials, best "
                    f"{a.best_steps if a.best_steps is not None else '-'} steps ({why})")
            return trials
        bests.append(a.best_steps)


def compass(spec: Spec, url: str, b: int, n: int, trials: list[TrialRecord], plan: Plan,
            cap: int, left: Callable[[list[TrialRecord]], float | None] = lambda t: None,
            echo: Callable[[str], None] = lambda s: None, heartbeat: int = runner.HEARTBEAT
            ) -> tuple[list[TrialRecord], int, int]:
    """Compass (pattern) search around the best of B's first ``n`` trials (``trials``: the
    stored ones), each step :func:`tuner.analysis.adaptive.around` the best so far, the points
    not tried yet, at the study's next slots (:func:`choose`): ``plan.step`` octaves first,
    halved after a step that improves the best by less than ``plan.plateau`` (or finds every
    point tried), until a step of ``plan.step / 4`` gains nothing, the next step would pass
    ``cap`` trials, or ``left`` (examples the budget has left, None: no budget) is spent.
    (stored trials, trials judged, steps taken). A resumed run replays the same steps."""
    space = spec.space_by_name()
    step, steps = plan.step, 0
    while True:
        judged = first_slots(trials, n)
        found = best(judged)
        assert found is not None and found.steps_to_target is not None
        near = around(found.params, space, step, [t.params for t in judged])
        if not near or n + len(near) > cap or [t.slot for t in judged] != list(range(n)):
            if not near and step / 2 >= plan.step / 4:  # all tried already: a finer step
                step /= 2
                continue
            return trials, n, steps
        choose(spec, url, b, n, near,
               f"a compass step of {step:g} octave(s) around slot {found.slot}'s best")
        n += len(near)
        steps += 1
        if len(first_slots(trials, n)) < n:
            runner.run(spec, url, (b,), n, _quieter(echo), heartbeat, summary=False)
            trials = stored_trials(spec, url)[b]
        now = best(first_slots(trials, n))
        assert now is not None and now.steps_to_target is not None
        budget = left(trials)
        if budget is not None and budget <= 0:
            return trials, n, steps
        if found.steps_to_target / now.steps_to_target - 1 < plan.plateau:
            step /= 2  # no gain: a finer step, or the end
            if step < plan.step / 4:
                return trials, n, steps


def _best_params(trials_by_b: dict[int, list[TrialRecord]]) -> dict[int, dict[str, Any]]:
    """The best trial's params of each measured batch size that reached the target."""
    out = {}
    for b, trials in trials_by_b.items():
        found = best(trials)
        if found is not None:
            out[b] = dict(found.params)
    return out


def _quieter(echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo`` without the runner's once-per-round storage line."""
    return lambda s: None if s.startswith("storage: ") else echo(s)


def _fit(trials_by_b: dict[int, list[TrialRecord]], n_boot: int) -> Fit | None:
    """The fit over the measured batch sizes (None: fewer than 3 reached the target)."""
    return fit_with_bootstrap(dict(sorted(trials_by_b.items())), n_boot)


def _fit_line(fit: Fit | None, measured: list[int]) -> str:
    if fit is None:
        return f"  fit over B = {', '.join(map(str, sorted(measured)))}: none yet (fewer than 3 " \
               "reached the target)"
    lo, hi = fit.ci95.get("b_crit", (float("nan"), float("nan")))
    return (f"  fit over B = {', '.join(map(str, sorted(measured)))}: B_crit = {fit.b_crit:.4g} "
            f"[{lo:.4g}, {hi:.4g}] (spans {interval_span(fit):.3g}x)")


def run_adaptive(spec: Spec, url: str, plan: Plan, say: Callable[[str], None],
                 echo: Callable[[str], None] = lambda s: None, trials: int | None = None,
                 heartbeat: int = runner.HEARTBEAT, n_boot: int = 1000) -> Result:
    """Measure ``spec``'s scaling curve adaptively into ``url``, at most ``trials`` (default:
    the spec's) per batch size: the plan printed with ``say`` as it goes, the runner's progress
    with ``echo``."""
    cap = trials or spec.trials
    grid = sorted(spec.batch_sizes)
    space = spec.space_by_name()
    progress = Progress()
    trials_by_b: dict[int, list[TrialRecord]] = {}
    fit: Fit | None = None
    say(f"adaptive: {plan.text()}")
    queue = [(b, f"first {plan.first}, log-spaced over the spec's {len(grid)}")
             for b in first_batch_sizes(grid, plan.first)]
    while True:
        for b, why in queue:
            if plan.max_examples is not None and progress.examples >= plan.max_examples:
                break  # the budget is spent: the rest of the queue waits for a later run
            say(f"adaptive: B = {b}: {why}")
            step = Step(b, why, fit.steps(b) if fit is not None else None)
            warm = warm_start(_best_params(trials_by_b), b, space) if plan.warm_start else None
            trials_by_b[b] = measure(spec, url, b, plan, cap, progress.examples, say, echo,
                                     heartbeat, warm)
            found = best(trials_by_b[b])
            step.measured = found.steps_to_target if found is not None else None
            if step.error is not None:
                say(f"  B = {b}: the fit before it predicted {step.predicted:.4g} steps, "
                    f"measured {step.measured} ({step.error:.1%} off)")
            progress.steps.append(step)
            progress.examples += trained_examples(b, trials_by_b[b])
        fit = _fit(trials_by_b, n_boot)
        say(_fit_line(fit, progress.measured) + f"; {progress.examples:.3g} examples trained")
        reason = stop_reason(plan, fit, progress, grid)
        if reason is not None:
            say(f"adaptive: stop: {reason}")
            return Result(progress, trials_by_b, fit, reason)
        nxt = next_batch_size(fit, progress.measured, grid)
        assert nxt is not None  # stop_reason stops once every batch size is measured
        queue = [nxt]
