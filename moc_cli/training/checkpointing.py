"""Resumable checkpoints outside Trainer's schedule, config changes on resume, failed saves."""

from __future__ import annotations

import errno
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.atomic_dir import replace_dir, temp_dir_beside

if TYPE_CHECKING:
    from transformers import Trainer

# What a resumed run cannot change: the checkpoint's weights, optimizer and scheduler state were
# made for these (a changed method.r cannot even load; a changed learning rate would be silently
# overridden by the saved scheduler). Whole sections, plus the optimizer and schedule keys.
FROZEN_SECTIONS = ("model", "method", "task", "data")
FROZEN_KEYS = (
    "seed",
    "training.learning_rate",
    "training.per_device_train_batch_size",
    "training.gradient_accumulation_steps",
    "training.weight_decay",
    "training.warmup_steps",
    "training.lr_scheduler_type",
    "training.optim",
    "training.max_grad_norm",
)
# Not part of the experiment (where and how this invocation writes); never reported.
_IGNORED = ("output", "recipe", "description")


def save_resumable_checkpoint(trainer: Trainer, checkpoints_dir: Path) -> Path | None:
    """Write `checkpoint-<global_step>` in Trainer's layout from public Trainer attributes.

    Used when a KeyboardInterrupt escapes the training loop (e.g. raised by user code), where
    Trainer's own save hook cannot run. Weights are those of the last completed optimizer step,
    which is the state `trainer_state.json` describes. Returns None if no step completed.

    The checkpoint gets the same `.complete` marker as Trainer's own saves (see
    `moc_cli.reliability.checkpoints`), so `--resume auto` accepts it. Only the main process
    writes; under a launcher the other ranks return the path.
    """
    import numpy as np
    import torch

    from moc_cli.reliability.checkpoints import MARKER_NAME, validate_checkpoint, write_completion_marker

    step = trainer.state.global_step
    if step == 0 or trainer.optimizer is None:
        return None
    final = Path(checkpoints_dir) / f"checkpoint-{step}"
    if not trainer.is_world_process_zero():
        return final
    if (final / MARKER_NAME).is_file() and not validate_checkpoint(final):
        return final  # Trainer saved this step already and the save finished
    tmp = temp_dir_beside(final)
    try:
        trainer.save_model(str(tmp))
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        if trainer.lr_scheduler is not None:
            torch.save(trainer.lr_scheduler.state_dict(), tmp / "scheduler.pt")
        rng: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cpu": torch.random.get_rng_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.random.get_rng_state_all()
        torch.save(rng, tmp / "rng_state.pth")
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: leave no half-written folder
        raise
    replace_dir(tmp, final)
    write_completion_marker(final, step)
    return final


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"method.r": 16, ...}: every leaf of a nested mapping under its dotted key."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _fmt(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def is_frozen(key: str) -> bool:
    """Whether a resumed run must keep the checkpoint's value of `key` (dotted)."""
    return key.split(".")[0] in FROZEN_SECTIONS or key in FROZEN_KEYS


def config_drift(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every changed setting as `key: before -> after`, one per leaf, frozen keys first."""
    before = {k: v for k, v in _leaves(saved).items() if k.split(".")[0] not in _IGNORED}
    after = {k: v for k, v in _leaves(current).items() if k.split(".")[0] not in _IGNORED}
    changed = sorted(
        (k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
        key=lambda k: (not is_frozen(k), k),
    )
    return [f"{k}: {_fmt(before.get(k))} -> {_fmt(after.get(k))}" for k in changed]


def split_drift(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, applied): changes a resumed run cannot make, and those it applies and records.

    Applied: max_steps / epochs, the eval, save and logging cadence, precision and other settings
    outside the model, method, task, data, optimizer and schedule.
    """
    changes = config_drift(saved, current)
    refused = [c for c in changes if is_frozen(c.split(":", 1)[0])]
    return refused, [c for c in changes if c not in refused]


# ---------------------------------------------------------------- failed writes (full disk)

_TORCH_WRITE_FAILURE = ("PytorchStreamWriter failed", "inline_container.cc", "file write failed")
_NO_SPACE = ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded")


def write_failure_reason(exc: BaseException) -> str | None:
    """Why a save failed, in plain words, when `exc` (or its cause) is a failed write; else None.

    torch.save reports a full disk as `[enforce fail at inline_container.cc:...] ... file write
    failed` or `unexpected pos`, without the errno; safetensors and plain writes raise OSError
    (ENOSPC) or an error whose text names it.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on device"
        if isinstance(current, OSError) and current.errno == errno.EROFS:
            return "the file system is read-only"
        text = str(current)
        if any(marker in text for marker in _NO_SPACE):
            return "no space left on device"
        if any(marker in text for marker in _TORCH_WRITE_FAILURE):
            return "writing the file failed (the disk is probably full)"
        current = current.__cause__ or current.__context__
    return None


def _free_space(path: Path) -> str:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**20:.1f} MiB free"


class SaveFailed(RuntimeError):
    """Writing a checkpoint or the final adapter failed (full disk); the message says what to do.

    `cli_message` and `exit_code` let the CLI print it as one line and exit 1.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.cli_message = f"error: {message}"


def save_failure(
    exc: BaseException, what: str, folder: Path, removed: Path | None, resume_from: Path | None
) -> SaveFailed | None:
    """A SaveFailed explaining `exc`, if it is a failed write of `what` into `folder`; else None."""
    reason = write_failure_reason(exc)
    if reason is None:
        return None
    cleanup = f" Removed the incomplete {removed.name}." if removed is not None else ""
    then = (
        f"it continues from {resume_from.name}, the last complete checkpoint"
        if resume_from is not None
        else "no checkpoint was completed, so it starts from the beginning"
    )
    return SaveFailed(
        f"could not save {what} in {folder}: {reason} ({_free_space(folder)} there).{cleanup} "
        "Free some space (or keep fewer checkpoints with training.save_total_limit), then run the "
        f"same command with --resume auto: {then}."
    )
