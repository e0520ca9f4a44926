"""`moc predict` / `predict()`: labels with probabilities and greedy generations, one JSON line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.export.conftest import LABELS, SAMPLE_TEXTS, encode, make_run


def _reference(run, texts, pairs=None) -> list[dict]:
    batch = dict(
        run.tokenizer(texts, pairs, padding=True, truncation=True, max_length=64, return_tensors="pt")
    )
    with torch.no_grad():
        probs = torch.softmax(run.peft_model(**batch).logits, dim=-1)
    return [
        {
            "label": LABELS[int(p.argmax())],
            "probabilities": {name: round(float(v), 4) for name, v in zip(LABELS, p, strict=True)},
        }
        for p in probs
    ]


def _rounded(row: dict) -> dict:
    return {"label": row["label"], "probabilities": {k: round(v, 4) for k, v in row["probabilities"].items()}}


@pytest.fixture
def moc_bundle(tmp_path: Path, tiny_bert_dir: Path):
    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    return run, export_api.export(run.root, "bundle").path


def test_predict_cli_on_bundle_prints_labels_and_probabilities(moc_bundle, cli) -> None:
    run, bundle = moc_bundle
    result = cli("predict", bundle, *SAMPLE_TEXTS)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(SAMPLE_TEXTS)
    assert [_rounded(r) for r in rows] == _reference(run, SAMPLE_TEXTS)
    for row in rows:
        assert row["score"] == max(row["probabilities"].values())
        assert row["label"] in LABELS


def test_predict_fixed_inputs_exact_values(moc_bundle, cli) -> None:
    """Pinned against the PyTorch PEFT model: the probabilities are not just self-consistent."""
    run, bundle = moc_bundle
    result = cli("predict", bundle, "dull.")
    row = json.loads(result.stdout)
    batch = encode(run.tokenizer, ["dull."])
    with torch.no_grad():
        p = torch.softmax(run.peft_model(**batch).logits[0], dim=-1)
    assert row["probabilities"] == {"negative": float(p[0]), "positive": float(p[1])}
    assert row["label"] == LABELS[int(p.argmax())]


def test_predict_file_with_pairs_batched(tmp_path: Path, moc_bundle, cli) -> None:
    run, bundle = moc_bundle
    pairs = [("the film", "was great"), ("it was", "a waste of time"), ("acting", "superb")]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps({"sentence1": a, "sentence2": b}) for a, b in pairs) + "\n")
    result = cli("predict", bundle, "--file", inputs, "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = _reference(run, [a for a, _ in pairs[:2]], [b for _, b in pairs[:2]]) + _reference(
        run, [pairs[2][0]], [pairs[2][1]]
    )
    assert [_rounded(r) for r in rows] == expected


def test_predict_on_run_dir_uses_the_adapter(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from moc_cli.export.predict import predict

    run = make_run(tmp_path / "run", tiny_bert_dir, "control")
    rows = predict(run.root, [{"text": t} for t in SAMPLE_TEXTS])
    assert [_rounded(r) for r in rows] == _reference(run, SAMPLE_TEXTS)


def test_predict_input_errors(tmp_path: Path, moc_bundle, cli) -> None:
    _, bundle = moc_bundle
    none = cli("predict", bundle)
    assert none.exit_code == 2
    assert "no inputs: pass texts as arguments or --file inputs.jsonl" in none.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"review": "no text field"}\n')
    result = cli("predict", bundle, "--file", bad)
    assert result.exit_code == 2
    # `sentence` is accepted too now (the field of CoLA's and SST-2's own data files).
    assert (
        f"{bad} line 2: expected an object with field 'text' or 'sentence' or 'sentence1' (and optional "
        "'sentence2')" in result.stderr
    )


def test_predict_on_merged_lora_export(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import moc_cli.export as export_api
    from moc_cli.export.predict import predict

    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    merged = export_api.export(run.root, "merged").path
    rows = predict(merged, SAMPLE_TEXTS, batch_size=2)
    assert [_rounded(r) for r in rows] == _reference(run, SAMPLE_TEXTS[:2]) + _reference(
        run, SAMPLE_TEXTS[2:]
    )


def test_predict_on_onnx_export_points_to_onnxruntime(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    onnx_dir = export_api.export(run.root, "onnx").path
    result = cli("predict", onnx_dir, "text")
    assert result.exit_code == 2
    assert "is an ONNX export; run it with onnxruntime.InferenceSession(" in result.stderr


def test_predict_on_a_run_with_pickle_adapter_needs_allow_pickle(
    tmp_path: Path, tiny_bert_dir: Path, cli
) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "lora", safe_serialization=False)
    refused = cli("predict", run.root, "dull.")
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {(run.root / 'adapter').resolve()} has no safetensors weights, only pickle files "
        "(adapter_model.bin), which can run arbitrary code when loaded; convert them (model.save_pretrained(dir) "
        "writes model.safetensors), or pass --allow-pickle if you trust them\n"
    )
    allowed = cli("predict", run.root, "dull.", "--allow-pickle")
    assert allowed.exit_code == 0, allowed.stderr
    assert [_rounded(json.loads(allowed.stdout))] == _reference(run, ["dull."])


def test_predict_regression_pairs_give_the_raw_score(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import moc_cli.export as export_api
    from moc_cli.export.predict import predict

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc", kind="regression")
    bundle = export_api.export(run.root, "bundle").path
    rows = predict(bundle, [{"sentence1": "a man plays guitar", "sentence2": "someone plays music"}])
    batch = run.tokenizer(["a man plays guitar"], ["someone plays music"], return_tensors="pt")
    with torch.no_grad():
        expected = float(run.peft_model(**batch).logits[0, 0])
    assert rows == [{"score": expected}]


@pytest.mark.parametrize("penalty", [None, 1.5])
def test_predict_generation_matches_greedy_peft_generate(
    tmp_path: Path, tiny_llama_dir: Path, cli, penalty: float | None
) -> None:
    import moc_cli.export as export_api

    run = make_run(tmp_path / "run", tiny_llama_dir, "moc", kind="causal_lm")
    bundle = export_api.export(run.root, "bundle").path
    flags = [] if penalty is None else ["--repetition-penalty", str(penalty)]
    result = cli("predict", bundle, "hello there", "--max-new-tokens", "6", *flags)
    assert result.exit_code == 0, result.stderr
    batch = run.tokenizer(["hello there"], return_tensors="pt")
    with torch.no_grad():
        out = run.peft_model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=6,
            do_sample=False,
            repetition_penalty=penalty or 1.0,
            pad_token_id=run.tokenizer.pad_token_id,
        )
    expected = run.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    # The input is echoed beside its prediction.
    assert json.loads(result.stdout) == {"input": "hello there", "generated_text": expected}
    below = cli("predict", bundle, "hello there", "--repetition-penalty", "0.5")
    assert below.exit_code == 2
    assert (
        "Invalid value for '--repetition-penalty': Input should be greater than or equal to 1" in below.stderr
    )
