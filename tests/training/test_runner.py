"""run_training / run_eval on a tiny random BERT and real SST-2 rows: resume, seeds, Ctrl-C, reload."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from moc_cli.reliability.checkpoints import MARKER_NAME, find_resume_checkpoint, validate_checkpoint
from moc_cli.training import RunInterrupted, RunSetupError, run_eval, run_training
from moc_cli.training.callbacks import read_metrics

MOC = ("method.name=moc",)


def adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def losses(run: Path) -> list[tuple[int, float]]:
    return [
        (e["step"], e["loss"]) for e in read_metrics(run / "logs" / "metrics.jsonl") if e["kind"] == "train"
    ]


def results(run: Path) -> dict:
    return json.loads((run / "eval" / "results.json").read_text())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, sst2_dir: Path) -> dict:
    """An uninterrupted 8-step MoC run (checkpoints at 4 and 8), kept as the reference."""
    from moc_cli.config import load_run_config

    root = tmp_path_factory.mktemp("reference")
    overrides = [*_base_overrides(tiny_bert, sst2_dir), *MOC]

    def config(out: Path, *extra: str):
        return load_run_config(None, None, [*overrides, f"output.dir={out}", *extra])

    cfg, prov = config(root / "run")
    run = run_training(cfg, prov, None)
    return {
        "run": run,
        "config": config,
        "root": root,
        "tensors": adapter_tensors(run),
        "results": results(run),
    }


def _base_overrides(tiny_bert: Path, sst2_dir: Path) -> list[str]:
    return [
        f"model.name_or_path={tiny_bert}",
        "task.name=glue/sst2",
        "task.max_length=32",
        f"data.files.train={sst2_dir / 'train.jsonl'}",
        f"data.files.validation={sst2_dir / 'validation.jsonl'}",
        "data.max_train_samples=64",
        "data.max_eval_samples=32",
        "training.max_steps=8",
        "training.learning_rate=0.01",
        "training.per_device_train_batch_size=8",
        "training.per_device_eval_batch_size=16",
        "training.logging_steps=2",
        "training.eval_strategy=steps",
        "training.eval_steps=4",
        "training.save_strategy=steps",
        "training.save_steps=4",
        "training.save_total_limit=null",
        "training.warmup_steps=0",
        "output.progress=plain",
    ]


def test_reference_run_layout_and_metrics(reference_run: dict) -> None:
    run = reference_run["run"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]
    events = read_metrics(run / "logs" / "metrics.jsonl")
    assert [(e["step"], e["kind"]) for e in events] == [
        (2, "train"),
        (4, "train"),
        (4, "eval"),
        (6, "train"),
        (8, "train"),
        (8, "eval"),
        (8, "train_end"),
        (8, "final_eval"),
    ]
    # MoC routing metrics ride along with every training log event.
    for event in events:
        if event["kind"] == "train":
            assert {"moc_balance_loss", "moc_routing_entropy", "moc_expert_utilization"} <= set(event)
    res = reference_run["results"]
    final = next(e for e in events if e["kind"] == "final_eval")
    assert res["metrics"]["validation"]["eval_accuracy"] == final["eval_accuracy"]
    assert res["metrics"]["validation"]["eval_loss"] == final["eval_loss"]
    assert res["main_metric"] == "eval_accuracy"
    assert res["summary"]["global_step"] == 8
    assert 0 < res["summary"]["trainable_parameters"] < res["summary"]["total_parameters"]
    assert set(res["routing"]["routing_matrix"]) == {"block"}
    assert (run / "plots" / "routing_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_from_checkpoint_matches_uninterrupted_run(reference_run: dict) -> None:
    work = reference_run["root"] / "resumed"
    shutil.copytree(reference_run["run"], work)
    # Simulate a run that died right after step 4's checkpoint.
    for name in ("checkpoints/checkpoint-8", "adapter", "eval", "plots"):
        shutil.rmtree(work / name)
    cfg, prov = reference_run["config"](work)
    run = run_training(cfg, prov, "auto")

    assert_same_tensors(adapter_tensors(run), reference_run["tensors"])
    assert results(run)["metrics"] == reference_run["results"]["metrics"]
    assert losses(run) == losses(reference_run["run"])
    kinds = [(e["step"], e["kind"]) for e in read_metrics(run / "logs" / "metrics.jsonl")]
    assert kinds == [
        (e["step"], e["kind"]) for e in read_metrics(reference_run["run"] / "logs" / "metrics.jsonl")
    ]


class _InterruptAt(TrainerCallback):
    def __init__(self, step: int, how: str) -> None:
        self.step, self.how = step, how

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            if self.how == "signal":
                signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers
            else:
                raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["signal", "exception"])
def test_ctrl_c_saves_a_resumable_checkpoint(reference_run: dict, how: str, capsys) -> None:
    out = reference_run["root"] / f"interrupted-{how}"
    cfg, prov = reference_run["config"](out)
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as info:
        run_training(cfg, prov, None, callbacks=[_InterruptAt(3, how)])
    assert isinstance(info.value, KeyboardInterrupt)
    checkpoint = out / "checkpoints" / "checkpoint-3"
    assert info.value.checkpoint == str(checkpoint)
    assert validate_checkpoint(checkpoint) == []
    assert (checkpoint / MARKER_NAME).is_file()  # what --resume auto requires once a run has markers
    assert find_resume_checkpoint(out / "checkpoints") == checkpoint
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert not (out / "adapter").exists()
    assert f"saved a resumable checkpoint at {checkpoint}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler_before

    run = run_training(cfg, prov, "auto")
    # Trainer restores optimizer, scheduler, RNG and data position: same weights, same metrics.
    assert_same_tensors(adapter_tensors(run), reference_run["tensors"])
    assert results(run)["metrics"] == reference_run["results"]["metrics"]


def test_eval_reproduces_train_time_metrics(reference_run: dict) -> None:
    run = reference_run["root"] / "for-eval"
    shutil.copytree(reference_run["run"], run)
    metrics = run_eval(run, None, [])
    assert metrics == reference_run["results"]["metrics"]["validation"]
    saved = results(run)
    assert saved["metrics"]["validation"] == metrics
    assert saved["summary"] == reference_run["results"]["summary"]  # train-time summary kept
    assert saved["evaluations"][-1]["split"] == "validation"


def test_eval_of_a_bare_adapter_dir_needs_the_task(reference_run: dict, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(reference_run["run"] / "adapter", adapter)
    with pytest.raises(RunSetupError, match=r"task\.name=glue/sst2"):
        run_eval(adapter, None, [])


def test_same_seed_gives_identical_losses(make_config, tmp_path: Path) -> None:
    short = (
        "training.max_steps=3",
        "training.logging_steps=1",
        'training.eval_strategy="no"',
        'training.save_strategy="no"',
    )
    runs = [run_training(make_config(*short, output=tmp_path / name), {}, None) for name in ("a", "b")]
    first, second = (losses(run) for run in runs)
    assert [step for step, _ in first] == [1, 2, 3]
    assert first == second
    assert_same_tensors(adapter_tensors(runs[0]), adapter_tensors(runs[1]))
    other = run_training(make_config(*short, "seed=7", output=tmp_path / "c"), {}, None)
    assert losses(other) != first


def test_refuses_non_empty_output_dir_before_loading_anything(make_config, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cfg = make_config(output=out)
    with pytest.raises(RunSetupError) as info:
        run_training(cfg, {}, None)
    assert f"output directory {out} is not empty; pass --overwrite" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_best_checkpoint_by_the_task_metric_with_early_stopping(make_config, tmp_path: Path) -> None:
    cfg = make_config(
        "method.name=moc",
        "training.max_steps=6",
        "training.learning_rate=0.05",
        "training.eval_steps=1",
        "training.save_steps=1",
        "training.save_total_limit=1",
        "training.load_best_model_at_end=true",
        "training.metric_for_best_model=loss",
        "training.early_stopping_patience=2",
        output=tmp_path / "best",
    )
    run = run_training(cfg, {}, None)
    events = read_metrics(run / "logs" / "metrics.jsonl")
    evals = [e for e in events if e["kind"] == "eval"]
    best = min(evals, key=lambda e: e["eval_loss"])
    final = next(e for e in events if e["kind"] == "final_eval")
    # The reloaded best checkpoint is what the final evaluation (and the saved adapter) reflects.
    assert final["eval_loss"] == best["eval_loss"]
    assert results(run)["metrics"]["validation"]["eval_loss"] == best["eval_loss"]
    state = json.loads(next((run / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_metric"] == best["eval_loss"]
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")


def test_eval_rejects_splits_without_data(reference_run: dict) -> None:
    with pytest.raises(
        RunSetupError, match=r"split 'test' is not in the data of task glue/sst2 \(available: "
    ):
        run_eval(reference_run["run"], "test", [])


def test_resume_refuses_frozen_changes_and_applies_cadence(reference_run: dict) -> None:
    from moc_cli.config import RunConfig
    from moc_cli.training.run_dir import RunDir
    from moc_cli.training.run_root import check_resume_config

    run = RunDir(reference_run["run"])
    saved = RunConfig.model_validate(yaml.safe_load(run.config.read_text()))
    changed = saved.model_copy(update={"seed": 7}, deep=True)
    changed.training.max_steps = 9
    with pytest.raises(RunSetupError) as info:
        check_resume_config(run, changed)
    assert "\n      seed: 42 -> 7\n" in str(info.value)
    assert "max_steps" not in str(info.value)
    longer = saved.model_copy(deep=True)
    longer.training.max_steps = 9
    assert check_resume_config(run, longer) == ["training.max_steps: 8 -> 9"]


@pytest.mark.parametrize("method", ["lora", "moc"])
def test_classification_loss_does_not_grow_with_gradient_accumulation(
    make_config, tmp_path: Path, method: str
) -> None:
    """One step of 8 examples logs the same loss as two accumulated micro-batches of 4 (the mean of
    equal-sized micro-batch means is the batch mean); it logged about twice as much before."""
    short = (
        f"method.name={method}",
        "training.max_steps=1",
        "training.logging_steps=1",
        'training.eval_strategy="no"',
        'training.save_strategy="no"',
    )
    whole = run_training(make_config(*short, output=tmp_path / "whole"), {}, None)
    split = run_training(
        make_config(
            *short,
            "training.per_device_train_batch_size=4",
            "training.gradient_accumulation_steps=2",
            output=tmp_path / "split",
        ),
        {},
        None,
    )
    ((step, loss_whole),) = losses(whole)
    ((_, loss_split),) = losses(split)
    assert step == 1
    assert loss_split == pytest.approx(loss_whole, rel=0.02)


def test_a_key_added_to_the_schema_since_a_run_was_saved_is_not_a_resume_change(make_config) -> None:
    from moc_cli.training.checkpointing import split_drift
    from moc_cli.training.run_root import with_schema_defaults

    current = make_config().model_dump(mode="json")
    saved = make_config().model_dump(mode="json")
    del saved["model"]["allow_pickle"]  # a config.yaml written before the key existed
    assert split_drift(saved, current)[0] == ["model.allow_pickle: (unset) -> False"]
    assert split_drift(with_schema_defaults(saved), current) == ([], [])
