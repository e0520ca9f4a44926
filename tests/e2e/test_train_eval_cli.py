"""`moc train` then `moc eval` through the real Typer app on a tiny BERT and real SST-2 rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from moc_cli.cli.app import app

CHECKPOINT_FILES = [
    ".complete",  # the completion marker (moc_cli.reliability.checkpoints): the save finished
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "optimizer.pt",
    "rng_state.pth",
    "scheduler.pt",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
    "training_args.bin",
]
EXPECTED_TREE = sorted(
    [
        "config.yaml",
        "env.json",
        "adapter/README.md",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "adapter/tokenizer_config.json",
        "logs/metrics.jsonl",
        "eval/results.json",
        "plots/training_curves.png",
        "plots/routing_heatmap.png",
        *[f"checkpoints/checkpoint-{step}/{name}" for step in (3, 6) for name in CHECKPOINT_FILES],
    ]
)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def config_file(tmp_path: Path, tiny_bert: Path, sst2_dir: Path) -> Path:
    config = {
        "description": "e2e: MoC on a tiny BERT",
        "model": {"name_or_path": str(tiny_bert)},
        "task": {"name": "glue/sst2", "max_length": 32},
        "data": {
            "files": {
                "train": str(sst2_dir / "train.jsonl"),
                "validation": str(sst2_dir / "validation.jsonl"),
            },
            "max_train_samples": 48,
            "max_eval_samples": 40,
        },
        "method": {"name": "moc", "r": 4},
        "training": {
            "max_steps": 6,
            "learning_rate": 0.01,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "logging_steps": 3,
            "eval_strategy": "steps",
            "eval_steps": 3,
            "save_strategy": "steps",
            "save_steps": 3,
            "warmup_steps": 0,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_then_eval_reproduces_metrics(
    config_file: Path, tmp_path: Path, tiny_bert: Path, wider_bert: Path
) -> None:
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--config", str(config_file), "--output-dir", str(run_dir), "--no-progress"]
    )
    assert result.exit_code == 0, result.output

    assert tree(run_dir) == EXPECTED_TREE
    # The folder is printed once, in the summary; the last line names the next commands.
    assert result.stdout.count(f"run dir           {run_dir}\n") == 1
    assert result.stdout.splitlines()[-1] == f"next: moc eval {run_dir}   |   moc merge-export {run_dir}"
    assert "Run summary" in result.stdout and "main metric       eval_accuracy = " in result.stdout
    # Plain progress lines, no tqdm bars, when output is not a terminal.
    assert "step 3/6 | loss " in result.stderr and "samples/s" in result.stderr
    assert "it/s]" not in result.stderr

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["output"]["dir"] == str(run_dir)
    assert saved["method"]["name"] == "moc" and saved["method"]["r"] == 4
    env = json.loads((run_dir / "env.json").read_text())
    assert env["seed"] == 42 and env["versions"]["peft"] and env["provenance"]["method.r"].startswith("file:")

    events = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["kind"]) for e in events] == [
        (3, "train"),
        (3, "eval"),
        (6, "train"),
        (6, "eval"),
        (6, "train_end"),
        (6, "final_eval"),
    ]
    final = events[-1]
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["metrics"]["validation"] == {
        "eval_loss": final["eval_loss"],
        "eval_accuracy": final["eval_accuracy"],
    }
    assert results["summary"]["main_metric_value"] == final["eval_accuracy"]
    assert results["summary"]["global_step"] == 6

    card = (run_dir / "adapter" / "README.md").read_text()
    assert "library_name: peft" in card and "import moc_cli" in card and "glue/sst2" in card
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "MOC"

    evaluated = runner.invoke(app, ["eval", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    # A fresh process state: base model + adapter reloaded from disk give the same numbers, bit for bit.
    assert metrics == results["metrics"]["validation"]

    before = (run_dir / "eval" / "results.json").read_text()
    wrong_base = runner.invoke(app, ["eval", str(run_dir), f"model.name_or_path={wider_bert}"])
    assert wrong_base.exit_code == 2, wrong_base.output
    assert (
        f"Adapter {run_dir / 'adapter'} was trained on '{tiny_bert}' (model_type=bert, hidden_size=32) "
        f"and does not fit the base model '{wider_bert}' (model_type=bert, hidden_size=48): "
        "hidden_size 32 != 48." in wrong_base.stderr
    )
    assert (run_dir / "eval" / "results.json").read_text() == before

    again = runner.invoke(app, ["train", "--config", str(config_file), "--output-dir", str(run_dir)])
    assert again.exit_code == 2
    assert f"output directory {run_dir} is not empty; pass --overwrite" in again.stderr
    assert tree(run_dir) == EXPECTED_TREE


def test_ctrl_c_exits_130_and_resume_auto_finishes(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from moc_cli.training.callbacks import InterruptCallback

    original = InterruptCallback.on_step_end

    def ctrl_c_at_step_2(self, args, state, control, **kwargs):
        if state.global_step == 2 and not self.requested:
            signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        return original(self, args, state, control, **kwargs)

    runner = CliRunner()
    run_dir = tmp_path / "run"
    train = ["train", "--config", str(config_file), "--output-dir", str(run_dir)]
    with monkeypatch.context() as patch:
        patch.setattr(InterruptCallback, "on_step_end", ctrl_c_at_step_2)
        interrupted = runner.invoke(app, train)
    assert interrupted.exit_code == 130, interrupted.output
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    assert f"Interrupted: saved a resumable checkpoint at {checkpoint}" in interrupted.stderr
    assert f"--output-dir {run_dir} --resume auto" in interrupted.stderr
    assert not (run_dir / "adapter").exists()

    resumed = runner.invoke(app, [*train, "--resume", "auto"])
    assert resumed.exit_code == 0, resumed.output
    assert "warning: resuming with a config that differs" not in resumed.stderr
    # save_total_limit (2) rotated the interrupt checkpoint out: the same tree as an uninterrupted run.
    assert tree(run_dir) == EXPECTED_TREE
    state = json.loads((run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
