"""Checkpoint validation, completion markers and resume selection.

Design
------
`transformers.Trainer` writes `checkpoint-N/` in place: weights, then optimizer and scheduler, RNG
state and finally `trainer_state.json`, then rotates old checkpoints, then calls `on_save`. A crash
(SIGKILL, OOM, node loss, full disk) during that sequence leaves a directory that looks like a
checkpoint but is not one. Two layers make this safe without touching Trainer internals:

1. `AtomicCheckpointCallback.on_save` runs after every file of `checkpoint-N` is written. It waits
   for all ranks (sharded FSDP/DeepSpeed writers), fsyncs every file, and then, on the main process,
   writes `checkpoint-N/.complete` (a JSON manifest of relative file names and sizes) through a
   temporary file and `os.replace`. The marker is the commit point: a directory without it was not
   finished.
2. `validate_checkpoint` inspects the content itself (required files present, JSON parses,
   safetensors headers and sizes consistent, torch zip archives intact, sizes equal to the
   manifest), so damage after the save (truncated copy, bad sync) is caught too, and checkpoints
   written without the callback can still be checked.

`find_resume_checkpoint` walks `checkpoint-N` from the highest N down and returns the first one
that passes both layers; markers are required as soon as any checkpoint in the directory has one
(so a run that used the callback never resumes from an unmarked directory, while checkpoints from
a plain Trainer run are still accepted on content alone). Every skipped checkpoint is logged with
the file at fault.

Checkpoints newer than the step a run (re)starts from belong to an abandoned attempt; Trainer would
overwrite them in place, mixing files of two histories. `AtomicCheckpointCallback.on_train_begin`
moves them to `<checkpoints>/superseded/` before training continues.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

MARKER_NAME = ".complete"
SUPERSEDED_DIR = "superseded"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# Weight layouts Trainer can produce, in the order they are looked for.
_SAFETENSORS_WEIGHTS = ("adapter_model.safetensors", "model.safetensors")
_SHARDED_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint given explicitly (e.g. `--resume PATH`) cannot be resumed from."""


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """N for a `checkpoint-N` directory name, else None."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(checkpoints_dir: str | os.PathLike[str]) -> list[Path]:
    """`checkpoint-N` directories directly inside `checkpoints_dir`, by ascending N."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


# ---------------------------------------------------------------- file-level checks


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        return f"{path.name}: unreadable ({err})"
    except json.JSONDecodeError as err:
        return f"{path.name}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    return None


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed JSON header of a safetensors file, without reading tensor data.

    Raises ValueError naming the file when the header is missing, truncated or not JSON, or when
    the tensors it declares do not fit in the file (truncated download or interrupted write).
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ValueError(
            f"{path.name}: truncated safetensors file ({size} bytes; the 8-byte header length is missing)"
        )
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise ValueError(
                f"{path.name}: truncated safetensors header (declares {header_len} bytes, {size - 8} follow)"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path.name}: unreadable safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: unreadable safetensors header (not a JSON object)")
    data_len = size - 8 - header_len
    needed = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(
                f"{path.name}: unreadable safetensors header (tensor {name!r} has no data_offsets)"
            )
        needed = max(needed, offsets[1])
    if needed > data_len:
        raise ValueError(
            f"{path.name}: truncated (tensors need {needed} bytes of data, the file holds {data_len})"
        )
    return header


def _safetensors_problem(path: Path) -> str | None:
    try:
        safetensors_header(path)
    except OSError as err:
        return f"{path.name}: unreadable ({err})"
    except ValueError as err:
        return str(err)
    return None


def _torch_archive_problem(path: Path) -> str | None:
    """torch.save writes a zip archive whose directory sits at the end: truncation destroys it."""
    try:
        if path.stat().st_size == 0:
            return f"{path.name}: empty file"
        if not zipfile.is_zipfile(path):
            return f"{path.name}: truncated or corrupt (not a readable torch.save archive)"
        with zipfile.ZipFile(path) as archive:
            end = max((i.header_offset + i.compress_size for i in archive.infolist()), default=0)
        if end > path.stat().st_size:
            return f"{path.name}: truncated or corrupt (archive entries extend past the end of the file)"
    except (OSError, zipfile.BadZipFile) as err:
        return f"{path.name}: truncated or corrupt ({err})"
    return None


def _nonempty_dir_problem(path: Path) -> str | None:
    if not any(path.iterdir()):
        return f"{path.name}/: empty directory"
    return None


# ---------------------------------------------------------------- checkpoint-level checks


