"""The Optuna side of `moc sweep`: storage, study, the trial loop, the report and the plots.

- Storage: any SQLAlchemy URL through Optuna's `RDBStorage` (SQLite by default; PostgreSQL or MySQL
  let workers on several machines share a study). Workers keep a heartbeat: a worker killed outright
  leaves its trial RUNNING until the next worker marks it FAIL after `2 x heartbeat` seconds, and
  Optuna's `RetryHeartbeatStaleTrialCallback` queues its parameters again.
- Ctrl-C or SIGTERM during a trial: the training runner saves a checkpoint and raises; Optuna marks
  the trial FAIL and this module queues its parameters again (`enqueue_trial`), so the next start of
  the same command runs them first. The study stays consistent: no trial is left RUNNING.
- `--trials N` is the number of complete trials the study should reach, counted over all workers
  (running and queued trials count as on their way), so a second worker shares the work.
- Each trial is a normal run directory `<output dir>/trial-NNNN`, produced by the same
  `load_run_config` -> `preflight` -> `run_training` path as `moc train`; the objective is the run's
  main metric from `eval/results.json` (the study's direction follows the task).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.config import ConfigError, ConfigIssue, load_run_config
from moc_cli.sweep.space import SearchParam, SweepSpace, trial_override

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///runs/sweeps.db"
MAX_CONSECUTIVE_FAILURES = 3
PLOTS = ("optimization_history.png", "param_importances.png")

Echo = Callable[[str], None]


@dataclass
class SweepPlan:
    """Everything a worker needs; `direction` and `metric` come from the task (see `plan_sweep`)."""

    recipe: str | None
    config_file: str | None
    space: SweepSpace
    study_name: str
    storage_url: str
    trials: int
    sampler: str
    output_dir: Path
    direction: str
    metric: str
    heartbeat: int = 60


def default_study_name(recipe: str | None, config_file: str | None) -> str:
    """`glue/rte` -> `glue-rte`; a config file's stem otherwise."""
    if recipe:
        return Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe.replace("/", "-")
    return Path(config_file or "sweep").stem


def _sample_values(param: SearchParam) -> list[Any]:
    """Values that stand for the whole range in the up-front config check."""
    return list(param.values) if param.discrete else [param.low, param.high]


