"""Multi-process driver for tests/distributed/test_ddp.py (launched by torchrun, one copy per rank).

Runs the real `run_training` with two probes:

- `SyncProbe` (a TrainerCallback): at every save and at the end of training, gathers every
  trainable tensor (MoC router, controls, classifier head) from all ranks and records the largest
  difference to rank 0's copy in `<probe_dir>/sync.json` (written by rank 0, outside the run dir).
- a write audit on ranks > 0: Python audit events (`open` for writing, `os.mkdir`, `os.rename`,
  `os.remove`, `os.rmdir`, `shutil.rmtree`) plus `torch.save` and safetensors `save_file` calls
  whose target lies inside the run directory are recorded in `<probe_dir>/writes-rank<R>.json`.
  Trainer's per-rank RNG file (`checkpoint-N/rng_state_<R>.pth`, needed for an exact resume) and
  the creation of `checkpoint-N/` itself are expected and not recorded.

Usage: torchrun --nproc_per_node 2 ddp_driver.py OVERRIDES_JSON PROBE_DIR
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any


def _as_path(value: Any) -> Path | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, (str, os.PathLike)):
        return Path(os.path.abspath(value))
    return None


def install_write_audit(run_dir: Path, rank: int, record: list[str]) -> None:
    run_dir = Path(os.path.abspath(run_dir))
    allowed = re.compile(rf"^checkpoints/checkpoint-\d+(/rng_state_{rank}\.pth)?$")

    def note(kind: str, target: Any) -> None:
        path = _as_path(target)
        if path is None or not (path == run_dir or run_dir in path.parents):
            return
        rel = path.relative_to(run_dir).as_posix() if path != run_dir else "."
        if kind == "os.mkdir" and (path.exists() or allowed.match(rel)):
            return
        if allowed.match(rel) and kind in ("open", "torch.save"):
            return
        record.append(f"{kind} {rel}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writes:
                note("open", path)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            note(event, args[0])
        elif event == "os.rename":
            note(event, args[1])

    sys.addaudithook(hook)

    import peft.peft_model
    import safetensors.torch
    import torch
    import transformers.modeling_utils

    real_torch_save, real_safe_save = torch.save, safetensors.torch.save_file

    def torch_save(obj: Any, f: Any, *a: Any, **k: Any) -> Any:
        note("torch.save", f)
        return real_torch_save(obj, f, *a, **k)

    def safe_save(tensors: Any, filename: Any, *a: Any, **k: Any) -> Any:
        note("safetensors.save_file", filename)
        return real_safe_save(tensors, filename, *a, **k)

    torch.save = torch_save
    safetensors.torch.save_file = safe_save
    peft.peft_model.safe_save_file = safe_save
    transformers.modeling_utils.safe_save_file = safe_save


def make_sync_probe(probe_dir: Path) -> Any:
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class SyncProbe(TrainerCallback):
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []

        def _check(self, state: Any, model: Any, event: str) -> None:
            named = [(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad]
            flat = torch.cat([p.reshape(-1).float() for _, p in named])
            gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, flat)
            diffs = [float((g - gathered[0]).abs().max()) for g in gathered]
            router = [n for n, _ in named if "router" in n]
            router_numel = sum(p.numel() for n, p in named if "router" in n)
            self.records.append(
                {
                    "event": event,
                    "step": state.global_step,
                    "world_size": dist.get_world_size(),
                    "max_abs_diff_per_rank": diffs,
                    "trainable_numel": int(flat.numel()),
                    "router_params": router,
                    "router_numel": int(router_numel),
                }
            )
            if state.is_world_process_zero:
                (probe_dir / "sync.json").write_text(json.dumps(self.records, indent=1), encoding="utf-8")

        def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self._check(state, model, "save")

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self._check(state, model, "train_end")

    return SyncProbe()


def main() -> None:
    overrides_file, probe_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    overrides = json.loads(overrides_file.read_text(encoding="utf-8"))

    import moc_cli  # noqa: F401  (registers MoC)
    from moc_cli.cli.app import release_process_group
    from moc_cli.config import load_run_config
    from moc_cli.training import run_training

    cfg, provenance = load_run_config(recipe="demo/sentiment", config_file=None, overrides=overrides)
    writes: list[str] = []
    if rank != 0:
        install_write_audit(Path(cfg.output.dir), rank, writes)
    try:
        run_training(cfg, provenance, None, callbacks=[make_sync_probe(probe_dir)])
    finally:
        if rank != 0:
            (probe_dir / f"writes-rank{rank}.json").write_text(json.dumps(writes, indent=1), encoding="utf-8")
        release_process_group()  # as the `moc` entry point does, or gloo may abort at exit


if __name__ == "__main__":
    main()
