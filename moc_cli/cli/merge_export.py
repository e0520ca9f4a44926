"""`moc merge-export`: turn a run (or a bare adapter folder) into a self-contained artefact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def merge_export(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="Run directory (with config.yaml and adapter/) or a bare peft adapter directory.",
            metavar="RUN_OR_ADAPTER_DIR",
            show_default=False,
        ),
    ],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="bundle | merged | onnx. Default: merged for LoRA/DoRA/IA3 and full fine-tuning, bundle otherwise "
            "(MoC, Control and MoLEx cannot be folded into the base weights).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Target directory. Default: <run_dir>/export/<format>."),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Accept pickle weight files (*.bin, *.pt); unsafe."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild an existing export.")] = False,
) -> None:
    """Export a fine-tuned model: a bundle (base + controls), a merged checkpoint or an ONNX graph.

    Base model, dtype, task and method are read from the run's config.yaml (or, for a bare adapter
    directory, from adapter_config.json). The export records the adapter it was built from (sha256
    and training step): re-running is a no-op while that adapter is unchanged, and rebuilds the
    export once it changed (e.g. the run was resumed to more steps). --force always rebuilds.

    Examples:

      moc merge-export runs/glue/sst2/20260101-120000 --format bundle

      moc merge-export runs/lora-run --format merged --output exported/

      moc merge-export runs/glue/sst2/20260101-120000 --format onnx
    """
    from moc_cli.cli.common import cli_errors
    from moc_cli.export.exporter import export

    # export errors keep their exit code, config errors exit 2, anything else is one line (exit 1)
    with cli_errors("export"):
        result = export(run_dir, fmt=format, output=output, allow_pickle=allow_pickle, force=force)
    if result.existed:
        typer.echo(
            f"export already exists at {result.path} ({result.format}); nothing to do "
            "(pass --force to rebuild)",
            err=True,
        )
    else:
        if result.rebuilt:
            typer.echo(f"rebuilt the export at {result.path}: {result.rebuilt}", err=True)
        typer.echo(f"exported {result.format} to {result.path}", err=True)
        check = result.manifest.get("onnx")
        if check:
            typer.echo(
                f"onnxruntime vs PyTorch on sample inputs: max |logit difference| = "
                f"{check['max_abs_diff_vs_torch']:.2e}",
                err=True,
            )
    typer.echo(str(result.path))
