"""A run directory written by the real training runner (few steps of MoC on real SST-2 rows)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.export.conftest import SAMPLE_TEXTS


def _sst2_dir() -> Path:
    shared = Path(os.environ.get("MOC_SHARED_DIR", Path(__file__).resolve().parents[2].parent / "shared"))
    folder = shared / "data" / "glue" / "sst2"
    if not (folder / "train.jsonl").is_file():
        pytest.skip(f"SST-2 data not found at {folder} (set MOC_SHARED_DIR)")
    return folder


@pytest.fixture(scope="module")
def trained_run(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moc_cli.config import load_run_config
    from moc_cli.training import run_training

    sst2 = _sst2_dir()
    out = tmp_path_factory.mktemp("real-run") / "run"
    overrides = [
        f"model.name_or_path={tiny_bert_dir}",
        "task.name=glue/sst2",
        "task.max_length=32",
        f"data.files.train={sst2 / 'train.jsonl'}",
        f"data.files.validation={sst2 / 'validation.jsonl'}",
        "data.max_train_samples=32",
        "data.max_eval_samples=16",
        "method.name=moc",
        "method.r=4",
        "training.max_steps=4",
        "training.learning_rate=0.01",
        "training.per_device_train_batch_size=8",
        "training.per_device_eval_batch_size=16",
        "training.eval_strategy=steps",
        "training.eval_steps=4",
        "training.save_strategy=steps",
        "training.save_steps=4",
        "training.warmup_steps=0",
        "output.progress=plain",
        f"output.dir={out}",
    ]
    cfg, provenance = load_run_config(recipe=None, config_file=None, overrides=overrides)
    return run_training(cfg, provenance, None)


@pytest.mark.slow
def test_real_run_bundle_matches_peft_reload_and_predicts_sst2_labels(trained_run: Path, cli) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import moc_cli

    result = cli("merge-export", trained_run)
    assert result.exit_code == 0, result.stderr
    bundle = trained_run / "export" / "bundle"
    model = moc_cli.load_exported(bundle)
    assert model.config.id2label == {0: "negative", 1: "positive"}

    tokenizer = AutoTokenizer.from_pretrained(bundle)
    base = AutoModelForSequenceClassification.from_pretrained(
        json.loads((bundle / "moc_export.json").read_text())["base_model"], num_labels=2
    )
    reference = PeftModel.from_pretrained(base, trained_run / "adapter").eval()
    batch = dict(tokenizer(SAMPLE_TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt"))
    with torch.no_grad():
        expected = reference(**batch).logits
        assert torch.equal(model(**batch).logits, expected)

    card = (bundle / "README.md").read_text()
    assert "- **Method:** `moc`\n" in card and "- **Task:** `glue/sst2`\n" in card

    predicted = cli("predict", trained_run / "export" / "bundle", *SAMPLE_TEXTS)
    assert predicted.exit_code == 0, predicted.stderr
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    probs = torch.softmax(expected, dim=-1)
    assert [r["label"] for r in rows] == [["negative", "positive"][int(p.argmax())] for p in probs]
    assert [round(r["probabilities"]["positive"], 4) for r in rows] == [round(float(p[1]), 4) for p in probs]
