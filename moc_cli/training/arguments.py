"""`training:` section -> `transformers.TrainingArguments` (same names, plus the run's own settings)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.training.errors import RunSetupError

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from moc_cli.config import TrainingSection
    from moc_cli.tasks.base import Task

# Keys of the training section handled by the runner rather than TrainingArguments.
RUNNER_KEYS = ("early_stopping_patience",)


def best_metric(task: Task, has_compute_metrics: bool, requested: str | None) -> tuple[str, bool]:
    """(`metric_for_best_model`, `greater_is_better`): the task's main metric unless one is requested."""
    main = f"eval_{task.main_metric}" if has_compute_metrics else "eval_loss"
    main_greater = task.greater_is_better if has_compute_metrics else False
    if requested is None:
        return main, main_greater
    name = requested if requested.startswith("eval_") else f"eval_{requested}"
    if name == main:
        return name, main_greater
    return name, "loss" not in name and "perplexity" not in name


def world_size() -> int:
    """Processes in the launch (`WORLD_SIZE`, set by torchrun and accelerate launch); 1 when run directly."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def training_arguments(
    training_cfg: TrainingSection | Mapping[str, Any],
    *,
    output_dir: Path,
    seed: int,
    task: Task,
    has_eval: bool,
    has_compute_metrics: bool,
    show_bar: bool,
) -> TrainingArguments:
    """TrainingArguments for a run: user values pass through, the runner owns paths, seeds and reporting."""
    from transformers import TrainingArguments

    # A plain mapping is accepted too (library use), and checked against TrainingArguments below.
    values = dict(training_cfg) if isinstance(training_cfg, Mapping) else training_cfg.model_dump()
    kwargs = {k: v for k, v in values.items() if k not in RUNNER_KEYS}
    accepted = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise RunSetupError(
            f"training.{unknown[0]} is not a transformers.TrainingArguments field; remove it "
            f"(unknown: {', '.join('training.' + k for k in unknown)})"
        )
    if kwargs.pop("gradient_checkpointing", False):
        # New name in transformers 5; non-reentrant checkpointing works with frozen inputs (peft).
        kwargs["activation_checkpointing"] = True
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if kwargs.get("eval_steps") is None:
        kwargs.pop("eval_steps", None)

    # TensorBoard is attached by the runner (it must see the routing metrics and write under logs/).
    report_to = [r for r in (kwargs.pop("report_to", None) or []) if r not in ("none", "tensorboard")]
    kwargs["report_to"] = report_to or "none"

    if not has_eval:
        kwargs["eval_strategy"] = "no"
        kwargs["load_best_model_at_end"] = False
    wants_best = kwargs.get("load_best_model_at_end") or kwargs.get("metric_for_best_model") is not None
    if wants_best:
        metric, greater = best_metric(task, has_compute_metrics, kwargs.get("metric_for_best_model"))
        kwargs["metric_for_best_model"] = metric
        kwargs["greater_is_better"] = greater
    else:
        kwargs.pop("metric_for_best_model", None)

    import torch

    if not torch.cuda.is_available() and (not torch.backends.mps.is_available() or world_size() > 1):
        # Without CUDA: bf16 autocast runs on CPU only when asked for explicitly, and use_cpu selects
        # the gloo backend, so several CPU processes (torchrun, accelerate launch) train together
        # instead of each alone; MPS has no multi-process backend.
        kwargs["use_cpu"] = True
    kwargs.update(
        output_dir=str(output_dir),
        # Pinned memory only helps host-to-GPU copies (and warns on every DataLoader without one).
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        disable_tqdm=not show_bar,
        # Checkpoints must carry optimizer, scheduler and RNG state for an exact resume.
        save_only_model=False,
        # Trainer multiplies the loss by the number of processes when it averages token counts
        # across them: right for causal LM losses (summed, then divided by the global token count),
        # wrong for classification, regression and multiple-choice losses, which are batch means.
        average_tokens_across_devices=task.kind == "causal_lm",
        # Keep NaN/inf losses in the logs, where the NaN guard (moc_cli.reliability) sees them.
        logging_nan_inf_filter=False,
    )
    try:
        return TrainingArguments(**kwargs)
    except ValueError as exc:
        raise RunSetupError(f"invalid training settings: {exc}") from exc
