"""``tuner run SPEC --adaptive``: measure the batch sizes that move B_crit, stop when it is known.

The rules are :mod:`tuner.analysis.adaptive`'s; this module runs them against the storage: each
batch size's study is topped up round by round with :func:`tuner.run.runner.run` (so the slot
queue's guarantees hold: exact trial counts, crash recovery, resuming a stopped run), and what
is stored is read back after every round, so a resumed run re-plans from the stored trials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuner.analysis.adaptive import (Plan, Progress, Step, first_batch_sizes, interval_span,
                                     next_batch_size, stop_reason, study_stop,
                                     trained_examples)
from tuner.analysis.adequacy import assess
from tuner.analysis.fit import Fit, fit_with_bootstrap
from tuner.analysis.records import TrialRecord, best
from tuner.core.errors import UsageError
from tuner.run import runner
from tuner.spec import Spec
from tuner.store.rows import open_reader
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


def measure(spec: Spec, url: str, b: int, plan: Plan, cap: int, spent: float,
            say: Callable[[str], None], echo: Callable[[str], None], heartbeat: int
            ) -> list[TrialRecord]:
    """Top up B's study in rounds of ``plan.chunk`` trials until :func:`study_stop` stops it
    (at most ``cap`` trials; ``spent``: examples the measurement trained before this batch
    size, against the plan's budget); its stored trials. Each round is judged on the study's
    first trials (:func:`first_slots`), so a resumed run replays the rounds already stored and
    adds trials only where the run stopped. ``say`` prints the plan, ``echo`` the runner's
    progress."""
    n, bests = 0, []
    try:
        trials = stored_trials(spec, url).get(b, [])
    except UsageError:  # nothing stored yet (the runner refuses a changed spec itself)
        trials = []
    while True:
        n = min(n + plan.chunk, cap)
        if len(first_slots(trials, n)) < n:
            runner.run(spec, url, (b,), n, _quieter(echo), heartbeat, summary=False)
            trials = stored_trials(spec, url)[b]
        judged = first_slots(trials, n)
        a = assess(b, judged, spec.space, plan.rule)
        left = None if plan.max_examples is None else \
            plan.max_examples - spent - trained_examples(b, trials)
        why = study_stop(plan, a, bests, len(judged), cap, left)
        if why is None and len(judged) < n == cap:
            # the runner has the cap's slots finished, but some lack their results (stopped
            # while being stored): another round would add nothing
            why = f"{len(judged)} of the {cap} finished trials have results"
        if why is not None:
            say(f"  B = {b}: {len(judged)} trials, best "
                f"{a.best_steps if a.best_steps is not None else '-'} steps ({why})")
            return trials
        bests.append(a.best_steps)


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
            trials_by_b[b] = measure(spec, url, b, plan, cap, progress.examples, say, echo,
                                     heartbeat)
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