def _weights_problems(ckpt: Path, is_deepspeed: bool) -> list[str]:
    for name in _SAFETENSORS_WEIGHTS:
        if (ckpt / name).is_file():
            problem = _safetensors_problem(ckpt / name)
            return [problem] if problem else []
    index = ckpt / _SHARDED_INDEX
    if index.is_file():
        problem = _json_problem(index)
        if problem:
            return [problem]
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        problems = []
        for shard in shards:
            shard_path = ckpt / shard
            if not shard_path.is_file():
                problems.append(f"{shard}: missing (listed in {_SHARDED_INDEX})")
            elif problem := _safetensors_problem(shard_path):
                problems.append(problem)
        return problems
    fsdp_dirs = sorted(p for p in ckpt.glob("pytorch_model_fsdp_*") if p.is_dir())
    if fsdp_dirs:
        return [p for d in fsdp_dirs if (p := _nonempty_dir_problem(d))]
    if is_deepspeed:
        return []  # ZeRO keeps the model states inside global_stepN/
    pickled = sorted(p.name for p in ckpt.glob("*.bin") if p.name != "training_args.bin")
    hint = f" (found pickle weights {', '.join(pickled)}; safetensors are required)" if pickled else ""
    return [f"adapter_model.safetensors (or model.safetensors for full fine-tuning): missing{hint}"]


def _optimizer_problems(ckpt: Path, is_deepspeed: bool) -> list[str]:
    if is_deepspeed:
        tag = (ckpt / "latest").read_text(encoding="utf-8").strip()
        states = ckpt / tag
        if not states.is_dir():
            return [f"{tag}/: missing (named by the DeepSpeed 'latest' file)"]
        problem = _nonempty_dir_problem(states)
        return [problem] if problem else []
    if (ckpt / "optimizer.pt").is_file():
        problem = _torch_archive_problem(ckpt / "optimizer.pt")
        return [problem] if problem else []
    if (ckpt / "optimizer.bin").is_file():  # FSDP FULL_STATE_DICT
        problem = _torch_archive_problem(ckpt / "optimizer.bin")
        return [problem] if problem else []
    sharded = sorted(p for p in ckpt.glob("optimizer_*") if p.is_dir())  # FSDP SHARDED_STATE_DICT
    if sharded:
        return [p for d in sharded if (p := _nonempty_dir_problem(d))]
    return ["optimizer.pt: missing"]


def _manifest_problems(ckpt: Path) -> list[str]:
    marker = ckpt / MARKER_NAME
    if not marker.is_file():
        return []
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        return [f"{MARKER_NAME}: unreadable completion marker ({err})"]
    problems = []
    for rel, size in sorted(files.items()):
        path = ckpt / rel
        if not path.is_file():
            problems.append(f"{rel}: missing (recorded in {MARKER_NAME} at save time)")
        elif path.stat().st_size != size:
            problems.append(
                f"{rel}: {path.stat().st_size} bytes, {size} recorded in {MARKER_NAME} at save time"
            )
    return problems


