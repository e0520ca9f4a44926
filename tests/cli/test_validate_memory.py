"""`moc validate --estimate-memory`: the printed breakdown and the exit-2 error for a missing model."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import invoke

from moc_cli.testing import TINY_RECIPE, save_tiny_model, write_yaml


def test_cli_prints_the_estimate_and_names_the_model_when_its_config_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = save_tiny_model("bert", tmp_path / "bert")
    recipe = write_yaml(tmp_path / "recipe.yaml", {**TINY_RECIPE, "model": {"name_or_path": str(model_dir)}})
    result = invoke("validate", str(recipe), "--estimate-memory", "training.per_device_train_batch_size=4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "Memory estimate (training, one process):"
    assert [line.split()[0] for line in lines[2:7]] == [
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "total",
    ]
    assert "input 4 x 64" in lines[5]
    assert lines[7].startswith("  fits: ") or "warning: the estimate exceeds" in result.stderr

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = invoke("validate", str(recipe), "--estimate-memory", "model.name_or_path=nobody/no-such-model")
    assert missing.exit_code == 2
    # Pre-flight finds the model missing before the estimate starts (no model config to build it from).
    assert (
        "  - model.name_or_path: model 'nobody/no-such-model' is neither a local folder (no "
        f"{Path.cwd() / 'nobody/no-such-model'}) nor in the Hugging Face cache" in missing.stderr
    )
    assert "and the Hub is switched off (HF_HUB_OFFLINE=1); give a local folder written by" in missing.stderr
    assert "OK" not in missing.stdout
