"""training: section -> TrainingArguments: pass-through names, runner-owned settings, best metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc_cli.config import TrainingSection
from moc_cli.tasks.registry import get_task
from moc_cli.training.arguments import best_metric, training_arguments
from moc_cli.training.errors import RunSetupError


def build(tmp_path: Path, task: str = "glue/cola", has_eval: bool = True, **fields):
    return training_arguments(
        TrainingSection(**fields),
        output_dir=tmp_path / "checkpoints",
        seed=7,
        task=get_task(task),
        has_eval=has_eval,
        has_compute_metrics=get_task(task).kind != "causal_lm",
        show_bar=False,
    )


def test_user_values_pass_through(tmp_path: Path) -> None:
    args = build(
        tmp_path,
        gradient_accumulation_steps=4,
        max_steps=100,
        eval_strategy="steps",
        eval_steps=25,
        save_strategy="steps",
        save_steps=50,
        warmup_steps=0.1,
        gradient_checkpointing=True,
        weight_decay=0.1,
    )
    assert args.gradient_accumulation_steps == 4 and args.max_steps == 100
    assert args.eval_steps == 25 and args.save_steps == 50 and args.warmup_steps == 0.1
    assert args.weight_decay == 0.1
    # transformers 5 name for gradient checkpointing; non-reentrant for frozen (peft) inputs.
    assert args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_runner_owned_settings(tmp_path: Path) -> None:
    args = build(tmp_path, report_to=["tensorboard"])
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert args.seed == 7 and args.data_seed == 7
    assert args.disable_tqdm is True
    assert args.save_only_model is False
    assert args.report_to == []  # TensorBoard is attached by the runner, writing under logs/
    assert args.metric_for_best_model is None


def test_best_model_uses_the_task_main_metric(tmp_path: Path) -> None:
    args = build(
        tmp_path, load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps", eval_steps=5
    )
    assert args.metric_for_best_model == "eval_matthews_correlation"
    assert args.greater_is_better is True
    lm = build(
        tmp_path,
        task="instruct/alpaca",
        load_best_model_at_end=True,
        eval_strategy="steps",
        save_strategy="steps",
        eval_steps=5,
    )
    assert lm.metric_for_best_model == "eval_loss" and lm.greater_is_better is False


def test_best_metric_choices() -> None:
    cola = get_task("glue/cola")
    assert best_metric(cola, True, None) == ("eval_matthews_correlation", True)
    assert best_metric(cola, True, "loss") == ("eval_loss", False)
    assert best_metric(cola, True, "eval_accuracy") == ("eval_accuracy", True)


def test_no_eval_split_turns_evaluation_off(tmp_path: Path) -> None:
    args = build(tmp_path, has_eval=False, eval_strategy="epoch")
    assert args.eval_strategy == "no" and args.load_best_model_at_end is False


def test_unknown_training_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        RunSetupError, match=r"training\.warmup_ratio is not a transformers\.TrainingArguments field"
    ):
        training_arguments(
            {"warmup_ratio": 0.1},
            output_dir=tmp_path,
            seed=1,
            task=get_task("glue/sst2"),
            has_eval=False,
            has_compute_metrics=True,
            show_bar=False,
        )


@pytest.mark.parametrize(
    ("task", "kind", "average"),
    [
        ("glue/cola", "seq_cls", False),
        ("glue/stsb", "regression", False),
        ("superglue/copa", "multiple_choice", False),
        ("demo/instruct", "causal_lm", True),
    ],
)
def test_loss_scaling_across_processes_only_for_causal_lm(
    tmp_path: Path, task: str, kind: str, average: bool
) -> None:
    # Trainer multiplies the loss by the process count when averaging token counts across processes:
    # right for token-summed causal LM losses, a doubled loss for batch-mean classification losses.
    assert get_task(task).kind == kind
    args = build(tmp_path, task=task)
    assert args.average_tokens_across_devices is average


def test_nan_losses_stay_visible_to_the_guard(tmp_path: Path) -> None:
    assert build(tmp_path).logging_nan_inf_filter is False


def test_world_size_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from moc_cli.training.arguments import world_size

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert world_size() == 2
    monkeypatch.setenv("WORLD_SIZE", "")
    assert world_size() == 1
