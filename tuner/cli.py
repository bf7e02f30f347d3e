"""The ``tuner`` command: thin wrappers that parse, call and print."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tuner.errors import UsageError

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
@click.option("--seed", type=int, help="Override the spec's seed (a separate set of studies).")
@click.option("--workers", "-w", type=click.IntRange(min=1),
              help="Start this many local worker processes (default 1, or one per --gpus).")
@click.option("--gpus", help="GPU indices, e.g. 0,1,2,3: one worker per GPU, each pinned to "
              "its GPU with CUDA_VISIBLE_DEVICES.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=30, show_default=True,
              help="Seconds between a running trial's heartbeats; a trial silent for twice as "
              "long (its worker died) is re-run by another worker.")
@click.option("--quiet", "-q", is_flag=True, help="No per-trial progress lines.")
def run(spec_path: str, batch_sizes: tuple[int, ...], trials: int | None, storage: str | None,
        seed: int | None, workers: int | None, gpus: str | None, heartbeat: int,
        quiet: bool) -> None:
    """Create or resume SPEC's batch-size studies and top each up to N trials.

    Re-running a finished spec adds nothing. Progress goes to stderr; the summary table
    (best steps-to-target per batch size) to stdout.

    Any number of `tuner run` processes can work on one spec at once, on one machine or many,
    against one --storage (PostgreSQL for several machines): they share the trials out, stop
    at exactly N per batch size, and re-run the trial of a worker that died. Ctrl-C or SIGTERM
    re-queues the running trial and stops.
    """
    from tuner import runner, spec as spec_mod, storage as storage_mod, workers as workers_mod
    from tuner.tables import points_table

    spec = spec_mod.load(spec_path)
    if seed is not None:
        spec = spec_mod.with_seed(spec, seed)
    chosen = runner.select_batch_sizes(spec, batch_sizes)
    gpu_ids = workers_mod.parse_gpus(gpus)
    n_workers = workers or max(1, len(gpu_ids))
    url = storage_mod.resolve_url(storage)
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    n = trials or spec.trials
    if n_workers == 1 and not gpu_ids:
        points = runner.run(spec, url, chosen, n, echo, heartbeat)
    else:
        if storage_mod.sqlite_file(url) is None and url.startswith("sqlite"):
            raise UsageError(f"--workers: an in-memory storage ({url}) cannot be shared; "
                             "allowed: a SQLite file or a PostgreSQL URL")
        runner.prepare(spec, url, chosen, heartbeat)  # refuse a changed spec once, up front
        args = ["run", spec_path, "--trials", str(n), "--storage", url, "--heartbeat",
                str(heartbeat), *(["--seed", str(seed)] if seed is not None else []),
                *[a for b in chosen for a in ("-b", str(b))], *(["-q"] if quiet else [])]
        echo(f"storage: {url}; starting {n_workers} workers"
             + (f" on GPUs {','.join(gpu_ids)}" if gpu_ids else ""))
        code = workers_mod.launch(args, n_workers, gpu_ids, echo)
        if code:
            raise SystemExit(code)
        points = runner.points(runner.prepare(spec, url, chosen, heartbeat)[1])
    click.echo(points_table(spec, points))


FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]),
                      default="table", show_default=True, help="Output format.")
SEED = click.option("--seed", type=int, help="Which seed's studies (default: the spec's, or the "
                    "only one stored).")
SPECS = click.argument("specs", metavar="SPEC...", nargs=-1, required=True)


def _load(specs: tuple[str, ...], storage: str | None, seed: int | None):  # noqa: ANN202
    """Open the storage (never creating it) and load each spec's studies."""
    from tuner.analysis.load import check_storage_exists, load
    from tuner.storage import open_storage, resolve_url

    url = resolve_url(storage)
    check_storage_exists(url)
    st = open_storage(url)
    loaded = [load(st, s, seed) for s in specs]
    for line in (w for s in loaded for w in s.warnings):
        click.echo(line, err=True)
    return st, loaded


def _emit(fmt: str, blocks: list[tuple[str, list[str], list[list]]], json_obj: object) -> None:
    """Print (title, header, rows) blocks as tables or CSV, or ``json_obj`` as JSON."""
    import csv
    import json

    from tuner.tables import render, to_csv

    if fmt == "json":
        click.echo(json.dumps(json_obj, indent=2, default=str))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["spec", *blocks[0][1]])
        for title, header, rows in blocks:
            w.writerows(to_csv(header, rows, [title]))
    else:
        click.echo("\n\n".join(f"{title}\n{render(header, rows)}" for title, header, rows in blocks))


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@FORMAT
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the scaling figure (PNG).")
@click.option("--lr-plot", type=click.Path(dir_okay=False),
              help="Write the optimal-learning-rate figure (PNG).")
