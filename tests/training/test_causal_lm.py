"""A causal-LM run: eval loss + perplexity, generated samples under eval/, TensorBoard opt-in."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moc_cli.config import load_run_config
from moc_cli.training import run_training


def test_instruct_run_reports_perplexity_and_samples(
    tiny_llama: Path, shared_data: Path, tmp_path: Path
) -> None:
    data = shared_data / "instruct" / "self_instruct_seed_tasks.jsonl"
    if not data.is_file():
        pytest.skip(f"instruction data not found at {data}")
    cfg, prov = load_run_config(
        None,
        None,
        [
            f"model.name_or_path={tiny_llama}",
            "task.name=instruct/alpaca",
            "task.max_length=48",
            "task.options.template=plain",
            "task.options.validation_size=8",
            "task.options.num_generation_prompts=2",
            "task.options.min_prompt_tokens=4",
            f"data.files.train={data}",
            "data.max_train_samples=16",
            "method.name=moc",
            "training.max_steps=2",
            "training.per_device_train_batch_size=4",
            "training.gradient_accumulation_steps=2",
            "training.logging_steps=1",
            'training.save_strategy="no"',
            "training.report_to=[tensorboard]",
            "output.progress=none",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    run = run_training(cfg, prov, None)

    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["main_metric"] == "eval_loss" and results["greater_is_better"] is False
    metrics = results["metrics"]["validation"]
    assert metrics["eval_perplexity"] == math.exp(metrics["eval_loss"])
    assert metrics["eval_generation_samples"] == 2.0
    samples = (run / "eval" / "validation" / "generations.jsonl").read_text().splitlines()
    assert len(samples) == 2 and {"prompt", "generation", "reference"} <= set(json.loads(samples[0]))
    # Routing metrics reach TensorBoard, whose event files live under logs/.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (run / "logs" / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/moc_balance_loss", "train/moc_routing_entropy", "eval/loss"} <= tags
    assert list((run / "checkpoints").iterdir()) == []  # save_strategy "no", and TensorBoard not here
