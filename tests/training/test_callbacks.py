"""Callbacks in isolation: metrics.jsonl, routing summaries, progress lines, Ctrl-C flags, plots."""

from __future__ import annotations

import io
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from moc_cli.training.callbacks import (
    InterruptCallback,
    MetricsJsonlCallback,
    ProgressLinesCallback,
    event_kind,
    read_metrics,
    should_show_bar,
    summarize_routing,
    truncate_metrics,
)
from moc_cli.training.plots import plot_curves, plot_routing
from moc_cli.training.summary import format_summary, stable_metrics


@pytest.fixture(scope="module")
def args(tmp_path_factory: pytest.TempPathFactory) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("args")),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        report_to="none",
        use_cpu=True,
    )


def state(step: int, max_steps: int = 10) -> TrainerState:
    s = TrainerState()
    s.global_step, s.max_steps, s.epoch = step, max_steps, step / max_steps
    return s


def test_event_kind() -> None:
    assert event_kind({"loss": 1.0, "learning_rate": 0.1}) == "train"
    assert event_kind({"eval_loss": 1.0}) == "eval"
    assert event_kind({"train_runtime": 1.0, "train_loss": 0.5}) == "train_end"


def test_metrics_jsonl_appends_and_truncates(tmp_path: Path, args: TrainingArguments) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    callback = MetricsJsonlCallback(path)
    control = TrainerControl()
    callback.on_log(args, state(2), control, logs={"loss": 0.5, "learning_rate": 1e-3})
    callback.on_log(args, state(4), control, logs={"eval_loss": 0.4, "eval_accuracy": 0.75})
    callback.on_log(args, state(6), control, logs={"loss": float("nan")})
    callback.eval_kind = "final_eval"
    callback.on_log(args, state(6), control, logs={"eval_loss": 0.3})
    events = read_metrics(path)
    assert events == [
        {"step": 2, "epoch": 0.2, "kind": "train", "loss": 0.5, "learning_rate": 1e-3},
        {"step": 4, "epoch": 0.4, "kind": "eval", "eval_loss": 0.4, "eval_accuracy": 0.75},
        {"step": 6, "epoch": 0.6, "kind": "train", "loss": "nan"},
        {"step": 6, "epoch": 0.6, "kind": "final_eval", "eval_loss": 0.3},
    ]
    truncate_metrics(path, 6)  # resuming from the last checkpoint: end-of-run events come again
    assert [(e["step"], e["kind"]) for e in read_metrics(path)] == [(2, "train"), (4, "eval"), (6, "train")]
    truncate_metrics(path, 4)
    assert [e["step"] for e in read_metrics(path)] == [2, 4]


def test_summarize_routing_exact() -> None:
    stats = {
        "balance_loss": 1.25,
        "routing_entropy": 0.5,
        "expert_usage": {"ffn": [[3, 0, 1], [0, 0, 4]], "attn": [[1, 1, 1], [2, 0, 0]]},
        "routing_matrix": {},
    }
    # (2 + 1) used pairs for ffn, (3 + 1) for attn, out of 12.
    assert summarize_routing(stats) == {
        "moc_balance_loss": 1.25,
        "moc_routing_entropy": 0.5,
        "moc_expert_utilization": 7 / 12,
    }
    assert summarize_routing({"balance_loss": None, "routing_entropy": None, "expert_usage": {}}) == {}


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    assert should_show_bar(None, FakeTTY()) is True
    assert should_show_bar(None, io.StringIO()) is False
    assert should_show_bar(True, io.StringIO()) is True
    assert should_show_bar(False, FakeTTY()) is False


def test_progress_lines(args: TrainingArguments) -> None:
    out = io.StringIO()
    callback = ProgressLinesCallback(stream=out)
    control = TrainerControl()
    callback.on_train_begin(args, state(0), control)
    callback.on_log(
        args, state(5), control, logs={"loss": 0.69312, "learning_rate": 2.5e-4, "grad_norm": 1.0}
    )
    callback.on_log(
        args, state(5), control, logs={"eval_loss": 0.5, "eval_accuracy": 0.875, "eval_runtime": 1.0}
    )
    first, second = out.getvalue().splitlines()
    assert first.startswith("step 5/10 | loss 0.6931 | lr 2.50e-04 | ")
    assert first.endswith(" samples/s")
    assert second == "eval step 5: eval_loss=0.5000 eval_accuracy=0.8750"


