"""Stop training at the first non-finite loss, gradient norm or trainable weight.

Trainer logs the mean loss and the grad norm every `logging_steps`; a NaN there means the weights
are (or are about to be) garbage, and every checkpoint saved from then on would be poisoned. The
guard checks:

- each log record (`loss`, `grad_norm`) in `on_log`, which Trainer calls before deciding to save;
- the trainable parameters in `on_step_end` whenever a save is due at that step, so a NaN between
  two log points cannot slip into a checkpoint either (adapters are small, so this is cheap).

On a hit it sets `control.should_training_stop`, clears `control.should_save` and raises
`NonFiniteLossError`, which propagates out of `trainer.train()` before the save of that step. The
last checkpoint on disk is therefore the last good one. The logged loss is already averaged over
ranks, and DDP keeps weights identical, so every rank raises at the same step (no rank is left
waiting in a collective).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

_GUARDED_LOG_KEYS = ("loss", "grad_norm")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss, grad norm or weight; `step` is the optimizer step."""

    def __init__(self, message: str, step: int, key: str, value: float | None) -> None:
        super().__init__(message)
        self.step = step
        self.key = key
        self.value = value


def _hint(args: TrainingArguments) -> str:
    return (
        f"Lower training.learning_rate (now {args.learning_rate:g}), set training.max_grad_norm, "
        "or check the data and dtype; resume from the last checkpoint with --resume auto."
    )


class NanGuardCallback(TrainerCallback):
    """Raises `NonFiniteLossError` naming the step at the first non-finite value.

    `check_weights`: also scan trainable parameters before each save (and, with
    `check_weights="every_step"`, after every optimizer step).
    """

    def __init__(self, check_weights: bool | str = True) -> None:
        if check_weights not in (True, False, "every_step"):
            raise ValueError(f"check_weights must be True, False or 'every_step', got {check_weights!r}")
        self.check_weights = check_weights

    def _stop(self, control: TrainerControl, message: str, step: int, key: str, value: float | None) -> None:
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False
        raise NonFiniteLossError(message, step=step, key=key, value=value)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        for key in _GUARDED_LOG_KEYS:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self._stop(
                    control,
                    f"Non-finite {key} ({value}) at step {state.global_step}: training stopped before saving "
                    f"this step, so the last saved checkpoint is the last good one. {_hint(args)}",
                    state.global_step,
                    key,
                    float(value),
                )

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None or not self.check_weights:
            return
        if not (control.should_save or self.check_weights == "every_step"):
            return
        bad = first_nonfinite_parameter(model)
        if bad is not None:
            self._stop(
                control,
                f"Non-finite weight in {bad} at step {state.global_step}: training stopped before saving "
                f"this step, so the last saved checkpoint is the last good one. {_hint(args)}",
                state.global_step,
                f"weight:{bad}",
                None,
            )


@torch.no_grad()
def first_nonfinite_parameter(model: torch.nn.Module) -> str | None:
    """Name of the first trainable parameter holding a NaN/inf, else None (meta tensors are skipped)."""
    for name, param in model.named_parameters():
        if param.requires_grad and not param.is_meta and not torch.isfinite(param).all():
            return name
    return None
