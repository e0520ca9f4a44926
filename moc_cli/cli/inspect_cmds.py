"""Commands that inspect recipes, configs and the environment: ls, cat, validate, env, schema."""

from __future__ import annotations

import json
import platform
import sys
from typing import Annotated, Any

import typer

from moc_cli.cli.common import ConfigFileOption, cli_errors, err, fail_config, load_or_exit
from moc_cli.config import (
    ConfigError,
    ConfigIssue,
    find_recipe,
    list_recipes,
    recipe_description,
    resource_dir,
)
from moc_cli.config.errors import did_you_mean

LS_EPILOG = """\
Examples:

  moc ls

  moc cat glue/sst2
"""
CAT_EPILOG = """\
Examples:

  moc cat glue/sst2

  moc cat glue/sst2 method.name=lora training.learning_rate=5e-4
"""
VALIDATE_EPILOG = """\
Examples:

  moc validate glue/sst2

  moc validate my_recipe.yaml method.r=32

  moc validate glue/sst2 --estimate-memory training.per_device_train_batch_size=64
"""
ENV_EPILOG = """\
Examples:

  moc env

  moc env --json > env.json
"""
SCHEMA_EPILOG = """\
Examples:

  moc schema

  moc schema --field training

  moc schema --field method.r
"""

_RecipeArg = Annotated[str, typer.Argument(help="Recipe name (see `moc ls`) or a path to a recipe YAML.")]
_OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Overrides `key.path=value`; `~key.path` resets a key.", show_default=False),
]


def ls() -> None:
    """List the packaged recipes, grouped by suite, with their descriptions."""
    names = list_recipes()
    if not names:
        err(f"no recipes found under {resource_dir('recipes')}")
        return
    width = max(len(n) for n in names)
    suite = None
    for name in names:
        head = name.split("/", 1)[0] if "/" in name else "(top level)"
        if head != suite:
            if suite is not None:
                typer.echo("")
            typer.echo(f"{head}:")
            suite = head
        typer.echo(f"  {name.ljust(width)}  {recipe_description(find_recipe(name))}".rstrip())


def cat(
    recipe: _RecipeArg,
    overrides: _OverridesArg = None,
    config: ConfigFileOption = None,
) -> None:
    """Print a recipe fully resolved, each value commented with its source."""
    cfg, provenance = load_or_exit(recipe, config, list(overrides or []))
    from moc_cli.config import render_config

    typer.echo(render_config(cfg, provenance), nl=False)


def validate(
    recipe: _RecipeArg,
    overrides: _OverridesArg = None,
    config: ConfigFileOption = None,
    estimate_memory: Annotated[
        bool,
        typer.Option(
            "--estimate-memory",
            help="Also estimate the training memory per process from the model's config "
            "(no weights or data are loaded).",
        ),
    ] = False,
) -> None:
    """Check a recipe against the schema plus cheap pre-flight checks (task, model, data files).

    "OK" is printed only once every requested check passed, so the output and the exit code agree.
    """
    from moc_cli.config.preflight import preflight

    cfg, provenance = load_or_exit(recipe, config, list(overrides or []))
    issues = preflight(cfg, provenance)
    if issues:
        raise fail_config(ConfigError(issues))
    # Before "OK": an estimate that fails (exit 1 or 2) must not follow an OK line.
    report = _memory_estimate_report(cfg) if estimate_memory else None
    typer.echo(
        f"OK: {recipe} (task {cfg.task.name}, model {cfg.model.name_or_path}, method {cfg.method.name})"
    )
    if report is not None:
        lines, warning = report
        for line in lines:
            typer.echo(line)
        if warning:
            err(warning)


def _available_memory() -> tuple[int, str]:
    """(bytes, where): free memory of the first GPU, else available RAM."""
    import psutil
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(0)
        return free, f"free on {torch.cuda.get_device_name(0)}"
    return psutil.virtual_memory().available, "available RAM"


def _memory_estimate_report(cfg: Any) -> tuple[list[str], str | None]:
    """(stdout lines, stderr warning or None) of `--estimate-memory`, with the time it took."""
    import time

    with cli_errors("memory estimate"):
        started = time.perf_counter()
        import peft  # noqa: F401  (imported here so that the time below tells imports and estimate apart)
        import transformers  # noqa: F401

        from moc_cli.training.memory_estimate import GIB, estimate_memory

        imported = time.perf_counter()
        estimate = estimate_memory(cfg)
        estimated = time.perf_counter()
        available, where = _available_memory()
    lines = ["Memory estimate (training, one process):", *estimate.lines()]
    warning = None
    if estimate.total_bytes > available:
        warning = (
            f"warning: the estimate exceeds the {available / GIB:.1f} GiB {where}; lower "
            "training.per_device_train_batch_size (activations grow with it) and raise "
            "training.gradient_accumulation_steps to keep the effective batch, or set "
            "training.gradient_checkpointing=true"
        )
    else:
        lines.append(f"  fits: {available / GIB:.1f} GiB {where}")
    lines.append(
        f"  took {estimated - imported:.1f} s on the meta device (no weights or data loaded), "
        f"after {imported - started:.1f} s importing torch, transformers and peft"
    )
    return lines, warning


def _moc_cli_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("moc_cli")
    except importlib.metadata.PackageNotFoundError:
        return f"{getattr(sys.modules.get('moc_cli'), '__version__', '?')} (source tree)"


def collect_env() -> dict[str, Any]:
    """Versions and devices for bug reports (imports torch, nothing else heavy)."""
    from moc_cli import environment

    installed = environment.versions((*environment.CORE_DISTRIBUTIONS[1:], "typer", "pydantic"))
    info: dict[str, Any] = {
        "moc_cli": _moc_cli_version(),
        "moc_cli git": environment.git_sha(short=True, mark_dirty=True) or "n/a",
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
    }
    info |= {dist: version or "not installed" for dist, version in installed.items()}
    try:
        import torch
    except ImportError:
        return info
    info["cuda"] = (
        f"{torch.version.cuda}, {torch.cuda.device_count()} device(s): "
        + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if torch.cuda.is_available()
        else "not available"
    )
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = "available" if mps is not None and mps.is_available() else "not available"
    info["cpu threads"] = torch.get_num_threads()
    return info


def env(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Print versions and devices to paste into a bug report."""
    info = collect_env()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        typer.echo(f"{key.ljust(width)}  {value}")


def schema(
    field: Annotated[
        str | None, typer.Option("--field", "-f", help="A key path (training.optim) or a section (training).")
    ] = None,
) -> None:
    """Show every config key with its type, default and help."""
    from moc_cli.config.schema_info import all_fields

    docs = all_fields()
    if field is not None:
        field = field.strip(".")
        chosen = [d for d in docs if d.path == field or d.path.startswith(field + ".")]
        if not chosen:
            leaf_paths = sorted({d.path for d in docs})
            raise fail_config(
                ConfigError(
                    ConfigIssue("--field", f"unknown key {field!r}", None, did_you_mean(field, leaf_paths))
                )
            )
        docs = chosen
    for doc in docs:
        if doc.type == "section":
            typer.echo(f"{doc.label}  (section)  {doc.help}")
            continue
        typer.echo(f"{doc.label}: {doc.type} = {doc.default}")
        if doc.help:
            typer.echo(f"    {doc.help}")
