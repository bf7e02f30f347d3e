"""The ``tuner`` command: thin wrappers that parse, call and print."""

from __future__ import annotations

import atexit
import csv
import dataclasses
import errno
import gc
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import optuna
from sqlalchemy.exc import InterfaceError, OperationalError

from tuner.analysis.adequacy import UNDER_TUNED
from tuner.analysis.profiles import profile_json, profile_notes, profile_rows, profiles
from tuner.analysis.records import SpecStudies, stored_metrics
from tuner.analysis.quality import quality as quality_of
from tuner.analysis.quality import quality_json, trains_to_budget
from tuner.analysis.rescore import Goal, rescore
from tuner.analysis.sensitivity import sensitivity as sens
from tuner.analysis.series import series_curves
from tuner.analysis.summary import (
    RULE_TEXT,
    curve_json,
    edge_findings,
    spec_curve,
    time_optimal_line,
    under_tuned_line,
)
from tuner.analysis.summary import adequacy as adequacy_of
from tuner.core.errors import UsageError
from tuner.render.tables import (
    confirm_rows,
    curve_rows,
    edge_rows,
    fit_line,
    points_table,
    quality_rows,
    render,
    sensitivity_rows,
    series_rows,
    to_csv,
)
from tuner.store import storage as storage_mod
from tuner.store.retry import StorageUnavailable, cause, configure, db_error
from tuner.store.rows import open_reader
from tuner.store.source import check_storage_exists, load_all
from tuner.store.storage import open_readonly, open_storage, resolve_url, writable

#: Seeds numpy accepts (tuner.spec.SEED_MAX; not imported here to keep `tuner --help` fast).
SEED_RANGE = click.IntRange(0, 2**32 - 1)

STORAGE_HELP = ("SQLAlchemy URL of the Optuna storage (default: $TUNER_STORAGE, else "
                "sqlite:///results/tuner.db).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batch-scaling-tuner")
def cli() -> None:
    """Measure how batch size affects steps-to-target: one Optuna study per batch size."""


@cli.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--batch-size", "-b", "batch_sizes", type=int, multiple=True,
              help="Run only this batch size of the spec (repeatable).")
@click.option("--trials", "-n", type=click.IntRange(min=1),
              help="Top each batch-size study up to N finished trials (default: the spec's).")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--seed", type=SEED_RANGE,
              help="Override the spec's seed (a separate set of studies), in [0, 2^32 - 1].")
@click.option("--workers", "-w", type=click.IntRange(min=1),
              help="Start this many local worker processes (default 1, or one per --gpus), "
              "each with OMP_NUM_THREADS = logical CPUs / N unless OMP_NUM_THREADS or "
              "MKL_NUM_THREADS is set.")
@click.option("--gpus", help="GPU indices, e.g. 0,1,2,3: one worker per GPU, each pinned to "
              "its GPU with CUDA_VISIBLE_DEVICES.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=30, show_default=True,
              help="Seconds between a running trial's heartbeats (stored with the trial); a "
              "trial silent for twice its own interval (its worker died) is re-run by another "
              "worker.")
@click.option("--storage-retry", type=click.FloatRange(min=0), default=60, show_default=True,
              metavar="SECONDS", help="Keep retrying a storage that cannot be reached (a "
              "server restarting) this long, with backoff, then stop with exit status 1.")
@click.option("--quiet", "-q", is_flag=True, help="No per-trial progress lines.")
@click.option("--allow-large", is_flag=True,
              help="Run even where a trial's estimated memory exceeds what is free here, or it "
              "would evaluate more than 10,000 times.")
@click.option("--adaptive", is_flag=True,
              help="Measure only the batch sizes that move B_crit: a few log-spaced ones first, "
              "each with trials in rounds until adequately tuned, then where the fit is least "
              "sure, until B_crit is known (--ci-width, --predict-within) or the budget is spent "
              "(--budget-examples). Prints the plan as it goes and why it stopped.")
@click.option("--ci-width", type=click.FloatRange(min=1, min_open=True), default=1.5,
              show_default=True, help="--adaptive: stop once B_crit's 95 % bootstrap interval "
              "spans at most this factor (high / low) ...")
@click.option("--predict-within", type=click.FloatRange(min=0, min_open=True), default=0.25,
              show_default=True, help="--adaptive: ... and the fit before the last batch size "
              "added predicted its steps within this relative error.")
@click.option("--budget-examples", type=click.FloatRange(min=0, min_open=True),
              help="--adaptive: stop once the trials have trained this many examples in all.")
@click.option("--first", type=click.IntRange(min=3), default=4, show_default=True,
              help="--adaptive: batch sizes measured first, log-spaced over the spec's.")
@click.option("--round", "chunk", type=click.IntRange(min=1), default=8, show_default=True,
              help="--adaptive: trials added per round within a batch size, until the "
              "tuning-adequacy rule holds or a plateau (--plateau).")
@click.option("--plateau", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="--adaptive: a batch size also stops once its last 2 rounds improved its "
              "best steps by less than this (relative); 0: only the adequacy rule or the "
              "trials cap stop it.")
@click.option("--no-warm-start", is_flag=True,
              help="--adaptive: neither start a batch size at the params predicted from the "
              "measured ones' bests nor end it with compass steps around its best: the spec's "
              "search alone.")
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="--adaptive: octaves a log parameter moves (1/8 of the "
              "range per octave for a linear one) in the first compass step around a best; "
              "halved after a step that gains less than --plateau, down to a quarter.")
@click.option("--no-summary", is_flag=True, hidden=True,
              help="No summary table (the workers --workers starts: it prints the table).")
@click.option("--no-preflight", is_flag=True, hidden=True,
              help="Skip the pre-flight trial (the workers --workers starts: it ran it).")