def plan_sweep(
    recipe: str | None,
    config_file: str | None,
    space: SweepSpace,
    *,
    study_name: str | None,
    storage_url: str,
    trials: int | None,
    sampler: str,
    output_dir: Path | None,
    heartbeat: int,
) -> SweepPlan:
    """Check the space against the config schema and pre-flight (every issue at once: ConfigError)."""
    from moc_cli.config.preflight import preflight
    from moc_cli.tasks.registry import get_task_class

    sampler = space.check_sampler(sampler)
    cfg, provenance = load_run_config(recipe, config_file, list(space.overrides))
    issues: list[ConfigIssue] = list(preflight(cfg, provenance))
    for param in space.params:
        for value in _sample_values(param):
            try:
                load_run_config(recipe, config_file, [*space.overrides, trial_override(param.key, value)])
            except ConfigError as err:
                issues.extend(
                    ConfigIssue(
                        f"{param.key} (searched, at {value!r})", issue.message, suggestion=issue.suggestion
                    )
                    for issue in err.issues
                )
                break
    if trials is not None and trials < 1:
        issues.append(ConfigIssue("--trials", f"must be at least 1, got {trials}"))
    if issues:
        raise ConfigError(issues)
    if trials is None:
        trials = space.grid_size() if sampler == "grid" else 20
    task = get_task_class(cfg.task.name)
    metric = f"eval_{task.main_metric}"
    name = study_name or default_study_name(recipe, config_file)
    return SweepPlan(
        recipe=recipe,
        config_file=config_file,
        space=space,
        study_name=name,
        storage_url=storage_url,
        trials=trials,
        sampler=sampler,
        output_dir=output_dir or Path("runs") / "sweeps" / name,
        direction="maximize" if task.greater_is_better else "minimize",
        metric=metric,
        heartbeat=heartbeat,
    )


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this module prints one line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage for a SQLAlchemy URL (a SQLite file's folder is created); ConfigError on
    a URL that cannot be used."""
    import optuna
    import sqlalchemy

    _quiet_optuna()
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(
            ConfigIssue(
                "--storage", f"{url!r} is not a database URL; e.g. {DEFAULT_STORAGE} or postgresql://..."
            )
        ) from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # several workers share one file: wait for the other's write lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
    kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        kwargs = {
            "heartbeat_interval": heartbeat,
            "grace_period": 2 * heartbeat,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        }
    try:
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as err:
                # two workers starting on a new database both create its tables (and stamp its schema
                # version): the later one finds them made between its check and its write; a retry
                # sees them
                if ("already exists" not in str(err) and "alembic_version" not in str(err)) or attempt == 2:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    except ModuleNotFoundError as err:
        raise ConfigError(
            ConfigIssue(
                "--storage", f"{url!r} needs the database driver {err.name!r}: pip install {err.name}"
            )
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise ConfigError(
            ConfigIssue("--storage", f"cannot open {url!r}: {err.__class__.__name__}: {err}")
        ) from None


def make_sampler(plan: SweepPlan) -> optuna.samplers.BaseSampler:
    import optuna

    if plan.sampler == "grid":
        return optuna.samplers.GridSampler(plan.space.grid_values())
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler()


def open_study(plan: SweepPlan) -> optuna.Study:
    """Create the study, or join it (a second worker); refuse one made for another recipe or metric."""
    import optuna

    storage = open_storage(plan.storage_url, plan.heartbeat)
    study = optuna.create_study(
        study_name=plan.study_name,
        storage=storage,
        sampler=make_sampler(plan),
        direction=plan.direction,
        load_if_exists=True,
    )
    made_for = {"recipe": plan.recipe or plan.config_file, "metric": plan.metric}
    attrs = study.user_attrs
    if "metric" not in attrs:
        for key, value in {**made_for, "output_dir": str(plan.output_dir)}.items():
            study.set_user_attr(key, value)
        return study
    if any(attrs.get(k) != v for k, v in made_for.items()) or study.direction.name.lower() != plan.direction:
        raise ConfigError(
            ConfigIssue(
                "--study",
                f"study {plan.study_name!r} in {plan.storage_url} was created for {attrs.get('recipe')!r} "
                f"({study.direction.name.lower()} {attrs.get('metric')}), not {made_for['recipe']!r} "
                f"({plan.direction} {plan.metric}); choose another --study name",
            )
        )
    return study


def trial_metric(run_dir: Path, plan: SweepPlan) -> float:
    """The run's main metric from eval/results.json (RuntimeError when it has none)."""
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    key = results.get("main_metric")
    split = results.get("summary", {}).get("eval_split")
    value = results.get("metrics", {}).get(split, {}).get(key) if key and split else None
    if value is None or not math.isfinite(value):
        raise RuntimeError(
            f"{run_dir}: eval/results.json has no finite main metric ({key}={value!r}); the sweep needs an "
            "evaluation split"
        )
    if key != plan.metric:
        raise RuntimeError(f"{run_dir}: the run reports {key}, the study optimises {plan.metric}")
    return float(value)


def _format(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_format(v)}" for k, v in params.items())


def suggest(trial: optuna.Trial, param: SearchParam) -> Any:
    if param.discrete:
        return trial.suggest_categorical(param.key, list(param.values))
    if param.kind in ("int", "logint"):
        return trial.suggest_int(
            param.key, int(param.low), int(param.high), step=param.step or 1, log=param.kind == "logint"
        )
    return trial.suggest_float(param.key, float(param.low), float(param.high), log=param.kind == "loguniform")


class Worker:
    """Runs trials of one study until it has enough (see the module docstring)."""

    def __init__(self, plan: SweepPlan, study: optuna.Study, echo: Echo) -> None:
        self.plan = plan
        self.study = study
        self.echo = echo
        self.current: dict[str, Any] = {}

    def objective(self, trial: optuna.Trial) -> float:
        from moc_cli.config.preflight import preflight
        from moc_cli.training import run_training

        values = {p.key: suggest(trial, p) for p in self.plan.space.params}
        self.current = {"number": trial.number, "params": values}
        run_dir = self.plan.output_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        self.echo(f"trial {trial.number}: {_params_text(values)} -> {run_dir}")
        overrides = [
            *self.plan.space.overrides,
            *(trial_override(k, v) for k, v in values.items()),
            trial_override("output.dir", str(run_dir)),
        ]
        cfg, provenance = load_run_config(self.plan.recipe, self.plan.config_file, overrides)
        issues = preflight(cfg, provenance)
        if issues:
            raise ConfigError(issues)
        return trial_metric(run_training(cfg, provenance, None), self.plan)

    def remaining(self) -> int:
        """Trials still to start by some worker (queued retries always run)."""
        import optuna

        TrialState = optuna.trial.TrialState
        optuna.storages.fail_stale_trials(self.study)  # a killed worker's trial: FAIL, queued again
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return 1
        on_the_way = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)]
        left = self.plan.trials - len(on_the_way)
        if self.plan.sampler == "grid":
            # a grid point is done once tried (a failed one too: interrupted ones are queued again)
            tried = {json.dumps(t.params, sort_keys=True) for t in trials if t.params}
            left = min(left, self.plan.space.grid_size() - len(tried))
        return max(left, 0)

    def run(self) -> int:
        """Run trials; the exit code: 0 done, 1 after repeated failures, 130/143 when interrupted."""
        import optuna

        failures = 0
        while self.remaining() > 0:
            self.current = {}
            try:
                self.study.optimize(self.objective, n_trials=1, catch=())
            except KeyboardInterrupt as exc:  # Ctrl-C; the runner's RunTerminated (SIGTERM) is one too
                code = getattr(exc, "exit_code", 130)
                if self.current:
                    self.study.enqueue_trial(
                        self.current["params"], user_attrs={"retry_of": self.current["number"]}
                    )
                    self.echo(
                        f"trial {self.current['number']} interrupted: marked FAIL and queued again; run the same "
                        "command to continue the study"
                    )
                return code
            except Exception as exc:
                failures += 1
                number = self.current.get("number", "?")
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.echo(f"trial {number} failed: {text}")
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    self.echo(
                        f"error: {failures} trials in a row failed; stopping (the study keeps them as FAIL)"
                    )
                    return 1
                continue
            failures = 0
            last = max(
                (
                    t
                    for t in self.study.get_trials(deepcopy=False)
                    if t.state == optuna.trial.TrialState.COMPLETE
                ),
                key=lambda t: t.datetime_complete,
                default=None,
            )
            if last is not None:
                best = self.study.best_trial
                self.echo(
                    f"trial {last.number}: {self.plan.metric}={_format(last.value)} "
                    f"(best {_format(best.value)}, trial {best.number})"
                )
        return 0


