"""The ``tuner`` command: thin wrappers that parse, call and print."""

from __future__ import annotations

import sys

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
@click.option("--quiet", "-q", is_flag=True, help="No per-trial progress lines.")
def run(spec_path: str, batch_sizes: tuple[int, ...], trials: int | None, storage: str | None,
        seed: int | None, quiet: bool) -> None:
    """Create or resume SPEC's batch-size studies and top each up to N trials.

    Re-running a finished spec adds nothing. Progress goes to stderr; the summary table
    (best steps-to-target per batch size) to stdout.
    """
    from tuner import runner, spec as spec_mod, storage as storage_mod
    from tuner.tables import points_table

    spec = spec_mod.load(spec_path)
    if seed is not None:
        spec = spec_mod.with_seed(spec, seed)
    chosen = runner.select_batch_sizes(spec, batch_sizes)
    url = storage_mod.resolve_url(storage)
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    points = runner.run(spec, url, chosen, trials or spec.trials, echo)
    click.echo(points_table(spec, points))


@cli.command()
@click.option("--storage", help=STORAGE_HELP)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def dashboard(storage: str | None, port: int, host: str) -> None:
    """Open optuna-dashboard on the same storage (Ctrl-C stops it)."""
    from tuner.storage import open_storage, resolve_url

    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError("optuna-dashboard is not installed; pip install optuna-dashboard") from None
    url = resolve_url(storage)
    click.echo(f"optuna-dashboard on http://{host}:{port} for {url}", err=True)
    optuna_dashboard.run_server(open_storage(url), host=host, port=port)


def main() -> None:
    """Console-script entry: bad input is one line on stderr and exit status 2."""
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
        click.echo("interrupted: finished trials are stored; run the same command to resume",
                   err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