def run(spec_path: str, batch_sizes: tuple[int, ...], trials: int | None, storage: str | None,
        seed: int | None, workers: int | None, gpus: str | None, heartbeat: int,
        storage_retry: float, quiet: bool, allow_large: bool, adaptive: bool, ci_width: float,
        predict_within: float, budget_examples: float | None, first: int, chunk: int,
        plateau: float, no_warm_start: bool, step: float,
        no_summary: bool, no_preflight: bool) -> None:
    """Create or resume SPEC's batch-size studies and top each up to N trials.

    Re-running a finished spec adds nothing. Progress goes to stderr; the summary table
    (best steps-to-target per batch size) to stdout.

    Before any storage is touched, a pre-flight trial (a training step and an evaluation at
    the smallest and the largest batch size) checks the workload: for a LightningModule spec
    it imports and constructs your classes and finds the metrics validation_step logs. A
    failure is one line naming the spec key, exit status 2.

    Any number of `tuner run` processes can work on one spec at once, on one machine or many,
    against one --storage (PostgreSQL for several machines): they share the trials out, stop
    at exactly N per batch size, and re-run the trial of a worker that died. Ctrl-C or SIGTERM
    re-queues the running trial and stops.
    """

    # the trial path (scipy's QMC, the runner) only for `run`: analysis starts faster without
    from tuner.run import resources, runner
    from tuner.run import specs as spec_mod
    from tuner.run import workers as workers_mod

    configure(storage_retry)  # this process and the local workers it starts

    members = spec_mod.load_series(spec_path)  # one spec, or one per value of a [series]
    if adaptive:
        _adaptive_allowed(spec_path, members, batch_sizes, workers, gpus)
    if seed is not None:
        members = [spec_mod.with_seed(m, seed) for m in members]
    chosen = {m.name: runner.select_batch_sizes(m, batch_sizes) for m in members}
    gpu_ids = workers_mod.parse_gpus(gpus)
    for m in members:
        resources.check_devices(m, gpu_ids)
        if not allow_large:
            resources.check_sizes(m, chosen[m.name])
    n_workers = workers or max(1, len(gpu_ids))
    url = storage_mod.resolve_url(storage)
    if adaptive and storage_mod.in_memory(url):  # before the pre-flight's work
        raise UsageError(f"--adaptive: an in-memory storage ({url}) is gone between rounds; "
                         "allowed: a SQLite file or a PostgreSQL URL")
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    if not no_preflight:  # a tiny trial at the smallest and largest B, before any storage
        for m in members:
            t0 = time.perf_counter()
            metrics = spec_mod.preflight(m, chosen[m.name])
            at = " and ".join(map(str, sorted({min(chosen[m.name]), max(chosen[m.name])})))
            echo = _first(echo, f"pre-flight{f' of {m.name}' if m.series else ''} at B = "
                          f"{at}: ok ({time.perf_counter() - t0:.1f} s); metrics: "
                          f"{', '.join(sorted(metrics))}")
    if adaptive:
        from tuner.analysis.adaptive import Plan
        from tuner.analysis.curves import point
        from tuner.run.adaptive import run_adaptive

        plan = Plan(first=first, chunk=chunk, plateau=plateau, width=ci_width,
                    predict_within=predict_within, max_examples=budget_examples,
                    warm_start=not no_warm_start, step=step)
        m = members[0]
        r = run_adaptive(m, url, plan, lambda s: click.echo(s, err=True), echo, trials, heartbeat)
        if not no_summary:
            click.echo(points_table(m, [point(b, t) for b, t in sorted(r.trials.items())]))
        return
    if n_workers == 1 and not gpu_ids:
        for m in members:
            if m.series is not None:
                echo(f"series {m.series.name}: {m.series.key} = {m.series.value} ({m.name})")
            points = runner.run(m, url, chosen[m.name], trials or m.trials, echo, heartbeat,
                                summary=not no_summary)
            if not no_summary:
                click.echo(points_table(m, points))
        return
    if storage_mod.in_memory(url):
        raise UsageError(f"--workers: an in-memory storage ({url}) cannot be shared; "
                         "allowed: a SQLite file or a PostgreSQL URL")
    # refuse a changed spec once; every worker then works through the members in order
    prepared = [runner.prepare(m, url, chosen[m.name], heartbeat)[1] for m in members]
    args = ["run", spec_path, *(["--trials", str(trials)] if trials else []), "--storage", url,
            "--heartbeat", str(heartbeat), *(["--seed", str(seed)] if seed is not None else []),
            *[a for b in batch_sizes for a in ("-b", str(b))], *(["-q"] if quiet else []),
            *(["--allow-large"] if allow_large else []), "--no-summary", "--no-preflight"]
    threads = workers_mod.threads_per_worker(n_workers)
    echo(f"storage: {url}; starting {n_workers} workers"
         + (f" on GPUs {','.join(gpu_ids)}" if gpu_ids else "") + workers_mod.threads_said(threads))
    code = workers_mod.launch(args, n_workers, gpu_ids, echo, threads)
    if code:
        raise SystemExit(code)
    for m, studies in zip(members, prepared):
        click.echo(points_table(m, runner.points(studies, url)))


def _adaptive_allowed(spec_path: str, members: list, batch_sizes: tuple[int, ...],
                      workers: int | None, gpus: str | None) -> None:
    """Refuse what ``--adaptive`` does not combine with, in one line."""
    clash = ("--batch-size" if batch_sizes else "--workers" if (workers or 1) > 1
             else "--gpus" if gpus else f"{spec_path}: [series]" if len(members) > 1
             or members[0].series is not None else None)
    if clash:
        raise UsageError(f"--adaptive: cannot be combined with {clash} (it chooses the batch "
                         "sizes itself and runs one worker on one spec); allowed: a plain spec, "
                         "one worker")


def _first(echo: Callable[[str], None], line: str) -> Callable[[str], None]:
    """``echo`` that prints ``line`` before its first line (so that an error found before
    any progress stays the only line)."""
    pending = [line]

    def out(s: str) -> None:
        while pending:
            echo(pending.pop())
        echo(s)

    return out


FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]),
                      default="table", show_default=True, help="Output format.")
SEED = click.option("--seed", type=SEED_RANGE, help="Which seed's studies (default: the spec's, or the "
                    "only one stored).")
SPECS = click.argument("specs", metavar="SPEC...", nargs=-1, required=True)