def load_study(name: str, storage_url: str) -> optuna.Study:
    """An existing study; ConfigError naming the studies the storage has otherwise."""
    import optuna

    storage = open_storage(storage_url)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(
            ConfigIssue("--show", f"no study {name!r} in {storage_url}; studies there: {known}")
        )
    return optuna.load_study(study_name=name, storage=storage)


def report(study: optuna.Study, top: int) -> str:
    """The study's state counts and its best complete trials as a table."""
    import optuna

    TrialState = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    metric = study.user_attrs.get("metric", "value")
    direction = study.direction.name.lower()
    counts = [f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in TrialState]
    lines = [f"study {study.study_name}: {direction} {metric}; trials: {', '.join(counts)}"]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return "\n".join([*lines, "no complete trial yet"])
    done.sort(key=lambda t: t.value, reverse=direction == "maximize")
    keys = sorted({k for t in done for k in t.params})
    header = ["rank", "trial", metric, *keys, "run"]
    rows = [
        [
            str(i),
            str(t.number),
            _format(t.value),
            *(_format(t.params.get(k, "")) for k in keys),
            t.user_attrs.get("run_dir", ""),
        ]
        for i, t in enumerate(done[:top], start=1)
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines.append("")
    for row in [header, *rows]:
        lines.append(
            "  ".join(
                cell.ljust(w) if c == len(header) - 1 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    best = done[0]
    lines += ["", f"best: trial {best.number}, {metric}={_format(best.value)}: {_params_text(best.params)}"]
    return "\n".join(lines)


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history and parameter importances as PNGs (importances need 2 complete trials
    that differ in a parameter); returns the files written."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    makers = {PLOTS[0]: optuna_plots.plot_optimization_history, PLOTS[1]: optuna_plots.plot_param_importances}
    varied = any(len({json.dumps(t.params.get(k)) for t in done}) > 1 for k in done[0].params)
    for name, make in makers.items():
        if name == PLOTS[1] and (len(done) < 2 or not varied):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = make(study)
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.tight_layout()
        figure.savefig(folder / name, dpi=100)
        plt.close(figure)
        written.append(folder / name)
    return written