def validate_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Problems that make `checkpoint-N` unusable for resuming; an empty list means usable.

    Each problem starts with the file it concerns. Checks: `trainer_state.json` present and valid
    JSON with a matching `global_step`; weights present (`adapter_model.safetensors`,
    `model.safetensors`, a sharded safetensors index with its shards, FSDP shard folders, or
    DeepSpeed state folders) with intact safetensors headers; optimizer state present and intact;
    `scheduler.pt` present and intact (unless DeepSpeed owns the scheduler); every other `*.json`
    parses; file sizes agree with the `.complete` manifest when there is one. The completion marker
    itself is not required here (see `find_resume_checkpoint`).
    """
    ckpt = Path(path)
    if not ckpt.is_dir():
        return [f"{ckpt}: not a directory"]
    problems: list[str] = []
    is_deepspeed = (ckpt / "latest").is_file()

    state = ckpt / "trainer_state.json"
    if not state.is_file():
        problems.append("trainer_state.json: missing")
    elif problem := _json_problem(state):
        problems.append(problem)
    else:
        step = checkpoint_step(ckpt)
        saved_step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
        if step is not None and saved_step != step:
            problems.append(
                f"trainer_state.json: global_step {saved_step} does not match directory {ckpt.name}"
            )

    problems += _weights_problems(ckpt, is_deepspeed)
    problems += _optimizer_problems(ckpt, is_deepspeed)

    scheduler = ckpt / "scheduler.pt"
    if scheduler.is_file():
        if problem := _torch_archive_problem(scheduler):
            problems.append(problem)
    elif not is_deepspeed:
        problems.append("scheduler.pt: missing")

    for optional in ("rng_state.pth", "scaler.pt", "training_args.bin"):
        if (ckpt / optional).is_file() and (problem := _torch_archive_problem(ckpt / optional)):
            problems.append(problem)
    for extra_json in sorted(ckpt.glob("*.json")):
        if extra_json.name != "trainer_state.json" and (problem := _json_problem(extra_json)):
            problems.append(problem)

    problems += _manifest_problems(ckpt)
    return problems


def find_resume_checkpoint(
    checkpoints_dir: str | os.PathLike[str], require_marker: bool | None = None
) -> Path | None:
    """The latest usable `checkpoint-N` in `checkpoints_dir`, or None when there is none.

    `require_marker=None` (default) requires the `.complete` marker only if some checkpoint in the
    directory has one, i.e. the run was written with `AtomicCheckpointCallback`. Each skipped
    checkpoint is reported with `logging.warning`, naming the checkpoint and the file at fault.
    """
    candidates = list(reversed(list_checkpoints(checkpoints_dir)))
    if require_marker is None:
        require_marker = any((c / MARKER_NAME).is_file() for c in candidates)
    skipped: list[str] = []
    for ckpt in candidates:
        problems = validate_checkpoint(ckpt)
        if require_marker and not (ckpt / MARKER_NAME).is_file():
            problems.insert(0, f"{MARKER_NAME}: missing (the save did not finish)")
        if not problems:
            if skipped:
                logger.warning(
                    "Resuming from %s, the latest valid checkpoint (skipped: %s).",
                    ckpt.name,
                    ", ".join(skipped),
                )
            return ckpt
        skipped.append(ckpt.name)
        logger.warning("Checkpoint %s is not usable and is skipped: %s", ckpt, "; ".join(problems))
    if skipped:
        logger.warning(
            "No valid checkpoint in %s (all of %s are damaged).", checkpoints_dir, ", ".join(skipped)
        )
    return None


def resolve_resume(resume: str | None, checkpoints_dir: str | os.PathLike[str]) -> Path | None:
    """Turn a `--resume` value into the checkpoint Trainer should resume from.

    `None`/`""` -> None (fresh start). `"auto"` -> `find_resume_checkpoint(checkpoints_dir)` (None when
    there is nothing to resume). A path to `checkpoint-N` must validate, else `CheckpointError` lists
    its problems. A path to a run directory (with `checkpoints/`) or to a checkpoints directory
    resolves to its latest valid checkpoint, else `CheckpointError`.
    """
    if not resume:
        return None
    if resume == "auto":
        return find_resume_checkpoint(checkpoints_dir)
    path = Path(resume).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"--resume {resume}: no such file or directory; pass a checkpoint-N directory or 'auto'"
        )
    if checkpoint_step(path) is not None:
        problems = validate_checkpoint(path)
        if problems:
            raise CheckpointError(
                f"--resume {resume}: checkpoint is damaged: "
                + "; ".join(problems)
                + ". Pass an earlier checkpoint-N or use --resume auto to pick the latest valid one."
            )
        return path
    for folder in (path / "checkpoints", path):
        if list_checkpoints(folder):
            found = find_resume_checkpoint(folder)
            if found is None:
                raise CheckpointError(
                    f"--resume {resume}: no valid checkpoint-N in {folder} (see the warnings above)"
                )
            return found
    raise CheckpointError(
        f"--resume {resume}: not a checkpoint-N directory and contains no checkpoint-N directories"
    )


# ---------------------------------------------------------------- the callback


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_completion_marker(
    ckpt: str | os.PathLike[str], step: int | None = None, fsync: bool = True
) -> Path:
    """Write `ckpt/.complete` (manifest of file sizes) atomically, after flushing the files it lists."""
    ckpt = Path(ckpt)
    files: dict[str, int] = {}
    for path in sorted(ckpt.rglob("*")):
        if path.is_file() and path.name != MARKER_NAME and not path.name.startswith(f"{MARKER_NAME}."):
            if fsync:
                _fsync_path(path)
            files[path.relative_to(ckpt).as_posix()] = path.stat().st_size
    tmp = ckpt / f"{MARKER_NAME}.tmp"
    tmp.write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=1), encoding="utf-8")
    if fsync:
        _fsync_path(tmp)
    os.replace(tmp, ckpt / MARKER_NAME)
    if fsync:
        _fsync_path(ckpt)
    return ckpt / MARKER_NAME


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class AtomicCheckpointCallback(TrainerCallback):
    """Marks each finished `checkpoint-N` with `.complete` and moves superseded checkpoints aside.

    Add it to the Trainer's callbacks; `args.output_dir` must be the checkpoints directory.
    """

    def __init__(self, fsync: bool = True) -> None:
        self.fsync = fsync

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            moved = supersede_checkpoints_after(args.output_dir, state.global_step)
            for path in moved:
                logger.warning(
                    "Moved %s to %s: it is newer than the step this run starts from (%d).",
                    path.name,
                    path.parent,
                    state.global_step,
                )
        _barrier()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        _barrier()  # every rank has finished writing its shards
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_completion_marker(ckpt, step=state.global_step, fsync=self.fsync)
            else:
                logger.warning("on_save: %s does not exist; no completion marker written.", ckpt)
        _barrier()


def supersede_checkpoints_after(checkpoints_dir: str | os.PathLike[str], step: int) -> list[Path]:
    """Move `checkpoint-N` with N > step into `<checkpoints_dir>/superseded/`; return the new paths."""
    moved = []
    for ckpt in list_checkpoints(checkpoints_dir):
        if (checkpoint_step(ckpt) or 0) <= step:
            continue
        target_root = Path(checkpoints_dir) / SUPERSEDED_DIR
        target_root.mkdir(exist_ok=True)
        target = target_root / ckpt.name
        suffix = 1
        while target.exists():
            target = target_root / f"{ckpt.name}.{suffix}"
            suffix += 1
        shutil.move(str(ckpt), str(target))
        moved.append(target)
    return moved