def _goal(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Goal]:
    try:
        return [Goal.parse(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def RESCORE(f):  # noqa: ANN001, ANN201, N802 - a click decorator
    """``--target`` / ``--max-steps`` / ``--max-examples``: re-score the stored curves."""
    f = click.option("--max-examples", type=click.IntRange(min=1),
                     help="Re-score within a budget of N training examples per trial (N / B "
                          "steps at batch size B).")(f)
    f = click.option("--max-steps", type=click.IntRange(min=1),
                     help="Re-score within a budget of N steps per trial.")(f)
    return click.option(
        "--target", "targets", multiple=True, callback=_goal, metavar="'METRIC<=VALUE'",
        help="Re-score the stored studies at this target (<=, <, >=, >; any metric the "
             "workload logged) from every trial's stored curve, without training. Exact where "
             "the curves cover it; a best that trials stopped too early might have beaten is "
             "shown as an upper bound (<=). Repeat it for one result per target.")(f)


def _check_output(option: str, path: str | None, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work is done: its folder
    missing or not a folder, no permission, a read-only file system, a name too long.

    A file is opened for appending (created and removed again if it was not there); a folder
    (created later if missing) must be one, or have an existing, writable parent.

    Raises:
        UsageError: one line naming the option, the path and the cause.
    """
    if path is None:
        return
    p = Path(path)
    allowed = "a folder" if folder else "a file"
    try:
        if path == "":
            raise OSError(errno.ENOENT, "empty path")
        if folder:
            if p.exists() and not p.is_dir():
                raise OSError(errno.ENOTDIR, "exists and is not a folder")
            parent = p if p.is_dir() else p.parent
            _folder_exists(parent)
            if not p.is_dir() and len(os.fsencode(p.name)) > os.pathconf(parent, "PC_NAME_MAX"):
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
            tempfile.TemporaryFile(dir=parent).close()
        else:
            if p.is_dir():
                raise OSError(errno.EISDIR, "is a folder")
            _folder_exists(p.parent)
            existed = p.exists()
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
            if not existed:
                p.unlink()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there: {exc.strerror}; allowed: "
                         f"{allowed} in an existing, writable folder") from None


def _folder_exists(folder: Path) -> None:
    """Raise OSError unless ``folder`` is an existing folder."""
    if folder.exists() and not folder.is_dir():
        raise OSError(errno.ENOTDIR, f"{str(folder)!r} is a file, not a folder")
    if not folder.is_dir():
        raise OSError(errno.ENOENT, f"folder {str(folder)!r} does not exist")


def _load(specs: tuple[str, ...], storage: str | None, seed: int | None,
          write: bool = False, targets: Sequence[Goal] = (), max_steps: int | None = None,
          max_examples: int | None = None, curves: bool = False):  # noqa: ANN202
    """Open the storage (never creating or changing it: read-only, unless ``write`` and the
    storage is writable) and load each spec's studies; with a target or budget, re-scored
    (one entry per spec and target)."""
    url = resolve_url(storage)
    check_storage_exists(url)
    # $TUNER_READER=optuna: through Optuna's API (benchmarks/analysis_speed.py's baseline)
    reader = open_readonly(url) if os.environ.get("TUNER_READER") == "optuna" else \
        open_reader(url)
    st = open_storage(url) if write and writable(url) else reader
    rescoring = bool(targets or max_steps or max_examples)
    curves = curves or rescoring
    # a series file or name stands for its members; curves only for re-scoring
    loaded = [x for s in specs for x in load_all(reader, s, seed, curves=curves)]
    if rescoring:
        loaded = [_rescored(s, g, max_steps, max_examples)
                  for s in loaded for g in (targets or [None])]
    for line in (w for s in loaded for w in s.warnings):
        click.echo(line, err=True)
    return st, loaded


def _rescored(s: SpecStudies, goal: Goal | None, max_steps: int | None,
              max_examples: int | None) -> SpecStudies:
    """One spec's studies re-scored, named after the goal and budget."""
    stored = stored_metrics(s)
    if goal is not None and goal.metric not in stored:
        raise UsageError(f"--target: {goal.metric!r} is not in the stored curves of spec "
                         f"{s.name!r}; allowed: {', '.join(sorted(stored)) or 'none stored'}")
    r, _ = rescore(s, goal, max_steps, max_examples)
    label = str(goal or Goal.of_target(s.target)) + (
        f", <= {max_steps} steps" if max_steps else "") + (
        f", <= {max_examples} examples" if max_examples else "")
    return dataclasses.replace(r, name=f"{s.name} [{label}]")


def _emit(fmt: str, blocks: list[tuple[str, list[str], list[list]]], json_obj: object) -> None:
    """Print (title, header, rows) blocks as tables or CSV, or ``json_obj`` as JSON."""

    if fmt == "json":
        click.echo(json.dumps(json_obj, indent=2, default=str))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["spec", *blocks[0][1]])
        for title, header, rows in blocks:
            w.writerows(to_csv(header, rows, [title]))
    else:
        click.echo("\n\n".join(f"{title}\n{render(header, rows)}" for title, header, rows in blocks))


def _run_cmds(storage: str | None, loaded: Sequence[SpecStudies]) -> list[str]:
    """The ``tuner run ...`` that tops up each loaded entry's studies, for the adequacy advice:
    its stored spec file if it is still there (else ``SPEC``); empty for imported studies,
    which no command tops up."""
    out = []
    for s in loaded:
        path = s.attrs.get("spec_file", "")
        cmd = "tuner run " + shlex.quote(path if path and Path(path).is_file() else "SPEC") + (
            f" --storage {shlex.quote(storage)}" if storage else "")
        out.append("" if s.attrs.get("imported_from") else cmd)
    return out


def _under_tuned_lines(name: str, items: Sequence[tuple[int, list[str], list[str]]]
                       ) -> list[str]:
    """The table formats' lines under a spec's table: each under-tuned batch size (B,
    reasons, advice), and the rule."""
    lines = [f"{name}: " + under_tuned_line(*item) for item in items]
    return lines + ([f"(adequately tuned: {RULE_TEXT})"] if lines else [])


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@FORMAT
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the scaling figure (PNG).")
@click.option("--lr-plot", type=click.Path(dir_okay=False),
              help="Write the optimal-learning-rate figure (PNG).")
@click.option("--series-plot", type=click.Path(dir_okay=False),
              help="Write B_crit and S_min against the series value (PNG; specs with [series]).")
@click.option("--n-boot", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the 95 % interval of the fit.")
@click.option("--quality", is_flag=True,
              help="Solution quality instead of steps: per batch size, the best validation "
                   "metric (the target's, or --target's) reached within the budget given by "
                   "--max-steps, --max-examples or --max-epochs (default: each study's own).")
@click.option("--max-epochs", type=click.FloatRange(min=0, min_open=True),
              help="With --quality: a budget of E epochs per trial (E x n_train / B steps at B).")
@RESCORE
def curve(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
          plot: str | None, lr_plot: str | None, series_plot: str | None, n_boot: int,
          quality: bool, max_epochs: float | None, targets: list[Goal], max_steps: int | None,
          max_examples: int | None) -> None:
    """Scaling curve(s): best steps-to-target per batch size and the critical batch size.

    SPEC is a spec file or a spec name already in storage; give several to compare them.
    Fits S(B) = S_min (1 + B_noise/B) (McCandlish et al.) and reports S_min, E_min,
    B_crit = E_min/S_min with a 95 % bootstrap interval. With several --target values: one
    curve per target, and one figure (--plot) with all of them. A spec with [series] (or its
    stored name) stands for its members: one curve each, then B_crit and S_min against the
    series value (--series-plot draws them).

    Per batch size: the best steps' 95 % bootstrap interval (best_ci95: how far more tuning
    might move it), the trials within 1.25x of the best (good) and the adequacy verdict
    (tuning: the rule of `tuner edges --help`). An under-tuned point makes the fit unreliable;
    the fit line then adds the fit without the under-tuned points.

    The critical batch size three ways (JSON "cbs"): B_crit of the fit; B_20% (Zhang et
    al.), where the measured steps are 20 % above perfect scaling from the smallest batch
    size, interpolated, with a bootstrap interval; and B_simple, the gradient noise scale
    stored by `tuner noise-scale`.
    """
    _check_output("--plot", plot)
    _check_output("--lr-plot", lr_plot)
    _check_output("--series-plot", series_plot)
    if max_epochs is not None and not quality:
        raise UsageError("--max-epochs: only with --quality; allowed for steps-to-target: "
                         "--max-steps or --max-examples")
    if quality:
        _quality(specs, storage, seed, fmt, plot, targets, max_steps, max_examples, max_epochs)
        return
    _, loaded = _load(specs, storage, seed, False, targets, max_steps, max_examples)
    cmds = _run_cmds(storage, loaded)
    curves = [spec_curve(s, n_boot, cmd) for s, cmd in zip(loaded, cmds)]
    if series_plot and not series_curves(curves):
        raise UsageError(f"--series-plot {series_plot}: none of the specs is a member of a "
                         "series; allowed: a spec file with [series], or its stored name")
    objs = [curve_json(c) for c in curves]
    blocks = [(c.name if fmt == "csv" else fit_line(c), *curve_rows(c)) for c in curves]
    _emit(fmt, blocks, objs[0] if len(objs) == 1 else objs)
    if fmt == "table":
        click.echo("\n" + "\n".join(f"{c.name}: {c.cbs.line()}" for c in curves))
        timed = [f"{c.name}: {line}" for c in curves if (line := time_optimal_line(c))]
        if timed:
            click.echo("\n" + "\n".join(timed))
        lines = [line for c in curves for line in _under_tuned_lines(
            c.name, [(p.batch_size, p.tuning_reasons, p.tuning_advice) for p in c.points
                     if p.tuning == UNDER_TUNED])]
        if lines:
            click.echo("\n" + "\n".join(lines))
        for sc in series_curves(curves):
            click.echo(f"\nseries {sc.name} at {sc.target}: {sc.trend()}\n"
                       + render(*series_rows(sc)))
    if plot or lr_plot or series_plot:
        from tuner.render import plots  # heavy: matplotlib, only for --plot

        figures = ((plot, plots.scaling), (lr_plot, plots.learning_rates),
                   (series_plot, lambda cs: plots.series(series_curves(cs))))
        for path, fig in figures:
            if path:
                Path(path).write_bytes(fig(curves))
                click.echo(f"wrote {path}", err=True)


def _quality(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
             plot: str | None, targets: list[Goal], max_steps: int | None,
             max_examples: int | None, max_epochs: float | None) -> None:
    """``tuner curve --quality``: the best metric within a budget per batch size."""
    given = [n for n, v in (("--max-steps", max_steps), ("--max-examples", max_examples),
                            ("--max-epochs", max_epochs)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)}: give at most one budget for --quality")
    if len(targets) > 1:
        raise UsageError("--target: give at most one with --quality (its metric is scored)")
    _, loaded = _load(specs, storage, seed, curves=True)
    budget = (f"{max_steps} steps" if max_steps else f"{max_examples} examples" if max_examples
              else f"{max_epochs:g} epochs" if max_epochs else "each study's own budget")
    blocks, objs, results = [], [], []
    for s in loaded:
        metric = targets[0].metric if targets else s.target["metric"]
        direction = targets[0].direction if targets else s.target.get("direction", "minimize")
        if metric not in stored_metrics(s):
            raise UsageError(f"--target: {metric!r} is not in the stored curves of spec "
                             f"{s.name!r}; allowed: {', '.join(sorted(stored_metrics(s)))}")
        try:
            pts = quality_of(s, metric, direction, max_steps, max_examples, max_epochs)
        except ValueError as exc:
            raise UsageError(f"--max-epochs: {exc}; allowed: --max-steps or --max-examples"
                             ) from None
        results.append((s.name, metric, pts))
        objs.append(quality_json(s, pts, metric, budget))
        blocks.append((f"{s.name}: best {metric} ({direction}) within {budget}",
                       *quality_rows(pts)))
    _emit(fmt, blocks, objs[0] if len(objs) == 1 else objs)
    if fmt == "table" and any(p.bound == "bound" for _, _, pts in results for p in pts):
        click.echo("\n(bound: some trials stopped before the budget without diverging (they "
                   "reached the target, or were pruned) and might have done better: the best "
                   "within the budget is at least this good; [budget] train_to_budget = true "
                   "makes it exact)")
    if plot:
        from tuner.render import plots  # heavy: matplotlib, only for --plot

        Path(plot).write_bytes(plots.quality(results, budget))
        click.echo(f"wrote {plot}", err=True)


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@FORMAT
@click.option("--margin", type=click.FloatRange(0, 0.5), default=0.05, show_default=True,
              help="Share of a range (log space for log params) that counts as its edge.")
@click.option("--top-frac", type=click.FloatRange(min=0), default=0.10, show_default=True,
              help="Near-best trials: within this fraction of the best steps.")
@click.option("--adequacy/--no-adequacy", default=True, show_default=True,
              help="Also check that each batch size is tuned enough (exit 3 when one is not).")
@RESCORE
def edges(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
          margin: float, top_frac: float, adequacy: bool, targets: list[Goal],
          max_steps: int | None, max_examples: int | None) -> None:
    """Is any batch size's best trial at a search-space edge, or too poorly resolved to say?

    Exit 0: no best trial at an edge and every batch size adequately tuned; 1: a best trial
    at an edge (whatever else); 3: no edge, but a batch size is under-tuned. "unstable beyond
    edge" (every trial past the best toward that edge diverged) does not fail.

    Adequately tuned: >= 3 trials within 1.25x of the best steps, the best's 95 % bootstrap
    interval (exact: no resampling noise) reaching no lower than best/1.25, and >= 50 % of
    the finished trials not diverged. An under-tuned batch size is listed with the reason and
    what to do (more trials, or a narrower range where most trials diverged).
    """
    _, loaded = _load(specs, storage, seed, False, targets, max_steps, max_examples)
    cmds = _run_cmds(storage, loaded)
    tuning = {s.name: adequacy_of(s, run_cmd=cmd) if adequacy else []
              for s, cmd in zip(loaded, cmds)}
    found = {s.name: edge_findings(s, margin, top_frac, tuning[s.name]) for s in loaded}
    blocks = [(name, *edge_rows(f)) for name, f in found.items()]
    _emit(fmt, blocks, {name: {"findings": [asdict(x) | {"failing": x.failing} for x in f],
                               "adequacy": [asdict(a) | {"feasible": a.feasible}
                                            for a in tuning[name]],
                               "tuning_rule": RULE_TEXT if adequacy else None}
                        for name, f in found.items()})
    failing = [x for f in found.values() for x in f if x.failing]
    under = [a for t in tuning.values() for a in t if a.under_tuned]
    if fmt == "table":
        lines = [line for name, t in tuning.items() for line in _under_tuned_lines(
            name, [(a.batch_size, a.reasons, a.advice) for a in t if a.under_tuned])]
        summary = (f"{len(failing)} best trial(s) at an edge" if failing else
                   "edges clean: no best trial at an edge")
        if under:
            summary += (f"; {len(under)} batch size(s) under-tuned, so the edge check rests on "
                        "too few good trials there")
        elif adequacy:
            summary += "; every batch size with a point adequately tuned"
        click.echo("\n" + "\n".join([*lines, summary]))
    if failing:
        raise SystemExit(1)
    if under:
        raise SystemExit(3)


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@FORMAT
@click.option("--factor", type=click.FloatRange(min=1), default=1.25, show_default=True,
              help="Good region: trials within this factor of the best steps.")
@click.option("--plots", "plot_dir", type=click.Path(file_okay=False),
              help="Write the learning-rate x momentum scatter and per-parameter plots here.")
@RESCORE
def sensitivity(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
                factor: float, plot_dir: str | None, targets: list[Goal],
                max_steps: int | None, max_examples: int | None) -> None:
    """Per batch size: outcomes, the good region of each parameter, importances, the best's
    95 % bootstrap interval, the feasible (not diverged) share and the tuning-adequacy verdict
    (the rule of `tuner edges --help`; its good region is always 1.25x, whatever --factor).

    "unknown" counts trials pruned before FACTOR x the best steps: they cannot be classified;
    a lossless-pruner slack >= FACTOR would have run them long enough to settle it.
    """
    _check_output("--plots", plot_dir, folder=True)
    _, loaded = _load(specs, storage, seed, False, targets, max_steps, max_examples)
    cmds = _run_cmds(storage, loaded)
    results = {}
    for s, cmd in zip(loaded, cmds):
        results[s.name] = [sens(st, factor, a) for st, a in
                           zip(s.studies, adequacy_of(s, run_cmd=cmd))]
    blocks = [(name, *sensitivity_rows(r)) for name, r in results.items()]
    _emit(fmt, blocks, {n: [asdict(x) | {"feasible": x.adequacy and x.adequacy.feasible}
                            for x in r] for n, r in results.items()})
    if fmt == "table":
        lines = [line for name, r in results.items() for line in _under_tuned_lines(
            name, [(x.batch_size, x.adequacy.reasons, x.adequacy.advice) for x in r
                   if x.adequacy and x.adequacy.under_tuned])]
        if lines:
            click.echo("\n" + "\n".join(lines))
        for name, r in results.items():
            unknown = sum(x.n_unknown for x in r)
            if unknown:
                slack = r[0].slack
                click.echo(f"\n{name}: {unknown} pruned trial(s) are unknown: stopped before "
                           f"{factor}x the best steps (pruner slack {slack}); a slack >= {factor} "
                           "would run them long enough to classify them")
    if plot_dir:
        from tuner.render import plots  # heavy: matplotlib, only for --plots

        d = Path(plot_dir)
        d.mkdir(parents=True, exist_ok=True)
        for s in loaded:
            png = plots.lr_momentum_scatter(s.studies)
            if png:
                (d / f"{s.name}_lr_momentum.png").write_bytes(png)
            for st in s.studies:
                (d / f"{s.name}_B{st.batch_size}_axes.png").write_bytes(plots.axis_plots(st))
        click.echo(f"wrote plots to {d}", err=True)


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@FORMAT
@RESCORE
def profile(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
            targets: list[Goal], max_steps: int | None, max_examples: int | None) -> None:
    """Performance profiles: how often each spec is within tau of the fewest steps.

    For specs on the same workload and target (e.g. one optimizer each), at every batch size
    all of them studied: the ratio of a spec's best steps to the fewest any of them needed (a
    spec that never reached the target there: infinite). Per spec, the fraction of batch sizes
    within tau = 1, 1.1, 1.25, 1.5, 2, 4, and the score: the mean of that fraction over tau in
    [1, 4] (AlgoPerf's normalised area; 1 = the fewest steps at every batch size). `tuner
    report` draws them.
    """
    _, loaded = _load(specs, storage, seed, False, targets, max_steps, max_examples)
    curves = [spec_curve(s, 0, cmd) for s, cmd in zip(loaded, _run_cmds(storage, loaded))]
    groups = profiles(loaded, curves)
    if not groups:
        raise UsageError("profile: no two of these specs share a workload and target with a "
                         "batch size both studied; allowed: two or more specs on the same "
                         "workload, options and target")
    if fmt == "json":
        click.echo(json.dumps([{"comparison": what, **profile_json(p)} for what, p in groups],
                              indent=2))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        for i, (what, p) in enumerate(groups):
            header, rows = profile_rows(p)
            if i == 0:
                w.writerow(["comparison", *header])
            w.writerows([what, *r] for r in rows)
        return
    out = []
    for what, p in groups:
        notes = profile_notes(p)
        out.append(f"{what}: {len(p.batch_sizes)} batch sizes "
                   f"({', '.join(map(str, p.batch_sizes))})\n" + render(*profile_rows(p))
                   + "".join(f"\n{n}" for n in notes))
    click.echo("\n\n".join(out))


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html.")
@click.option("--n-boot", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Also attach the scaling figure and a note to each study for optuna-dashboard.")
@RESCORE
def report(specs: tuple[str, ...], storage: str | None, seed: int | None, out: str, n_boot: int,
           dashboard: bool, targets: list[Goal], max_steps: int | None,
           max_examples: int | None) -> None:
    """One self-contained HTML page with every table and figure, and a verdict box."""
    from tuner.render import report as report_mod  # heavy: matplotlib, plotly

    _check_output("--out", out, folder=True)
    rescoring = bool(targets or max_steps or max_examples)
    if rescoring and dashboard:
        click.echo("skipped the optuna-dashboard attachments: the studies are re-scored "
                   "(--target/--max-steps/--max-examples); attach the spec's own figures "
                   "with a plain `tuner report`", err=True)
        dashboard = False
    st, loaded = _load(specs, storage, seed, dashboard, targets, max_steps, max_examples)
    cmds = _run_cmds(storage, loaded)
    curves = [spec_curve(s, n_boot, cmd) for s, cmd in zip(loaded, cmds)]
    # solution quality needs the stored curves: read them for the specs that train to budget
    full = [s for s in loaded if trains_to_budget(s) and not s.studies[0].attrs.get("rescored")]
    with_curves = [_load((s.name,), storage, s.seed, curves=True)[1][0] for s in full]
    page = report_mod.write(Path(out), loaded, curves, with_curves,
                            _confirmed(storage, loaded))
    click.echo(f"wrote {page}")
    if dashboard and getattr(st, "read_only", False):
        click.echo("skipped the optuna-dashboard attachments: the storage is read-only "
                   "(use --no-dashboard)", err=True)
    elif dashboard:
        n = report_mod.attach_to_dashboard(st, loaded, curves)
        click.echo(f"attached the scaling figure to {n} studies (optuna-dashboard)", err=True)


@cli.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Configurations per batch size: the best K reached trials.")
@click.option("--seeds", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Fresh seeds per configuration.")
@click.option("--batch-size", "-b", "batch_sizes", type=int, multiple=True,
              help="Only these batch sizes (repeatable; default: every one with a best).")
@click.option("--storage", help=STORAGE_HELP)
@SEED
@click.option("--heartbeat", type=click.IntRange(min=1), default=30, show_default=True,
              help="Seconds between a running trial's heartbeats.")
@FORMAT
@click.option("--quiet", "-q", is_flag=True, help="No per-trial progress lines.")
def confirm(spec_path: str, top: int, seeds: int, batch_sizes: tuple[int, ...],
            storage: str | None, seed: int | None, heartbeat: int, fmt: str, quiet: bool
            ) -> None:
    """Re-run the best K configurations of each batch size with S fresh seeds.

    The best of N noisy trials is an optimistic draw. Each batch size gets a confirmation
    study (spec NAME.confirm, so `tuner curve NAME.confirm` reads it too); its trials are
    queued like any study's (resumable, shareable by several processes) and never pruned.
    Reported per batch size and configuration: the original steps, the fresh seeds' steps
    (mean, sd, a 95 % Student-t interval of the mean, the median counting misses), the
    optimism (mean / original), and where the target was reached the validation metric, the
    test metric (the only place the test split is evaluated; Fashion-MNIST has one, digits
    not; a LightningModule's test_step over its DataModule's test_dataloader, test_acc read
    as val_acc) and the sharpness (top Hessian eigenvalue of the training loss on 1,024
    training examples, power iteration on Hessian-vector products); then whether sharpness
    and test metric depend on B at equal validation metric (Spearman). Measured on one
    device; under DDP only the seeds run.
    """
    from tuner.analysis.confirm import confirmation, confirmation_json, dependence
    from tuner.run import confirm as confirm_mod  # the trial path: torch, the workload
    from tuner.run import runner
    from tuner.run import specs as spec_mod
    from tuner.store.source import load_spec

    members = spec_mod.load_series(spec_path)  # a [series]: each member in turn
    if seed is not None:
        members = [spec_mod.with_seed(m, seed) for m in members]
    url = storage_mod.resolve_url(storage)
    check_storage_exists(url)
    chosen = {m.name: runner.select_batch_sizes(m, batch_sizes) for m in members}
    stored = [load_spec(open_reader(url), m, curves=False) for m in members]
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    configure(60)
    objs, blocks, lines = [], [], []
    for spec, st in zip(members, stored):
        st = dataclasses.replace(st, studies=[x for x in st.studies
                                              if x.batch_size in chosen[spec.name]])
        for line in st.warnings:
            click.echo(line, err=True)
        confirm_mod.run(spec, url, st, top, seeds, echo, heartbeat)
        got = load_spec(open_reader(url), confirm_mod.confirm_name(spec.name), spec.seed,
                        curves=True)
        got = dataclasses.replace(got, studies=[x for x in got.studies
                                                if x.batch_size in chosen[spec.name]])
        results = confirmation(got)
        objs.append(confirmation_json(got, results))
        blocks.append((f"{got.name}: {top} configuration(s) x {seeds} fresh seed(s) per batch "
                       "size", *confirm_rows(results)))
        lines += [f"{got.name}: {dependence(results, w)}" for w in ("sharpness", "test")]
    _emit(fmt, blocks, objs[0] if len(objs) == 1 else objs)
    if fmt == "table":
        click.echo("\n" + "\n".join(lines))


def _fixed_run(spec_path: str, seed: int | None, storage: str | None, sets: tuple[str, ...],
               batch_size: int) -> tuple[Any, str, dict[str, Any]]:
    """A run at fixed metaparameters (``noise-scale``, ``local-cbs``): the spec (at ``seed``),
    the storage URL and the ``--set`` values, after the workload's pre-flight at
    ``batch_size`` (a broken model or data: one line, before training)."""
    from tuner.run import predict  # the trial path: torch, the workload
    from tuner.run import specs as spec_mod

    spec = spec_mod.load(spec_path)
    if seed is not None:
        spec = spec_mod.with_seed(spec, seed)
    url = resolve_url(storage)
    overrides = predict.parse_set(spec, sets)
    spec_mod.preflight(spec, [batch_size])
    return spec, url, overrides


def _stored_line(stored: str | None) -> None:
    """Where a fixed-metaparameter run's result went (stderr)."""
    click.echo(f"stored in study {stored}" if stored else
               "not stored (--no-store, or no study of this spec at this batch size)", err=True)


def AT_FIXED_PARAMS(f):  # noqa: ANN001, ANN201, N802 - a click decorator
    """``--set`` / ``--storage`` / ``--seed`` / ``--format``: a run at fixed metaparameters
    (``noise-scale``, ``local-cbs``)."""
    for option in (FORMAT, SEED, click.option("--storage", help=STORAGE_HELP),
                   click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                                help="A metaparameter's value (repeatable), over the best "
                                "stored trial's.")):
        f = option(f)
    return f


@cli.command("noise-scale")
@click.argument("spec_path", metavar="SPEC")
@click.option("--batch-size", "-b", "batch_size", type=click.IntRange(min=2), required=True,
              help="The batch size B to train and measure at.")
@click.option("--steps", type=click.IntRange(min=1),
              help="Training steps (default: the best stored trial's steps-to-target at B, "
              "else the spec's budget).")
@click.option("--points", type=click.IntRange(min=1), default=20, show_default=True,
              help="Measured steps, spread evenly from step 0 (initialisation).")
@click.option("--micro-batches", "-k", type=click.IntRange(min=2),
              help="Micro-batches each measured batch is split into (the estimator's small "
              "batch is B/k); must divide B. Default 4; under DDP ([trainer] devices = N) the "
              "N ranks' shards, from the per-rank and all-reduced gradients.")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.5,
              show_default=True, help="Decay of the moving averages of |G|^2 and tr(Sigma) "
              "per measured point for each point's B_simple (0: none).")
@AT_FIXED_PARAMS
@click.option("--no-store", is_flag=True, help="Print only; store nothing.")
def noise_scale(spec_path: str, batch_size: int, steps: int | None, points: int,
                micro_batches: int | None, ema: float, sets: tuple[str, ...], storage: str | None,
                seed: int | None, fmt: str, no_store: bool) -> None:
    """Predict the critical batch size: the gradient noise scale B_simple along one run.

    Trains SPEC's workload at batch size B with fixed metaparameters (the best stored trial's
    at B, else every searched one given with --set) and measures, before the update of
    --points evenly spaced steps, |G|^2 and tr(Sigma) with McCandlish et al.'s unbiased
    two-batch estimators: each batch split into k micro-batches, whose mean squared gradient
    norm and the squared norm of their mean are |G_{B/k}|^2 and |G_B|^2 (App. A.1). B_simple
    = tr(Sigma)/|G|^2; each point's uses moving averages (--ema), the run's is the ratio of
    the means over all points. The NQM's is exact (closed form). Works on tensor workloads
    (also under DDP, [trainer] devices = N: the N ranks' gradients and their all-reduced
    mean, one all-reduce as DDP's) and LightningModules (one device).

    The result is appended to the study attr noise_scale of SPEC's study at B, when it is in
    the storage: `tuner curve` then shows B_simple beside B_crit and B_20%.
    """
    from tuner.core.predict import SUMMARY
    from tuner.run import predict  # the trial path: torch, the workload

    spec, url, overrides = _fixed_run(spec_path, seed, storage, sets, batch_size)
    ns, stored = predict.measure(spec, url, batch_size, steps, points, micro_batches, ema,
                                 overrides, store=not no_store)
    obj = {"spec": spec.name, **ns.to_json(), "stored_in": stored}
    rows = [[p.step, p.examples, p.grad_norm_sq, p.trace_sigma, p.b_simple] for p in ns.points]
    if fmt == "json":
        click.echo(json.dumps(obj, indent=2))
        return
    title = (f"{spec.name} at B = {batch_size}: {ns.steps} steps with {ns.params_from} "
             f"({', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in ns.params.items())})")
    _emit(fmt, [(title, ["step", "examples", "grad_norm_sq", "trace_sigma", "b_simple"],
                 rows)], obj)
    if fmt == "table":
        b = f"{ns.b_simple:.4g}" if ns.b_simple else "undefined (mean |G|^2 not positive)"
        click.echo(f"\nB_simple = {b} ({SUMMARY}); {ns.method}")
        if ns.diverged_at is not None:
            click.echo(f"the loss was not finite at step {ns.diverged_at}: the run stopped "
                       "there", err=True)
        _stored_line(stored)



def _factors(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 2:
        raise click.BadParameter(f"{value!r}: allowed: comma-separated integers >= 2, e.g. "
                                 "2,4,8,16")
    return sorted(set(out))


@cli.command("local-cbs")
@click.argument("spec_path", metavar="SPEC")
@click.option("--reference-batch-size", "-b", "batch_size", type=click.IntRange(min=1),
              required=True, help="B0: the reference run's batch size.")
@click.option("--factors", default="2,4,8,16,32,64", show_default=True, callback=_factors,
              help="Branch at these multiples k of B0.")
@click.option("--lr-rule", type=click.Choice(["linear", "sqrt", "constant"]), default="linear",
              show_default=True, help="A branch's learning rate: the reference's times k, "
              "sqrt(k) or 1.")
@click.option("--horizon", type=click.IntRange(min=1),
              help="Reference steps each comparison covers (a branch trains horizon / k steps, "
              "the same examples); every factor must divide it (default: a tenth of the "
              "reference run, rounded up to a multiple of the largest factor).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="A branch keeps up when its loss is at most (1 + this) x the reference's.")
@click.option("--points", type=click.IntRange(min=1), default=8, show_default=True,
              help="Checkpoints, spread evenly from step 0 to the reference's last step that "
              "leaves a horizon.")
@click.option("--steps", type=click.IntRange(min=1),
              help="The reference run's length (default: the best stored trial's "
              "steps-to-target at B0, else the spec's budget).")
@AT_FIXED_PARAMS
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write the local CBS against examples seen (PNG).")
@click.option("--no-store", is_flag=True, help="Print only; store nothing.")
def local_cbs(spec_path: str, batch_size: int, factors: list[int], lr_rule: str,
              horizon: int | None, tolerance: float, points: int, steps: int | None,
              sets: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
              plot: str | None, no_store: bool) -> None:
    """The local critical batch size along training (Merrill et al. 2025), by branching.

    One reference run at B0 with fixed metaparameters (the best stored trial's at B0, else
    every searched one given with --set). From --points checkpoints along it, branches train
    at k x B0 with the learning rate scaled by --lr-rule, horizon / k steps each (the same
    examples as the reference's next --horizon steps), from the reference's state (the
    optimizer's included). The local CBS at a checkpoint is the largest k x B0 whose loss then
    is within --tolerance of the reference's, every smaller k included. The NQM's is exact
    (expected losses, closed form); tensor workloads and LightningModules (a Trainer.fit per
    branch) compare the validation loss of one run each. A constant schedule, one device.

    The result is appended to the study attr local_cbs of SPEC's study at B0, when it is in
    the storage.
    """
    from tuner.run import branching  # the trial path: torch, the workload

    _check_output("--plot", plot)
    spec, url, overrides = _fixed_run(spec_path, seed, storage, sets, batch_size)
    r, stored = branching.measure(spec, url, batch_size, steps, points, factors, lr_rule,
                                  horizon, tolerance, overrides, store=not no_store)
    obj = {"spec": spec.name, **r.to_json(), "stored_in": stored}
    if len(r.checkpoints) < r.planned:
        click.echo(f"warning: the reference run diverged after step {r.checkpoints[-1].step}: "
                   f"{len(r.checkpoints)} of {r.planned} checkpoints", err=True)
    if fmt == "json":
        click.echo(json.dumps(obj, indent=2))
    else:
        head = ["step", "examples", "loss", "reference_loss", *[f"loss_B{k * batch_size}"
                                                               for k in factors], "local_cbs"]
        rows = [[c.step, c.examples, c.loss, c.reference_loss,
                 *[b.loss if b.loss is not None else "diverged" for b in c.branches],
                 c.local_cbs] for c in r.checkpoints]
        title = (f"{spec.name}: branches from B0 = {batch_size} ({r.params_from}), lr rule "
                 f"{lr_rule}, horizon {r.horizon} reference steps, tolerance {tolerance:g}")
        _emit(fmt, [(title, head, rows)], obj)
    if plot:
        from tuner.render import plots  # heavy: matplotlib, only for --plot

        Path(plot).write_bytes(plots.local_cbs(
            [c.examples for c in r.checkpoints], [c.local_cbs for c in r.checkpoints],
            batch_size, max(factors) * batch_size, f"{spec.name}: local CBS, B0 = {batch_size}"))
    if fmt == "table":
        click.echo(f"\n{r.method}; loss_B<k B0> = the branch's loss at the same examples as "
                   f"reference_loss (loss: the reference's at the checkpoint)")
        _stored_line(stored)

def _confirmed(storage: str | None, loaded: Sequence[SpecStudies]
               ) -> list[tuple[SpecStudies, list]]:
    """The ``tuner confirm`` results of the loaded specs that have confirmation studies."""
    from tuner.analysis.confirm import confirmation
    from tuner.store.source import load_spec

    reader = open_reader(resolve_url(storage))
    names = {s.user_attrs.get("spec_name") for s in reader.get_all_studies()}
    out = []
    for s in loaded:
        name = s.name + ".confirm"
        if name in names and not s.studies[0].attrs.get("rescored"):
            got = load_spec(reader, name, s.seed, curves=True)
            out.append((got, confirmation(got)))
    return out


@cli.group("import")
def import_() -> None:
    """Import other tools' study data as stored studies (see `tuner import batch-science -h`)."""


@import_.command("batch-science")
@click.argument("root", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Spec name of the imported studies (default: the workload's path "
              "with '.' for '/', e.g. fashion_mnist.simple_cnn_base.sgd; with several "
              "workloads under DIR, a prefix).")
@click.option("--target", "target", callback=lambda c, p, v: _goal(c, p, (v,))[0] if v else None,
              help="The stored target, e.g. 'val/classification_error<0.3' (default: "
                   "val/classification_error at the loosest value every batch size reached). "
                   "Analysis re-scores at any other with --target.")
@click.option("--storage", help=STORAGE_HELP)
def batch_science(root: Path, name: str | None, target: Goal | None, storage: str | None
                  ) -> None:
    """Google's batch_science data (Shallue et al. 2018) as Optuna studies with tuner's attrs.

    DIR is a workload directory (dataset/model/optimizer, holding BATCH/study.json and
    BATCH/TRIAL/{metadata.json,measurements.csv}) or any folder holding some, such as the
    unpacked batch_science_data.tar.bz2. One study per batch size; COMPLETE trials are reached
    or missed, INFEASIBLE ones diverged, INCOMPLETE ones failed (not counted, as in
    batch_science's loaders); every measured column is stored, so `tuner curve NAME --target
    'val/classification_error<0.3'` reproduces their steps-to-result. Re-importing adds
    nothing. Everything is read and checked before anything is written.
    """
    from tuner.interop.importer import import_batch_science, plan

    url = resolve_url(storage)
    work = plan(root, name, target)  # every file read and checked before the storage opens
    done = import_batch_science(open_storage(url), work, lambda line: click.echo(line, err=True))
    for d in done:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(d.statuses.items()))
        what = "already stored, nothing written" if d.already else "imported"
        click.echo(f"{d.name}: {what}: {len(d.batch_sizes)} batch sizes "
                   f"({', '.join(map(str, d.batch_sizes))}), {d.n_trials} trials ({counts}); "
                   f"target {d.goal}")
    click.echo(f"stored in {url}; next: tuner curve {done[0].name} --storage {url}", err=True)


@cli.group("export")
def export() -> None:
    """Write stored studies in other tools' layouts (see `tuner export batch-science -h`)."""


@export.command("batch-science")
@click.argument("spec", metavar="SPEC")
@click.argument("out", metavar="OUTDIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--storage", help=STORAGE_HELP)
@SEED
def export_batch_science(spec: str, out: Path, storage: str | None, seed: int | None) -> None:
    """A spec's studies in batch_science's layout, readable by its data_loader.

    Writes OUTDIR/WORKLOAD/SPEC/OPTIMIZER/B/study.json and B/TRIAL/{metadata.json,
    measurements.csv} (imported studies go back to their own path, as they were read).
    Statuses: reached or missed -> COMPLETE, diverged -> INFEASIBLE, pruned or failed ->
    INCOMPLETE. Refuses to write over an existing workload directory.
    """
    from tuner.interop.exporter import export_batch_science as write

    url = resolve_url(storage)
    check_storage_exists(url)
    ro = open_readonly(url)
    for s in load_all(ro, spec, seed):  # a series: each member to its own directory
        where, n = write(ro, s, out)
        click.echo(f"wrote {n} trials of {len(s.studies)} batch sizes to {where}")


@cli.command()
@click.option("--storage", help=STORAGE_HELP)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--read-only", is_flag=True, help="Open the storage read-only: browse, never "
              "write (notes and deletions in the dashboard fail). Implied for a storage that is "
              "not writable.")
def dashboard(storage: str | None, port: int, host: str, read_only: bool) -> None:
    """Open optuna-dashboard on the same storage (Ctrl-C stops it). Never creates a storage."""
    import optuna_dashboard  # heavy: optuna-dashboard, only when needed


    url = resolve_url(storage)
    check_storage_exists(url)
    read_only = read_only or not writable(url)
    try:  # a busy port or an unknown host: say so before opening anything
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(info[0], socket.SOCK_STREAM) as probe:
            probe.bind(info[4])
    except OSError as exc:
        raise UsageError(f"--port {port} / --host {host}: cannot listen there "
                         f"({exc.strerror or exc}); allowed: a free port on a local "
                         "address") from None
    st = open_readonly(url) if read_only else open_storage(url)
    click.echo(f"optuna-dashboard on http://{host}:{port} for {url}"
               + (" (read-only)" if read_only else ""), err=True)
    optuna_dashboard.run_server(st, host=host, port=port)


def main() -> None:
    """Console-script entry (also each worker's ``python -m tuner.cli``): bad input is one line
    on stderr and exit status 2."""
    atexit.unregister(_before_teardown)  # registered once, however often main() runs (tests)
    atexit.register(_before_teardown)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        cli.main(standalone_mode=False)
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except StorageUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: finished trials are stored and a running one is re-queued; run "
                   "the same command to resume", err=True)
        sys.exit(130)
    except Exception as exc:  # a database error that escaped the retrying storage

        err = db_error(exc)
        if not isinstance(err, (OperationalError, InterfaceError)):
            raise
        click.echo(f"error: storage: {cause(err)}", err=True)
        sys.exit(1)


def _before_teardown() -> None:
    """At exit: collect the garbage once, then freeze what is left (``gc.freeze``).

    The interpreter's teardown runs the cyclic collector over every object still tracked,
    again as modules are cleared: 0.20-0.25 s of a 1.2 s ``tuner curve`` over 10,000 trials
    (benchmarks/README.md). One collection here runs the finalizers of what is garbage now, as
    teardown would; the frozen survivors are then freed by reference counting without being
    scanned again. Runs as an atexit handler, so only when the process ends: exit status,
    output and the other handlers are unchanged.
    """
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    main()
