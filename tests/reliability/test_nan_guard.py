"""NaN guard on real Trainer runs: stop at the bad step, keep the last good checkpoint."""

from __future__ import annotations

import math
import re

import pytest
import torch
from reliability_helpers import lora_model, run_trainer
from safetensors.torch import load_file
from transformers import TrainerCallback

from moc_cli.reliability.checkpoints import (
    AtomicCheckpointCallback,
    find_resume_checkpoint,
    validate_checkpoint,
)
from moc_cli.reliability.nan_guard import NanGuardCallback, NonFiniteLossError


class PoisonAt(TrainerCallback):
    """Writes NaN into a LoRA weight before optimizer step `step` (1-based)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step - 1:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))


def _assert_finite_checkpoint(ckpts, name: str) -> None:
    assert find_resume_checkpoint(ckpts).name == name
    assert validate_checkpoint(ckpts / name) == []
    for key, tensor in load_file(ckpts / name / "adapter_model.safetensors").items():
        assert torch.isfinite(tensor).all(), key


def test_nan_loss_stops_at_the_step_and_keeps_last_good_checkpoint(tmp_path) -> None:
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(NonFiniteLossError) as err:
        run_trainer(
            ckpts,
            [AtomicCheckpointCallback(), NanGuardCallback(), PoisonAt(3)],
            max_steps=6,
            logging_nan_inf_filter=False,
        )
    assert err.value.step == 3 and err.value.key == "loss" and math.isnan(err.value.value)
    assert str(err.value) == (
        "Non-finite loss (nan) at step 3: training stopped before saving this step, so the last saved "
        "checkpoint is the last good one. Lower training.learning_rate (now 0.001), set "
        "training.max_grad_norm, or check the data and dtype; resume from the last checkpoint with --resume auto."
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]
    _assert_finite_checkpoint(ckpts, "checkpoint-2")


def test_nan_grad_norm_caught_when_loss_filter_hides_the_loss(tmp_path) -> None:
    """Trainer's default logging_nan_inf_filter replaces a NaN loss in the log; grad_norm still shows it."""
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(NonFiniteLossError, match=r"^Non-finite grad_norm \(nan\) at step 3: ") as err:
        run_trainer(ckpts, [AtomicCheckpointCallback(), NanGuardCallback(), PoisonAt(3)], max_steps=6)
    assert err.value.step == 3
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]


def test_nan_weights_block_the_save_between_log_points(tmp_path) -> None:
    """No log at steps 3-4 (logging_steps=10): the weight scan stops the save of checkpoint-4."""
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(NonFiniteLossError) as err:
        run_trainer(
            ckpts,
            [AtomicCheckpointCallback(), NanGuardCallback(), PoisonAt(3)],
            max_steps=6,
            logging_steps=10,
        )
    assert err.value.step == 4
    assert str(err.value).startswith(
        "Non-finite weight in base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight "
        "at step 4: training stopped before saving this step"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]
    _assert_finite_checkpoint(ckpts, "checkpoint-2")


def test_huge_learning_rate_diverges_and_is_stopped(tmp_path) -> None:
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(NonFiniteLossError, match=r"at step \d+: training stopped") as err:
        run_trainer(
            ckpts,
            [AtomicCheckpointCallback(), NanGuardCallback()],
            max_steps=20,
            save_steps=1,
            learning_rate=1e9,
            max_grad_norm=0.0,
            logging_nan_inf_filter=False,
            model=lora_model(),
        )
    bad_step = err.value.step
    assert "Lower training.learning_rate (now 1e+09)" in str(err.value)
    saved = sorted(int(p.name.split("-")[1]) for p in ckpts.iterdir())
    assert saved == list(range(1, bad_step))  # every step before the bad one, none after
    if saved:
        _assert_finite_checkpoint(ckpts, f"checkpoint-{saved[-1]}")


def test_clean_run_is_untouched(tmp_path) -> None:
    trainer = run_trainer(tmp_path / "checkpoints", [NanGuardCallback(check_weights="every_step")])
    assert trainer.state.global_step == 4


def test_rejects_bad_option() -> None:
    with pytest.raises(
        ValueError, match="check_weights must be True, False or 'every_step', got 'sometimes'"
    ):
        NanGuardCallback(check_weights="sometimes")


def _runner_overrides(tiny_bert, sst2_small, out) -> list[str]:
    return [
        f"model.name_or_path={tiny_bert}",
        "task.name=glue/sst2",
        "task.max_length=16",
        f"data.files.train={sst2_small['train']}",
        f"data.files.validation={sst2_small['validation']}",
        "method.name=moc",
        "method.r=4",
        "training.learning_rate=1e9",
        "training.max_steps=8",
        "training.per_device_train_batch_size=8",
        "training.save_strategy=steps",
        "training.save_steps=1",
        "training.save_total_limit=null",
        "training.logging_steps=1",
        "training.eval_strategy=no",
        "training.warmup_steps=0",
        "output.progress=none",
        f"output.dir={out}",
    ]


def test_runner_with_reliability_callbacks_stops_on_divergence(tiny_bert, sst2_small, tmp_path) -> None:
    """The real runner plus `default_callbacks()`: a diverging MoC run stops, checkpoints stay finite."""
    from moc_cli.config import load_run_config
    from moc_cli.reliability import default_callbacks
    from moc_cli.training import run_training

    cfg, provenance = load_run_config(
        recipe="demo/sentiment",
        config_file=None,
        overrides=_runner_overrides(tiny_bert, sst2_small, tmp_path / "run"),
    )
    with pytest.raises(
        NonFiniteLossError, match=r"at step \d+: training stopped before saving this step"
    ) as err:
        run_training(cfg, provenance, None, callbacks=default_callbacks())
    ckpts = tmp_path / "run" / "checkpoints"
    saved = sorted(int(p.name.split("-")[1]) for p in ckpts.iterdir() if p.name.startswith("checkpoint-"))
    assert saved == list(range(1, err.value.step))
    assert not (tmp_path / "run" / "adapter").exists()
    if saved:
        _assert_finite_checkpoint(ckpts, f"checkpoint-{saved[-1]}")


def test_moc_train_exits_1_naming_the_step(tiny_bert, sst2_small, tmp_path) -> None:
    from typer.testing import CliRunner

    from moc_cli.cli.app import app

    result = CliRunner().invoke(
        app,
        ["train", "--recipe", "demo/sentiment", *_runner_overrides(tiny_bert, sst2_small, tmp_path / "run")],
    )
    assert result.exit_code == 1, result.output
    assert "error: training failed: NonFiniteLossError: Non-finite " in result.output
    # The loss, the grad norm or (before a save) a weight: whichever the guard saw first.
    step = int(re.search(r"NonFiniteLossError: Non-finite .*? at step (\d+): ", result.output).group(1))
    ckpts = tmp_path / "run" / "checkpoints"
    if step > 1:
        # The runner names the checkpoint to restart from: the one saved at the step before.
        assert (
            f"Training diverged at step {step}; the last good checkpoint is {ckpts / f'checkpoint-{step - 1}'}."
            in result.output
        )
        _assert_finite_checkpoint(ckpts, f"checkpoint-{step - 1}")
    else:
        assert "Training diverged at step 1; no checkpoint was saved before it." in result.output
    assert not (ckpts / f"checkpoint-{step}").exists()
