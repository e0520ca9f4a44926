"""TrainerCallbacks: metrics log file, MoC routing metrics, plain progress lines, Ctrl-C checkpointing."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def event_kind(logs: dict[str, Any]) -> str:
    """Classify a Trainer log event: `train` (periodic), `eval`, or `train_end` (final summary)."""
    if "train_runtime" in logs:
        return "train_end"
    if any(key.startswith("eval_") for key in logs):
        return "eval"
    return "train"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsJsonlCallback(TrainerCallback):
    """Appends one JSON line per log/eval event to `logs/metrics.jsonl` (flushed, so it survives a crash)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Set to "final_eval" by the runner for the evaluations after training, which Trainer
        # logs like periodic ones.
        self.eval_kind = "eval"

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or not state.is_world_process_zero:
            return
        kind = event_kind(logs)
        record = {
            "step": state.global_step,
            "epoch": state.epoch,
            "kind": self.eval_kind if kind == "eval" else kind,
        }
        record.update({key: _jsonable(value) for key, value in logs.items()})
        # Created here, on the main process only: other ranks must not write the run directory.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All events of a `metrics.jsonl` file (empty if missing)."""
    if not Path(path).is_file():
        return []
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_metrics(path: Path, max_step: int) -> None:
    """Drop events logged after `max_step` (a resumed run replays those steps and logs them again)."""
    events = read_metrics(path)
    if not events:
        return
    # The end-of-run events are written again when the resumed run finishes.
    kept = [
        event
        for event in events
        if event.get("step", 0) <= max_step and event.get("kind") not in ("train_end", "final_eval")
    ]
    Path(path).write_text("".join(json.dumps(event) + "\n" for event in kept), encoding="utf-8")


def summarize_routing(stats: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics from `routing_stats(model)`: balance loss, routing entropy, expert utilisation.

    Expert utilisation is the fraction of (layer, expert) pairs that were the top-1 pick of at least
    one token in the window: 1.0 means every layer borrowed from every expert, 1/E means no sharing.
    """
    out: dict[str, float] = {}
    if stats.get("balance_loss") is not None:
        out["moc_balance_loss"] = float(stats["balance_loss"])
    if stats.get("routing_entropy") is not None:
        out["moc_routing_entropy"] = float(stats["routing_entropy"])
    used = total = 0
    for per_layer in (stats.get("expert_usage") or {}).values():
        rows = per_layer if per_layer and isinstance(per_layer[0], list) else [per_layer]
        for row in rows:
            used += sum(1 for count in row if count > 0)
            total += len(row)
    if total:
        out["moc_expert_utilization"] = used / total
    return out


class RoutingStatsCallback(TrainerCallback):
    """Adds MoC routing metrics to each training log event and resets the counters per logging window.

    Eval passes also route tokens: on an eval event the counters (pure eval routing, provided the
    logging and eval intervals line up) are kept in `last_eval_stats` and then reset, so that a
    training window only reflects training batches.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.last_eval_stats: dict[str, Any] | None = None

    def stats(self) -> dict[str, Any]:
        from moc_cli.tuner import routing_stats

        return routing_stats(self.model)

    def reset(self) -> None:
        from moc_cli.tuner import reset_routing_stats

        reset_routing_stats(self.model)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.reset()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None:
            return
        kind = event_kind(logs)
        if kind == "train":
            logs.update(summarize_routing(self.stats()))
        elif kind == "eval":
            stats = self.stats()
            self.last_eval_stats = {**stats, **summarize_routing(stats)}
        self.reset()


def should_show_bar(progress: Any, stream: TextIO | None = None) -> bool:
    """Whether to show tqdm bars: forced by `output.progress`, else only when stderr is a terminal."""
    if isinstance(progress, bool):
        return progress
    if isinstance(progress, str) and progress.lower() in ("bar", "tqdm", "true", "on"):
        return True
    if isinstance(progress, str) and progress.lower() in ("lines", "plain", "false", "off", "none"):
        return False
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressLinesCallback(TrainerCallback):
    """One plain line per logging event (step, loss, lr, samples/s): log-file friendly progress."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._last_time: float | None = None
        self._last_step = 0

    def _write(self, line: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(line, file=stream, flush=True)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._last_time = time.perf_counter()
        self._last_step = state.global_step

    def _restart_clock(self) -> None:
        # Evaluation and checkpoint writes are not training throughput.
        self._last_time = time.perf_counter()

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._restart_clock()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._restart_clock()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or not state.is_world_process_zero:
            return
        kind = event_kind(logs)
        if kind == "train":
            now = time.perf_counter()
            steps = state.global_step - self._last_step
            elapsed = now - (self._last_time or now)
            samples = steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            rate = samples / elapsed if elapsed > 0 else float("nan")
            self._last_time, self._last_step = now, state.global_step
            parts = [f"step {state.global_step}/{state.max_steps}"]
            if "loss" in logs:
                parts.append(f"loss {logs['loss']:.4f}")
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            parts.append(f"{rate:.1f} samples/s")
            self._write(" | ".join(parts))
        elif kind == "eval":
            shown = {
                k: v
                for k, v in logs.items()
                if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
            }
            text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            self._write(f"eval step {state.global_step}: {text}")


def any_rank_requested(flag: bool, device: Any) -> bool:
    """True on every rank when `flag` is true on at least one (a one-element all-reduce)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class InterruptCallback(TrainerCallback):
    """Turns Ctrl-C into "save a checkpoint at the end of this step, then stop".

    While training runs, SIGINT only marks a stop as pending; the next `on_step_end` makes it the
    agreed stop (`requested`) and asks Trainer to save a regular (resumable) checkpoint and stop.
    A second Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.pending = False  # this process got a Ctrl-C
        self.requested = False  # the stop every rank agreed on
        self.saved_step: int | None = None
        self._previous: Any = None
        self._installed = False

    def request_stop(self) -> None:
        self.pending = True

    def _handler(self, signum: int, frame: Any) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print("\nCtrl-C: saving a checkpoint at the end of this step (press again to abort)", file=sys.stderr)

    def install(self) -> None:
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C raises as usual.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # Under a multi-process launch only some ranks may get the signal (a scheduler or `kill`
        # aimed at one process). Every rank must stop at the same step, since saving a checkpoint is
        # a collective: one that stopped alone would leave the others waiting for it forever.
        # The handler writes only `pending`, so a Ctrl-C that lands during the all-reduce below (its
        # handler runs when the call returns) is not overwritten by the vote: it counts next step.
        if args.world_size > 1:
            self.requested = any_rank_requested(self.pending, args.device)
        else:
            self.requested = self.pending
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
            # Skip the periodic eval: the user wants out, and the checkpoint does not depend on it.
            control.should_evaluate = False

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.requested:
            self.saved_step = state.global_step
