"""onnx: the whole graph, routing included, matches PyTorch under onnxruntime (1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export.conftest import encode, make_run, minilm_dir

# Other batch size and lengths than the traced sample: the axes must be dynamic.
PARITY_TEXTS = [
    "an unexpectedly moving story with a brilliant ending that nobody saw coming",
    "meh",
    "not good",
    "the best film of the year, honestly",
]


def _onnx_logits(folder: Path, batch: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(["logits"], {k: v.numpy() for k, v in batch.items() if k in names})[0]


def _check_parity(run, folder: Path) -> float:
    batch = encode(run.tokenizer, PARITY_TEXTS)
    with torch.no_grad():
        expected = run.peft_model(**batch).logits.numpy()
    got = _onnx_logits(folder, batch)
    assert got.shape == expected.shape
    diff = float(np.max(np.abs(got - expected)))
    assert diff <= 1e-4, diff
    return diff


@pytest.mark.parametrize("method", ["moc", "control", "lora"])
def test_onnx_classification_parity(tmp_path: Path, tiny_bert_dir: Path, cli, method: str) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, method)
    result = cli("merge-export", run.root, "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    folder = run.root / "export" / "onnx"
    manifest = json.loads((folder / "moc_export.json").read_text())
    assert manifest["onnx"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["onnx"]["max_abs_diff_vs_torch"] <= 1e-4
    assert "onnxruntime vs PyTorch on sample inputs: max |logit difference| = " in result.stderr
    _check_parity(run, folder)


@pytest.mark.parametrize("method", ["moc", "lora"])
def test_onnx_causal_lm_parity(tmp_path: Path, tiny_llama_dir: Path, cli, method: str) -> None:
    run = make_run(tmp_path / "run", tiny_llama_dir, method, kind="causal_lm")
    result = cli("merge-export", run.root, "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    _check_parity(run, run.root / "export" / "onnx")


def test_onnx_on_packaged_minilm_moc(tmp_path: Path, cli) -> None:
    run = make_run(tmp_path / "run", minilm_dir(), "moc")
    result = cli("merge-export", run.root, "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    _check_parity(run, run.root / "export" / "onnx")


def test_missing_onnx_packages_name_the_extra(
    tmp_path: Path, tiny_bert_dir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    real_find_spec = importlib.util.find_spec

    def without_onnxruntime(name: str, *args, **kwargs):
        return None if name == "onnxruntime" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_onnxruntime)
    result = cli("merge-export", run.root, "--format", "onnx")
    assert result.exit_code == 2
    assert "--format onnx needs onnxruntime; install them with pip install 'moc_cli[onnx]'" in result.stderr


def test_onnx_of_a_bf16_run_is_float32_and_matches_the_upcast_model(
    tmp_path: Path, tiny_bert_dir: Path, cli
) -> None:
    import onnx

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc", dtype="bfloat16")
    result = cli("merge-export", run.root, "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    folder = run.root / "export" / "onnx"
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    manifest = json.loads((folder / "moc_export.json").read_text())
    assert manifest["dtype"] == "float32"
    # Reference: the same adapter on the float32 backbone (bf16 -> fp32 is exact for the weights).
    from moc_cli.export.build import load_peft_model
    from moc_cli.export.source import resolve_source

    reference, tokenizer, _ = load_peft_model(resolve_source(run.root), dtype="float32")
    batch = encode(tokenizer, PARITY_TEXTS)
    with torch.no_grad():
        expected = reference(**batch).logits.numpy()
    assert float(np.max(np.abs(_onnx_logits(folder, batch) - expected))) <= 1e-4
