"""`moc predict`: labels with probabilities, or generations, from an export or a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def predict(
    model_dir: Annotated[
        Path,
        typer.Argument(
            help="An export (bundle or merged) or a run directory (its adapter is loaded).",
            metavar="EXPORT_OR_RUN_DIR",
            show_default=False,
        ),
    ],
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Input texts; or use --file.", metavar="TEXT", show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="JSON Lines file, one object per input: a `text` field, the task's own text fields "
            "(e.g. `sentence` for CoLA, so its data files work as they are), or `sentence1` and "
            "`sentence2` for pairs.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Inputs per forward pass.")] = 32,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Generation length for causal LMs.")
    ] = 64,
    repetition_penalty: Annotated[
        float,
        typer.Option(
            "--repetition-penalty",
            min=1.0,
            help="Causal LMs: > 1 discourages repeating tokens of the prompt or reply (1.1-1.3 typical).",
        ),
    ] = 1.0,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Accept a run's pickle weight files (*.bin, *.pt); unsafe."),
    ] = False,
) -> None:
    """Predict labels (classification) or continuations (causal LM): one JSON line per input on
    stdout, the input first (`"input"`), then the prediction.

    Examples:

      moc predict runs/glue/sst2/2026-01-01/export/bundle "a gripping film" "dull and slow"

      moc predict exported/ --file inputs.jsonl --batch-size 64
    """
    import json
    import sys

    from moc_cli.cli.common import cli_errors
    from moc_cli.export.predict import predict as run_predict
    from moc_cli.export.predict import read_inputs, task_text_fields

    # Export errors keep their exit code (2: bad input, 1: damaged file); anything else is one line.
    with cli_errors("prediction"):
        # Inputs are read (and checked) before anything loads: a typo fails at once.
        inputs = read_inputs(texts or [], file, task_text_fields(model_dir))
        progress = file is not None and sys.stderr.isatty()
        results = run_predict(
            model_dir,
            inputs,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            progress=progress,
            allow_pickle=allow_pickle,
        )
    for item, row in zip(inputs, results, strict=True):
        # The input beside its prediction, so that a file of results can be read on its own.
        typer.echo(json.dumps({"input": item, **row}, ensure_ascii=False))
