"""`moc merge-export`: merged (LoRA) checkpoints, refusals, atomic and idempotent writes, pickles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.export.conftest import encode, make_run


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_foldable_methods_merge_into_a_plain_transformers_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path, cli, method: str
) -> None:
    from transformers import AutoModelForSequenceClassification

    run = make_run(tmp_path / "run", tiny_bert_dir, method)
    result = cli("merge-export", run.root)  # foldable methods default to merged
    assert result.exit_code == 0, result.stderr
    target = run.root / "export" / "merged"
    assert result.stdout.strip() == str(target.resolve())
    assert not list(target.glob("adapter_*"))
    model = AutoModelForSequenceClassification.from_pretrained(target)
    model.eval()
    batch = encode(run.tokenizer)
    with torch.no_grad():
        expected = run.peft_model(**batch).logits
        got = model(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not any(
        key in name for name, _ in model.named_parameters() for key in ("lora", "ia3", "base_layer")
    )
    assert model.config.id2label == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("method", ["moc", "control"])
def test_merged_is_refused_for_moc_with_the_reason(
    tmp_path: Path, tiny_bert_dir: Path, cli, method: str
) -> None:
    from moc_cli.model_card import merge_refusal

    run = make_run(tmp_path / "run", tiny_bert_dir, method)
    result = cli("merge-export", run.root, "--format", "merged")
    assert result.exit_code == 2
    assert result.stderr == f"error: {merge_refusal(method)}\n"
    assert "parallel to non-linear sub-blocks" in result.stderr
    assert ("routing is input-dependent" in result.stderr) == (method == "moc")
    assert "--format bundle" in result.stderr and "--format onnx" in result.stderr
    assert not (run.root / "export").exists()
    # A bare adapter folder: the method is read from adapter_config.json.
    bare = tmp_path / "bare"
    (run.root / "adapter").rename(bare)
    result = cli("merge-export", bare, "--format", "merged")
    assert result.exit_code == 2
    assert result.stderr == f"error: {merge_refusal(method)}\n"


def test_molex_merge_is_refused_and_bundle_round_trips(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    import moc_cli
    from moc_cli.model_card import merge_refusal

    run = make_run(tmp_path / "run", tiny_bert_dir, "molex")
    refused = cli("merge-export", run.root, "--format", "merged")
    assert refused.exit_code == 2
    assert refused.stderr == f"error: {merge_refusal('molex')}\n"
    assert "MoLEx mixes whole pretrained layers per input" in refused.stderr
    result = cli("merge-export", run.root)
    assert result.exit_code == 0, result.stderr
    model = moc_cli.load_exported(run.root / "export" / "bundle")
    batch = encode(run.tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, run.peft_model(**batch).logits)


def test_moc_defaults_to_bundle_and_rerun_is_idempotent(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    first = cli("merge-export", run.root)
    assert first.exit_code == 0, first.stderr
    target = (run.root / "export" / "bundle").resolve()
    assert f"exported bundle to {target}" in first.stderr
    created = json.loads((target / "moc_export.json").read_text())["created"]
    weights_mtime = (target / "model.safetensors").stat().st_mtime_ns

    again = cli("merge-export", run.root, "--format", "bundle")
    assert again.exit_code == 0
    assert (
        f"export already exists at {target} (bundle); nothing to do (pass --force to rebuild)" in again.stderr
    )
    assert (target / "model.safetensors").stat().st_mtime_ns == weights_mtime

    forced = cli("merge-export", run.root, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert f"exported bundle to {target}" in forced.stderr
    assert (target / "model.safetensors").stat().st_mtime_ns != weights_mtime
    assert json.loads((target / "moc_export.json").read_text())["created"] >= created
    assert sorted(p.name for p in target.parent.iterdir()) == ["bundle"]


def test_interrupted_export_leaves_nothing_and_rerun_succeeds(
    tmp_path: Path, tiny_bert_dir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    real_save = safetensors.torch.save_file

    def crash_mid_write(tensors, filename, metadata=None):
        # Half a file on disk, then the process "dies".
        Path(filename).write_bytes(b"\0" * 1024)
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", crash_mid_write)
    crashed = cli("merge-export", run.root, "--format", "bundle")
    assert crashed.exit_code == 1
    assert "No space left on device" in crashed.stderr and "Traceback" not in crashed.stderr  # one line
    export_root = run.root / "export"
    assert list(export_root.iterdir()) == []  # neither the target nor a temp dir remains

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    rerun = cli("merge-export", run.root, "--format", "bundle")
    assert rerun.exit_code == 0, rerun.stderr
    assert "exported bundle" in rerun.stderr
    assert sorted(p.name for p in export_root.iterdir()) == ["bundle"]


def test_stale_partial_dir_from_a_killed_export_is_removed(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    stale = run.root / "export" / ".bundle.partial-abc123"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"truncated")
    result = cli("merge-export", run.root, "--format", "bundle")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (run.root / "export").iterdir()) == ["bundle"]


def test_pickle_adapter_is_refused_unless_allowed(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "lora", safe_serialization=False)
    assert (run.root / "adapter" / "adapter_model.bin").is_file()
    refused = cli("merge-export", run.root, "--format", "bundle")
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {(run.root / 'adapter').resolve()} has no safetensors weights, only pickle files "
        "(adapter_model.bin), which can run arbitrary code when loaded; convert them (model.save_pretrained(dir) "
        "writes model.safetensors), or pass --allow-pickle if you trust them\n"
    )
    assert not (run.root / "export").exists()

    allowed = cli("merge-export", run.root, "--format", "bundle", "--allow-pickle")
    assert allowed.exit_code == 0, allowed.stderr


def test_output_option_and_foreign_directory_is_never_overwritten(
    tmp_path: Path, tiny_bert_dir: Path, cli
) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = cli("merge-export", run.root, "--format", "bundle", "--output", foreign, "--force")
    assert result.exit_code == 2
    assert f"{foreign} exists and is not a moc_cli export; choose another --output" in result.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = tmp_path / "elsewhere" / "bundle"
    ok = cli("merge-export", run.root, "--format", "bundle", "--output", out)
    assert ok.exit_code == 0, ok.stderr
    assert (out / "moc_export.json").is_file()


def test_bad_inputs_name_the_fix(tmp_path: Path, cli) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("merge-export", empty)
    assert result.exit_code == 2
    assert "has neither config.yaml (a run directory) nor adapter_config.json" in result.stderr

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name_or_path: x}\n")
    result = cli("merge-export", run)
    assert result.exit_code == 2
    assert "has no adapter" in result.stderr and "moc train --resume auto" in result.stderr


def test_unknown_format_is_a_usage_error(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    result = cli("merge-export", run.root, "--format", "gguf")
    assert result.exit_code == 2
    assert "--format 'gguf' is not one of bundle, merged, onnx" in result.stderr


def test_full_fine_tuning_exports_merged_bundle_and_onnx(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    import moc_cli

    run = make_run(tmp_path / "run", tiny_bert_dir, "full")
    batch = encode(run.tokenizer)
    with torch.no_grad():
        expected = run.peft_model(**batch).logits

    result = cli("merge-export", run.root)  # full fine-tuning defaults to merged
    assert result.exit_code == 0, result.stderr
    merged = AutoModelForSequenceClassification.from_pretrained(run.root / "export" / "merged").eval()
    bundle_result = cli("merge-export", run.root, "--format", "bundle")
    assert bundle_result.exit_code == 0, bundle_result.stderr
    bundle = moc_cli.load_exported(run.root / "export" / "bundle")
    with torch.no_grad():
        assert torch.equal(merged(**batch).logits, expected)
        assert torch.equal(bundle(**batch).logits, expected)
    card = (run.root / "export" / "bundle" / "README.md").read_text()
    total = sum(p.numel() for p in run.peft_model.parameters())
    assert f"- **Trainable parameters saved with the adapter:** {total:,}\n" in card

    assert cli("merge-export", run.root, "--format", "onnx").exit_code == 0
    session = ort.InferenceSession(str(run.root / "export" / "onnx" / "model.onnx"))
    got = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
    assert float(np.max(np.abs(got - expected.numpy()))) <= 1e-4


def test_checkpoint_adapter_exports_beside_the_final_one(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    import shutil

    run = make_run(tmp_path / "run", tiny_bert_dir, "lora")
    checkpoint = run.root / "checkpoints" / "checkpoint-4"
    shutil.copytree(run.root / "adapter", checkpoint)
    final = cli("merge-export", run.root, "--format", "bundle")
    assert final.exit_code == 0, final.stderr
    from_checkpoint = cli("merge-export", checkpoint, "--format", "bundle")
    assert from_checkpoint.exit_code == 0, from_checkpoint.stderr
    assert "already exists" not in from_checkpoint.stderr
    target = run.root / "export" / "checkpoint-4" / "bundle"
    manifest = json.loads((target / "moc_export.json").read_text())
    assert manifest["adapter"] == str(checkpoint.resolve())
    assert manifest["source"] == str(run.root.resolve())

    clash = cli("merge-export", checkpoint, "--format", "bundle", "--output", run.root / "export" / "bundle")
    assert clash.exit_code == 2
    assert (
        f"holds an export of {(run.root / 'adapter').resolve()}, not of {checkpoint.resolve()}"
        in clash.stderr
    )


def test_adapter_on_a_base_of_another_size_is_refused_before_loading(
    tmp_path: Path, tiny_bert_dir: Path, cli
) -> None:
    """The run's base swapped for a wider BERT: exit 2 naming both models, nothing exported."""
    import yaml

    from moc_cli.testing import save_tiny_model

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    wider = save_tiny_model("bert", tmp_path / "wider-bert", hidden_size=64, max_position_embeddings=128)
    config_file = run.root / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["model"]["name_or_path"] = str(wider)
    config_file.write_text(yaml.safe_dump(config))
    result = cli("merge-export", run.root)
    assert result.exit_code == 2, result.stderr
    assert "hidden_size 32 != 64" in result.stderr
    assert str(wider) in result.stderr
    export_dir = run.root / "export"
    assert not export_dir.exists() or list(export_dir.iterdir()) == []  # no bundle, no leftovers


def test_a_damaged_adapter_is_one_line_naming_the_file(tmp_path: Path, tiny_bert_dir: Path, cli) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    weights = run.root / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated copy
    done = cli("merge-export", run.root)
    assert done.exit_code == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"error: {weights}: damaged or incomplete (")
    assert lines[0].endswith(
        "restore the file from a checkpoint (checkpoints/checkpoint-N holds the same files) or train again"
    )
    assert not (run.root / "export").exists() or not any((run.root / "export").rglob("model.safetensors"))
