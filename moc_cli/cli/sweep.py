"""`moc sweep`: hyperparameter search on an Optuna study; each trial is a `moc train` run directory."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from moc_cli.cli.common import EXIT_USAGE, ConfigFileOption, cli_errors, err, fail_config
from moc_cli.config import ConfigError, ConfigIssue

EPILOG = """\
Examples:

  moc sweep --recipe glue/rte training.learning_rate=loguniform:1e-4:1e-2 method.r=choice:8,16,32 --trials 20 --storage sqlite:///runs/sweeps.db --study rte-moc

  moc sweep --recipe glue/rte training.learning_rate=grid:1e-4,3e-4,1e-3 training.max_steps=300

  moc sweep --show rte-moc --storage sqlite:///runs/sweeps.db

Search spaces: key=loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH[:STEP], logint:LOW:HIGH,
choice:A,B,C, grid:A,B,C (grid search: Optuna's GridSampler); other key=value items are fixed
overrides of every trial. The same command in a second terminal (or on another machine, with a
PostgreSQL/MySQL --storage URL) adds a worker to the study. Ctrl-C or a kill leaves the study
consistent: the interrupted trial is marked FAIL and its parameters queued again, so the next start
continues. Trials are run folders <output dir>/trial-NNNN; the objective is the run's main metric
(eval/results.json), maximised or minimised as the task says. Plots: <output dir>/plots/.
"""


class Sampler(str, Enum):
    auto = "auto"
    tpe = "tpe"
    random = "random"
    grid = "grid"


def sweep(
    items: Annotated[
        list[str] | None,
        typer.Argument(
            help="Search spaces `key.path=KIND:ARGS` (see below) and fixed overrides `key.path=value`.",
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", "-r", help="Packaged recipe name (see `moc ls`) or a recipe YAML."),
    ] = None,
    config: ConfigFileOption = None,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            "-n",
            help="Complete trials the study should reach, over all workers. Default: 20; grid: the grid size.",
        ),
    ] = None,
    storage: Annotated[
        str,
        typer.Option("--storage", help="Optuna storage: any SQLAlchemy URL (postgresql://, mysql://...)."),
    ] = "sqlite:///runs/sweeps.db",
    study: Annotated[
        str | None, typer.Option("--study", help="Study name. Default: the recipe name, e.g. glue-rte.")
    ] = None,
    sampler: Annotated[
        Sampler, typer.Option("--sampler", help="auto: grid when a grid: space is given, else TPE.")
    ] = Sampler.auto,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir", "-o", help="Folder of the trial runs and plots. Default: runs/sweeps/<study>."
        ),
    ] = None,
    show: Annotated[
        str | None,
        typer.Option(
            "--show", help="Print the best trials of this study (and write its plots), run nothing."
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Trials listed by --show and at the end of a sweep.")] = 5,
    heartbeat: Annotated[
        int,
        typer.Option(
            "--heartbeat",
            help="Seconds between a worker's heartbeats; a killed worker's trial is failed and queued again "
            "after twice this.",
        ),
    ] = 60,
) -> None:
    """Search hyperparameters with Optuna: every trial is a `moc train` run of the recipe.

    The search space and config are checked completely (exit code 2) before the study is touched.
    """
    with cli_errors("sweep", interrupt_hint="; run the same command to continue the study"):
        try:
            if show is not None:
                _show(show, storage, output_dir, top)
                return
            if recipe is None and config is None:
                err("error: give --recipe NAME (see `moc ls`) or --config FILE, or --show STUDY")
                raise typer.Exit(EXIT_USAGE)
            code = _run(
                items or [], recipe, config, trials, storage, study, sampler.value, output_dir, top, heartbeat
            )
        except ConfigError as exc:
            raise fail_config(exc) from None
    if code:
        raise typer.Exit(code)


def _show(name: str, storage: str, output_dir: Path | None, top: int) -> None:
    from moc_cli.sweep.study import load_study, report, write_plots

    found = load_study(name, storage)
    typer.echo(report(found, top))
    folder = output_dir or Path(found.user_attrs.get("output_dir", Path("runs") / "sweeps" / name))
    _echo_plots(write_plots(found, folder / "plots"))


def _echo_plots(paths: list[Path]) -> None:
    if paths:
        typer.echo("plots: " + ", ".join(str(p) for p in paths))


def _run(
    items: list[str],
    recipe: str | None,
    config: Path | None,
    trials: int | None,
    storage: str,
    study_name: str | None,
    sampler: str,
    output_dir: Path | None,
    top: int,
    heartbeat: int,
) -> int:
    from moc_cli.sweep.space import parse_sweep_items
    from moc_cli.sweep.study import Worker, open_study, plan_sweep, report, write_plots

    space = parse_sweep_items(items)
    if not space.params:
        raise ConfigError(
            ConfigIssue(
                "search space",
                "nothing to search; give at least one key=KIND:ARGS item, e.g. training.learning_rate=loguniform:1e-4:1e-2",
            )
        )
    plan = plan_sweep(
        recipe,
        str(config) if config else None,
        space,
        study_name=study_name,
        storage_url=storage,
        trials=trials,
        sampler=sampler,
        output_dir=output_dir,
        heartbeat=heartbeat,
    )
    found = open_study(plan)
    typer.echo(
        f"study {plan.study_name} in {storage}: {plan.direction} {plan.metric} over {len(space.params)} "
        f"key(s), {plan.sampler} sampler, {plan.trials} complete trials wanted; runs in {plan.output_dir}"
    )
    code = Worker(plan, found, typer.echo).run()
    typer.echo(report(found, top))
    _echo_plots(write_plots(found, plan.output_dir / "plots"))
    return code
