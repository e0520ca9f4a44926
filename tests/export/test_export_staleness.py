"""`moc merge-export` rebuilds an export whose adapter changed (a resumed run) instead of reporting it
as up to date: the manifest records the adapter's sha256 and step it was built from."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from tests.export.conftest import encode, make_run


def built_from(target: Path) -> dict:
    return json.loads((target / "moc_export.json").read_text())["built_from"]


def test_export_records_its_adapter_and_a_changed_adapter_is_rebuilt(
    tmp_path: Path, tiny_bert_dir: Path, cli
) -> None:
    import moc_cli
    from moc_cli.export.exporter import adapter_digest

    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    target = (run.root / "export" / "bundle").resolve()
    assert cli("merge-export", run.root).exit_code == 0
    first = built_from(target)
    assert first == {"adapter_sha256": adapter_digest(run.root / "adapter"), "step": None}

    # The run's adapter is replaced by one trained further (here: other weights).
    changed = make_run(tmp_path / "run", tiny_bert_dir, "moc", weight_scale=0.3)
    again = cli("merge-export", run.root)
    assert again.exit_code == 0, again.stderr
    now = adapter_digest(run.root / "adapter")
    assert (
        f"rebuilt the export at {target}: it was built from an older adapter (step ?, adapter sha256 "
        f"{first['adapter_sha256'][:12]}; now step ?, adapter sha256 {now[:12]})"
    ) in again.stderr
    assert "nothing to do" not in again.stderr
    assert built_from(target)["adapter_sha256"] == now
    batch = encode(changed.tokenizer)
    with torch.no_grad():
        assert torch.equal(moc_cli.load_exported(target)(**batch).logits, changed.peft_model(**batch).logits)

    unchanged = cli("merge-export", run.root)
    assert unchanged.exit_code == 0
    assert f"export already exists at {target} (bundle); nothing to do" in unchanged.stderr


def test_an_export_that_does_not_record_its_adapter_is_rebuilt(
    tmp_path: Path, tiny_bert_dir: Path, cli
) -> None:
    run = make_run(tmp_path / "run", tiny_bert_dir, "moc")
    target = (run.root / "export" / "bundle").resolve()
    assert cli("merge-export", run.root).exit_code == 0
    manifest = json.loads((target / "moc_export.json").read_text())
    del manifest["built_from"]  # as written before exports recorded it
    (target / "moc_export.json").write_text(json.dumps(manifest))
    again = cli("merge-export", run.root)
    assert again.exit_code == 0, again.stderr
    assert (
        f"rebuilt the export at {target}: it does not record which adapter it was built from" in again.stderr
    )
    assert "adapter_sha256" in built_from(target)


def test_export_after_resuming_to_more_steps_matches_the_run(
    tmp_path: Path, tiny_bert_dir: Path, sst2_dir: Path, cli
) -> None:
    """The issue's sequence, end to end: train, export, resume to more steps, export again."""
    import moc_cli
    from moc_cli.export.build import load_peft_model
    from moc_cli.export.exporter import adapter_digest
    from moc_cli.export.source import resolve_source

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_bert_dir)},
                "task": {"name": "glue/sst2", "max_length": 32},
                "data": {
                    "files": {
                        "train": str(sst2_dir / "train.jsonl"),
                        "validation": str(sst2_dir / "validation.jsonl"),
                    },
                    "max_train_samples": 32,
                    "max_eval_samples": 16,
                },
                "method": {"name": "moc", "r": 4},
                "training": {
                    "max_steps": 4,
                    "learning_rate": 0.05,
                    "per_device_train_batch_size": 8,
                    "logging_steps": 2,
                    "eval_strategy": "no",
                    "save_strategy": "steps",
                    "save_steps": 2,
                    "warmup_steps": 0,
                },
                "output": {"progress": "plain"},
            }
        )
    )
    run = tmp_path / "run"
    train = ["train", "--config", config, "--output-dir", run]
    assert cli(*train).exit_code == 0
    target = (run / "export" / "bundle").resolve()
    assert cli("merge-export", run).exit_code == 0
    assert built_from(target)["step"] == 4

    resumed = cli(*train, "--resume", "auto", "training.max_steps=6")
    assert resumed.exit_code == 0, resumed.stderr
    again = cli("merge-export", run)
    assert again.exit_code == 0, again.stderr
    assert f"rebuilt the export at {target}: it was built from an older adapter (step 4, " in again.stderr
    assert built_from(target) == {"adapter_sha256": adapter_digest(run / "adapter"), "step": 6}

    peft_model, tokenizer, _ = load_peft_model(resolve_source(run))
    batch = encode(tokenizer)
    with torch.no_grad():
        assert torch.allclose(
            moc_cli.load_exported(target)(**batch).logits, peft_model(**batch).logits, atol=1e-6
        )
