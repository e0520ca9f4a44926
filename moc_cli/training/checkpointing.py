"""Resumable checkpoints outside Trainer's schedule, and config drift checks on resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.training.run_dir import replace_dir, temp_dir_beside

if TYPE_CHECKING:
    from transformers import Trainer

# Keys whose change makes a resumed run a different experiment.
DRIFT_KEYS = (
    "seed",
    "training.max_steps",
    "training.num_train_epochs",
    "method",
    "model.name_or_path",
    "task.name",
)


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
    replace_dir(tmp, final)
    write_completion_marker(final, step)
    return final


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def config_drift(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences in the keys that define the experiment (empty if none)."""
    changes = []
    for key in DRIFT_KEYS:
        before, after = _get(saved, key), _get(current, key)
        if before != after:
            changes.append(f"{key}: {before!r} -> {after!r}")
    return changes
