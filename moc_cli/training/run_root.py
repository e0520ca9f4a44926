"""Which run folder a `moc train` invocation writes, and which checkpoint it resumes from."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from moc_cli.training.errors import RunSetupError
from moc_cli.training.run_dir import RUN_NAME_FORMAT, RunDir, latest_run_dir, new_run_dir

if TYPE_CHECKING:
    from moc_cli.config import RunConfig


def default_output_base(cfg: RunConfig) -> Path:
    """`runs/<recipe or task>`: the folder that holds a recipe's timestamped runs."""
    name = cfg.recipe or cfg.task.name
    name = Path(str(name)).stem if str(name).endswith((".yaml", ".yml")) else str(name)
    return Path("runs") / name


def default_output_dir(cfg: RunConfig) -> Path:
    """`runs/<recipe or task>/<timestamp>` when `output.dir` is not set (the name is not claimed)."""
    return default_output_base(cfg) / datetime.now().strftime(RUN_NAME_FORMAT)


def resolve_run_root(cfg: RunConfig, provenance: dict[str, str], resume: str | None) -> Path:
    """The run folder of this invocation.

    An `output.dir` the user gave (override, --output-dir, --config file, library call) is the run
    folder. A recipe's `output.dir` (e.g. `runs/glue/sst2`), like the default `runs/<recipe>`, is
    the parent of timestamped runs: each run gets a new folder, and `--resume auto` continues the
    newest one. `--resume PATH` without an output.dir continues the run that PATH belongs to.
    """
    given = cfg.output.dir
    from_recipe = str((provenance or {}).get("output.dir", "")).startswith("recipe:")
    if given and not from_recipe:
        return Path(given).expanduser()
    if resume is not None and resume != "auto":
        # --resume continues that run's directory: RUN/checkpoints/checkpoint-N or RUN itself.
        path = Path(resume).expanduser().resolve()
        return path if (path / "checkpoints").is_dir() else path.parent.parent
    base = Path(given).expanduser() if given else default_output_base(cfg)
    if resume == "auto":
        latest = latest_run_dir(base)
        if latest is not None:
            return latest
        if (base / "checkpoints").is_dir():  # a run written before runs had timestamped folders
            return base
    return new_run_dir(base)


def resume_checkpoint(resume: str | None, run: RunDir) -> Path | None:
    """The checkpoint to resume from for `--resume` (None: start fresh).

    `auto` takes the latest checkpoint of the run that validates (damaged ones are skipped with a
    warning naming the file); a path must be a valid `checkpoint-N` (or a run directory).
    """
    if resume is None:
        return None
    from moc_cli.reliability.checkpoints import CheckpointError, resolve_resume

    try:
        found = resolve_resume(resume, run.checkpoints)
    except CheckpointError as exc:
        raise RunSetupError(str(exc)) from exc
    if found is None:
        raise RunSetupError(
            f"--resume auto found no usable checkpoint in {run.checkpoints}; start without --resume, "
            "or pass --resume PATH to a checkpoint-N folder"
        )
    return found


def with_schema_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml with the defaults of keys added to the schema since it was written (so
    `model.allow_pickle: None -> False` is no change); as saved if it no longer validates."""
    from pydantic import ValidationError

    from moc_cli.config import RunConfig

    try:
        return RunConfig.model_validate(saved).model_dump(mode="json")
    except ValidationError:
        return saved


def check_resume_config(run: RunDir, current: RunConfig) -> list[str]:
    """Compare a resumed run's config with the run's config.yaml; return the changes it applies.

    Changes to the model, method, task, data, seed, optimizer or schedule are refused (RunSetupError,
    exit code 2) before anything loads: the checkpoint was made for the saved values.
    """
    from moc_cli.training.checkpointing import split_drift

    if not run.config.is_file():
        return []
    saved = with_schema_defaults(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {})
    # Compared as the YAML config.yaml holds, since that is what the saved side is.
    refused, applied = split_drift(saved, current.model_dump(mode="json"))
    if refused:
        lines = "".join(f"\n      {change}" for change in refused)
        raise RunSetupError(
            f"the config differs from {run.config} in settings a resumed run cannot change (its "
            f"checkpoints were made with the saved values):{lines}\n"
            "    restore them to resume, or start a new run with another --output-dir",
            "--resume",
        )
    return applied