def test_interrupt_callback_turns_sigint_into_save_and_stop(args: TrainingArguments) -> None:
    callback = InterruptCallback()
    before = signal.getsignal(signal.SIGINT)
    callback.install()
    try:
        signal.raise_signal(signal.SIGINT)  # first Ctrl-C: only a flag
        assert callback.pending and not callback.requested
        control = TrainerControl(should_evaluate=True)
        callback.on_step_end(args, state(3), control)
        assert control.should_save and control.should_training_stop and not control.should_evaluate
        assert callback.requested
        with pytest.raises(KeyboardInterrupt):  # second Ctrl-C aborts at once
            signal.raise_signal(signal.SIGINT)
    finally:
        callback.uninstall()
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_during_the_ranks_vote_stops_at_the_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C whose handler runs inside the all-reduce (after the local flag was sent) is kept.

    Losing it would leave this rank training after the user asked to stop; the vote of the next
    step carries it to every rank instead.
    """
    import moc_cli.training.callbacks as callbacks

    def vote_interrupted_by_ctrl_c(flag: bool, device: object) -> bool:
        signal.raise_signal(signal.SIGINT)  # lands while the collective is in flight
        return flag  # the other rank had no Ctrl-C: the vote is this rank's flag as sent

    monkeypatch.setattr(callbacks, "any_rank_requested", vote_interrupted_by_ctrl_c)
    two_ranks = SimpleNamespace(world_size=2, device="cpu")
    callback = InterruptCallback()
    callback.install()
    try:
        first = TrainerControl()
        callback.on_step_end(two_ranks, state(3), first)
        assert callback.pending and not callback.requested
        assert not first.should_training_stop  # the ranks agreed to go on at step 3

        monkeypatch.setattr(callbacks, "any_rank_requested", lambda flag, device: flag)
        second = TrainerControl()
        callback.on_step_end(two_ranks, state(4), second)
        assert second.should_save and second.should_training_stop and callback.requested
    finally:
        callback.uninstall()


def test_interrupt_callback_is_inert_without_ctrl_c(args: TrainingArguments) -> None:
    control = TrainerControl()
    InterruptCallback().on_step_end(args, state(3), control)
    assert not control.should_save and not control.should_training_stop


PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path: Path) -> None:
    events = [
        {"step": 2, "kind": "train", "loss": 0.7},
        {"step": 4, "kind": "train", "loss": 0.6},
        {"step": 4, "kind": "eval", "eval_loss": 0.65, "eval_accuracy": 0.5},
        {"step": 4, "kind": "final_eval", "eval_loss": 0.65, "eval_accuracy": 0.5},
    ]
    curves = plot_curves(events, "accuracy", tmp_path / "plots" / "curves.png")
    assert curves is not None and curves.read_bytes()[:8] == PNG
    assert plot_curves([], "accuracy", tmp_path / "none.png") is None
    heat = plot_routing(
        {"ffn": [[0.9, 0.1], [0.2, 0.8]], "attn": [[0.5, 0.5], [0.5, 0.5]]}, tmp_path / "h.png"
    )
    assert heat is not None and heat.read_bytes()[:8] == PNG
    assert plot_routing({}, tmp_path / "none.png") is None
    import matplotlib.image

    assert matplotlib.image.imread(str(heat)).shape[:2] == (400, 900)  # 2 sites x 4.5 in, 4 in, 100 dpi


def test_stable_metrics_drop_timings() -> None:
    raw = {
        "eval_loss": 0.5,
        "eval_accuracy": 1,
        "eval_runtime": 0.1,
        "eval_samples_per_second": 9.0,
        "epoch": 1.0,
    }
    assert stable_metrics(raw) == {"eval_loss": 0.5, "eval_accuracy": 1.0}


def test_summary_table() -> None:
    summary = {
        "main_metric": "eval_accuracy",
        "main_metric_value": 0.875,
        "eval_split": "validation",
        "trainable_parameters": 1234,
        "total_parameters": 100000,
        "trainable_percent": 1.234,
        "wall_time_seconds": 12.34,
        "global_step": 8,
        "peak_memory_bytes": 3 * 2**20,
        "peak_memory_kind": "peak RSS",
    }
    assert format_summary(summary, "runs/x").splitlines() == [
        "Run summary",
        "-----------",
        "main metric       eval_accuracy = 0.8750 (validation)",
        "trainable params  1,234 / 100,000 (1.234 %)",
        "steps             8",
        "wall time         12.3 s",
        "peak memory       3.0 MiB (peak RSS)",
        "run dir           runs/x",
    ]
