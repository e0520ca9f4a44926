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
from transformers.trainer_callback import ProgressCallback


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


# A run should report its training loss about this many times, however short it is.
MIN_LOG_EVENTS = 10


def log_interval(max_steps: int, logging_steps: int | float | None) -> int | None:
    """Steps between the extra log events a short run needs; None when `logging_steps` is enough.

    Trainer logs every `logging_steps`: a run shorter than twice that would print (and plot) its
    training loss once or never. Such a run logs every max_steps / MIN_LOG_EVENTS steps instead.
    """
    if max_steps <= 0:
        return None
    if logging_steps and max_steps >= 2 * logging_steps:
        return None
    return max(1, math.ceil(max_steps / MIN_LOG_EVENTS))


def force_sensible_logging(state: TrainerState, control: TrainerControl) -> None:
    """Ask Trainer to log at the extra steps of a short run, and always at the last step.

    Depends on the step only, so every process of a multi-process run agrees (logging gathers the
    loss across processes).
    """
    step = state.global_step
    interval = log_interval(state.max_steps, getattr(state, "logging_steps", None))
    if step == state.max_steps or (interval is not None and step % interval == 0):
        control.should_log = True


class MetricsJsonlCallback(TrainerCallback):
    """Appends one JSON line per log/eval event to `logs/metrics.jsonl` (flushed, so it survives a crash).

    It also sets the logging cadence (`force_sensible_logging`): every run, however short, logs its
    training loss several times and at its last step, for the progress lines and the loss curve.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Set to "final_eval" by the runner for the evaluations after training, which Trainer
        # logs like periodic ones.
        self.eval_kind = "eval"

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        force_sensible_logging(state, control)

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
    """Whether to show tqdm bars: forced by `output.progress`, else only on a terminal.

    By default both stderr (the bar) and stdout must be terminals: in bar mode Trainer writes its
    log events to stdout, so `moc train > train.log` gets plain progress lines instead. A given
    `stream` is the only one asked.
    """
    if isinstance(progress, bool):
        return progress
    if isinstance(progress, str) and progress.lower() in ("bar", "tqdm", "true", "on"):
        return True
    if isinstance(progress, str) and progress.lower() in ("lines", "plain", "false", "off", "none"):
        return False
    streams = [stream] if stream is not None else [sys.stderr, sys.stdout]
    return all(bool(getattr(s, "isatty", lambda: False)()) for s in streams)


def format_train_line(state: TrainerState, logs: dict[str, Any], rate: float | None = None) -> str:
    """`step 5/10 | loss 0.6931 | lr 2.50e-04 | 12.3 samples/s`: one training log event in words."""
    parts = [f"step {state.global_step}/{state.max_steps}"]
    if isinstance(logs.get("loss"), (int, float)):
        parts.append(f"loss {logs['loss']:.4f}")
    if isinstance(logs.get("learning_rate"), (int, float)):
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if rate is not None:
        parts.append(f"{rate:.1f} samples/s")
    return " | ".join(parts)


def format_eval_line(state: TrainerState, logs: dict[str, Any]) -> str:
    """`eval step 4: eval_loss=0.6899 eval_accuracy=0.5000` (timings left out)."""
    shown = {
        k: v for k, v in logs.items() if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
    }
    text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    return f"eval step {state.global_step}: {text}"


class BarProgressCallback(ProgressCallback):
    """Trainer's tqdm bars, with log events written as plain lines above the bar.

    transformers' ProgressCallback writes each event as a Python dict with the numbers quoted
    (`{'loss': '0.6931', ...}`); the runner uses this class in its place when bars are shown.
    """

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or not state.is_world_process_zero or self.training_bar is None:
            return
        kind = event_kind(logs)
        if kind == "train":
            self.training_bar.write(format_train_line(state, logs))
        elif kind == "eval":
            self.training_bar.write(format_eval_line(state, logs))


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
            self._write(format_train_line(state, logs, rate))
        elif kind == "eval":
            self._write(format_eval_line(state, logs))


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
