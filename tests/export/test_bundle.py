"""bundle: PEFT model -> export -> `load_exported` gives a plain module with identical logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.export.conftest import LABELS, encode, make_run


@pytest.mark.parametrize("method", ["moc", "control", "lora"])
def test_bundle_round_trip_classification_identical_logits(
    tmp_path: Path, tiny_bert_dir: Path, method: str
) -> None:
    import peft

    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_bert_dir, method)
    result = export_api.export(run.root, "bundle")
    assert result.path == (run.root / "export" / "bundle").resolve()
    assert not result.existed

    model = export_api.load_exported(result.path)
    assert not isinstance(model, peft.PeftModel)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert not model.training
    batch = encode(run.tokenizer)
    with torch.no_grad():
        expected = run.peft_model(**batch).logits
        got = model(**batch).logits
    assert torch.equal(got, expected)
    assert model.config.id2label == dict(enumerate(LABELS))


@pytest.mark.parametrize("method", ["moc", "lora"])
def test_bundle_round_trip_causal_lm_with_tied_embeddings(
    tmp_path: Path, tiny_llama_dir: Path, method: str
) -> None:
    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_llama_dir, method, kind="causal_lm")
    result = export_api.export(run.root, "bundle")
    config = json.loads((result.path / "config.json").read_text())
    # The LM head shares the embedding matrix: stored once, re-tied on load.
    assert config["moc_export"]["tied_weights"] == {"lm_head.weight": "model.embed_tokens.weight"}

    model = export_api.load_exported(result.path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    batch = encode(run.tokenizer)
    with torch.no_grad():
        expected = run.peft_model(**batch).logits
        got = model(**batch).logits
    assert torch.equal(got, expected)


def test_bundle_layout_and_model_card(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    path = export_api.export(run.root, "bundle").path
    names = sorted(p.name for p in path.iterdir())
    assert names == [
        "README.md",
        "config.json",
        "moc_export.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["moc_export"]["peft_config"]["peft_type"] == "LORA"
    assert config["moc_export"]["auto_class"] == "AutoModelForSequenceClassification"
    card = (path / "README.md").read_text()
    assert f"base_model: {tiny_bert_dir}" in card
    assert "| validation/eval_accuracy | 0.8125 |" in card
    assert "arXiv:2606.31397" in card
    assert "moc_cli.load_exported(" in card
    trainable = sum(p.numel() for p in run.peft_model.parameters() if p.requires_grad)
    assert f"- **Trainable parameters saved with the adapter:** {trainable:,}\n" in card
    assert f"- **Run:** `{run.root.resolve()}`\n" in card
    assert "Export format: **bundle**. " in card


def test_sharded_bundle_writes_index_and_round_trips(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    path = export_api.export(run.root, "bundle", max_shard_bytes=1_000_000).path
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (path / "model.safetensors").exists()
    model = export_api.load_exported(path)
    batch = encode(run.tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, run.peft_model(**batch).logits)


def test_bare_adapter_dir_exports_with_labels_from_the_adapter(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    bare = tmp_path / "bare-adapter"
    (run.root / "adapter").rename(bare)
    result = export_api.export(bare, "bundle")
    assert result.path == (bare / "export" / "bundle").resolve()
    model = export_api.load_exported(result.path)
    batch = encode(run.tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, run.peft_model(**batch).logits)
    # No run config names the task: labels fall back to generic names.
    assert model.config.num_labels == 2
