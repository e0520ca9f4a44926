"""Runs `run_training` with the reliability callbacks and SIGKILLs itself in the middle of a checkpoint save.

Used by test_crash_mid_save.py. The kill fires when Trainer calls `torch.save` for a path ending in
KILL_SUFFIX (e.g. `checkpoint-20/scheduler.pt`): the adapter weights and `optimizer.pt` of that
checkpoint are on disk, `scheduler.pt`, the RNG state, `trainer_state.json` and `.complete` are not.

Usage: python crash_driver.py OVERRIDES_JSON KILL_SUFFIX
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    overrides = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    kill_suffix = sys.argv[2]

    import torch

    import moc_cli  # noqa: F401  (registers MoC)
    from moc_cli.config import load_run_config
    from moc_cli.reliability import default_callbacks
    from moc_cli.training import run_training

    real_save = torch.save

    def save_or_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, os.PathLike)) and Path(f).as_posix().endswith(kill_suffix):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save_or_die
    cfg, provenance = load_run_config(recipe="demo/sentiment", config_file=None, overrides=overrides)
    run_training(cfg, provenance, None, callbacks=default_callbacks())


if __name__ == "__main__":
    main()