@click.option("--n-boot", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the 95 % interval of the fit.")
def curve(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
          plot: str | None, lr_plot: str | None, n_boot: int) -> None:
    """Scaling curve(s): best steps-to-target per batch size and the critical batch size.

    SPEC is a spec file or a spec name already in storage; give several to compare them.
    Fits S(B) = S_min (1 + B_noise/B) (McCandlish et al.) and reports S_min, E_min,
    B_crit = E_min/S_min with a 95 % bootstrap interval.
    """
    from tuner.analysis import plots
    from tuner.analysis.summary import curve_json, spec_curve
    from tuner.tables import curve_rows, fit_line

    _, loaded = _load(specs, storage, seed)
    curves = [spec_curve(s, n_boot) for s in loaded]
    objs = [curve_json(c) for c in curves]
    blocks = [(c.name if fmt == "csv" else fit_line(c), *curve_rows(c)) for c in curves]
    _emit(fmt, blocks, objs[0] if len(objs) == 1 else objs)
    for path, fig in ((plot, plots.scaling), (lr_plot, plots.learning_rates)):
        if path:
            Path(path).write_bytes(fig(curves))
            click.echo(f"wrote {path}", err=True)


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@FORMAT
@click.option("--margin", type=click.FloatRange(0, 0.5), default=0.05, show_default=True,
              help="Share of a range (log space for log params) that counts as its edge.")
@click.option("--top-frac", type=click.FloatRange(min=0), default=0.10, show_default=True,
              help="Near-best trials: within this fraction of the best steps.")
def edges(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
          margin: float, top_frac: float) -> None:
    """Is any batch size's best trial at a search-space edge? Exit 1 if so, 0 if clean.

    "unstable beyond edge" (every trial past the best toward that edge diverged) does not fail.
    """
    from dataclasses import asdict

    from tuner.analysis.summary import edge_findings
    from tuner.tables import edge_rows

    _, loaded = _load(specs, storage, seed)
    found = {s.name: edge_findings(s, margin, top_frac) for s in loaded}
    blocks = [(name, *edge_rows(f)) for name, f in found.items()]
    _emit(fmt, blocks, {name: [asdict(x) | {"failing": x.failing} for x in f]
                        for name, f in found.items()})
    failing = [x for f in found.values() for x in f if x.failing]
    if fmt == "table":
        click.echo("\n" + (f"{len(failing)} best trial(s) at an edge" if failing else
                            "edges clean: no best trial at an edge"))
    if failing:
        raise SystemExit(1)


@cli.command()
@SPECS
@click.option("--storage", help=STORAGE_HELP)
@SEED
@FORMAT
@click.option("--factor", type=click.FloatRange(min=1), default=1.25, show_default=True,
              help="Good region: trials within this factor of the best steps.")
@click.option("--plots", "plot_dir", type=click.Path(file_okay=False),
              help="Write the learning-rate x momentum scatter and per-parameter plots here.")
def sensitivity(specs: tuple[str, ...], storage: str | None, seed: int | None, fmt: str,
                factor: float, plot_dir: str | None) -> None:
    """Per batch size: outcomes, the good region of each parameter, importances.

    "unknown" counts trials pruned before FACTOR x the best steps: they cannot be classified;
    a lossless-pruner slack >= FACTOR would have run them long enough to settle it.
    """
    from dataclasses import asdict

    from tuner.analysis import plots
    from tuner.analysis.sensitivity import sensitivity as sens
    from tuner.tables import sensitivity_rows

    _, loaded = _load(specs, storage, seed)
    results = {s.name: [sens(st, factor) for st in s.studies] for s in loaded}
    blocks = [(name, *sensitivity_rows(r)) for name, r in results.items()]
    _emit(fmt, blocks, {n: [asdict(x) for x in r] for n, r in results.items()})
    if fmt == "table":
        for name, r in results.items():
            unknown = sum(x.n_unknown for x in r)
            if unknown:
                slack = r[0].slack
                click.echo(f"\n{name}: {unknown} pruned trial(s) are unknown: stopped before "
                           f"{factor}x the best steps (pruner slack {slack}); a slack >= {factor} "
                           "would run them long enough to classify them")
    if plot_dir:
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
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html.")
@click.option("--n-boot", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Also attach the scaling figure and a note to each study for optuna-dashboard.")
def report(specs: tuple[str, ...], storage: str | None, seed: int | None, out: str, n_boot: int,
           dashboard: bool) -> None:
    """One self-contained HTML page with every table and figure, and a verdict box."""
    from tuner.analysis import report as report_mod
    from tuner.analysis.summary import spec_curve

    st, loaded = _load(specs, storage, seed)
    curves = [spec_curve(s, n_boot) for s in loaded]
    page = report_mod.write(Path(out), loaded, curves)
    click.echo(f"wrote {page}")
    if dashboard:
        n = report_mod.attach_to_dashboard(st, loaded, curves)
        click.echo(f"attached the scaling figure to {n} studies (optuna-dashboard)", err=True)


@cli.command()
@click.option("--storage", help=STORAGE_HELP)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def dashboard(storage: str | None, port: int, host: str) -> None:
    """Open optuna-dashboard on the same storage (Ctrl-C stops it)."""
    import optuna_dashboard

    from tuner.storage import open_storage, resolve_url

    url = resolve_url(storage)
    click.echo(f"optuna-dashboard on http://{host}:{port} for {url}", err=True)
    optuna_dashboard.run_server(open_storage(url), host=host, port=port)


def main() -> None:
    """Console-script entry: bad input is one line on stderr and exit status 2."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        cli.main(standalone_mode=False)
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: finished trials are stored and a running one is re-queued; run "
                   "the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
