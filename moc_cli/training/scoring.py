"""Scoring a trained model on a split: Trainer metrics, generated answers, and reusing the last evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Trainer

    from moc_cli.tasks.base import Task
    from moc_cli.training.data import RunData


def quiet_progress(show_bar: bool) -> None:
    """Without a terminal, silence the per-item bars of datasets and model loading (log-file spam)."""
    if show_bar:
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def evaluate_split(trainer: Trainer, task: Task, data: RunData, split: str) -> dict[str, float]:
    from moc_cli.training.summary import stable_metrics

    features = data.eval(split)
    trainer.compute_metrics = task.make_compute_metrics(features)
    metrics = trainer.evaluate(eval_dataset=features, metric_key_prefix="eval")
    return stable_metrics(task.finalize_metrics(metrics))


def generation_metrics(
    model: Any, tokenizer: Any, task: Task, data: RunData, split: str, out_dir: Path | None
) -> dict:
    """Causal LM tasks: generative scores, with the generated samples under `out_dir` (if given)."""
    raw = data.raw.get(split)
    if raw is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        scores = task.evaluate_generation(
            model, tokenizer, raw, output_dir=str(out_dir / split) if out_dir is not None else None
        )
    finally:
        model.train(was_training)
    return {k if k.startswith("eval_") else f"eval_{k}": float(v) for k, v in (scores or {}).items()}


def last_step_evaluation(trainer: Trainer, routed: bool) -> dict[str, Any] | None:
    """The `eval_*` metrics Trainer logged for the main split at the final step, if they can stand
    for the final evaluation: the weights are still those it evaluated (no best-model reload) and,
    for routed methods, a training log event reset the routing counts just before it (so they count
    evaluation tokens only)."""
    from moc_cli.training.callbacks import event_kind

    if trainer.args.load_best_model_at_end:
        return None
    history = trainer.state.log_history
    evals = [i for i, entry in enumerate(history) if event_kind(entry) == "eval"]
    if not evals or history[evals[-1]].get("step") != trainer.state.global_step:
        return None
    last = evals[-1]
    if routed:
        before = history[last - 1] if last > 0 else {}
        if event_kind(before) != "train" or before.get("step") != trainer.state.global_step:
            return None
    return {key: value for key, value in history[last].items() if key.startswith("eval_")}
