"""Loading policy: safetensors only by default, remote code off, no unsafe deserialisation in the package."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from reliability_helpers import tiny_classifier
from transformers import AutoModelForSequenceClassification

from moc_cli.reliability.safety import (
    PICKLE_SUFFIXES,
    UnsafeWeightsError,
    check_weights_safe,
    find_unsafe_calls,
    from_pretrained_kwargs,
    pickle_weight_files,
    pickle_weights_to_load,
    resolve_trust_remote_code,
)

PACKAGE = Path(__file__).resolve().parents[2] / "moc_cli"


def test_pickle_weights_refused_with_file_and_flag(tmp_path) -> None:
    model = tiny_classifier()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError) as err:
        check_weights_safe(tmp_path)
    assert str(err.value) == (
        f"{tmp_path} has no safetensors weights, only pickle files (pytorch_model.bin), which can run "
        "arbitrary code when loaded; convert them (model.save_pretrained(dir) writes model.safetensors), or "
        "pass --allow-pickle if you trust them"
    )
    with pytest.raises(UnsafeWeightsError) as err:
        check_weights_safe(tmp_path, opt_in="set model.allow_pickle=true")
    assert str(err.value).endswith(", or set model.allow_pickle=true if you trust them")


def test_pickles_beside_safetensors_are_never_read(tmp_path) -> None:
    model = tiny_classifier()
    model.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert pickle_weight_files(tmp_path) == [tmp_path / "pytorch_model.bin"]
    assert pickle_weights_to_load(tmp_path) == []
    check_weights_safe(tmp_path)  # transformers and peft load the safetensors file


def test_one_list_of_pickle_suffixes() -> None:
    assert PICKLE_SUFFIXES == (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def test_allow_pickle_warns(tmp_path, caplog) -> None:
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04N.")
    with caplog.at_level(logging.WARNING, logger="moc_cli.reliability.safety"):
        check_weights_safe(tmp_path, allow_pickle=True)
    assert caplog.records[0].getMessage() == (
        f"Loading pickle weight files because pickle loading was allowed: {tmp_path / 'adapter_model.bin'}"
    )


def test_trainer_state_files_and_safetensors_pass(tmp_path) -> None:
    tiny_classifier().save_pretrained(tmp_path)
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth"):
        (tmp_path / name).write_bytes(b"x")
    assert pickle_weight_files(tmp_path) == []
    check_weights_safe(tmp_path)
    check_weights_safe(tmp_path / "does-not-exist")


def test_from_pretrained_kwargs_enforce_safetensors(tmp_path) -> None:
    assert from_pretrained_kwargs() == {"trust_remote_code": False, "use_safetensors": True}
    assert from_pretrained_kwargs(trust_remote_code=True, allow_pickle=True) == {"trust_remote_code": True}
    assert resolve_trust_remote_code(None) is False
    assert resolve_trust_remote_code("yes") is False  # only an explicit bool True enables it
    # transformers itself refuses a pickle-only folder under these kwargs.
    model = tiny_classifier()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, **from_pretrained_kwargs())


def test_scanner_finds_unsafe_calls(tmp_path) -> None:
    (tmp_path / "bad.py").write_text(
        "import yaml, torch, pickle\n"
        "yaml.load(open('a'))\n"
        "yaml.load(open('a'), Loader=yaml.SafeLoader)\n"
        "yaml.unsafe_load('x')\n"
        "torch.load('w.pt')\n"
        "torch.load('w.pt', weights_only=False)\n"
        "torch.load('w.pt', weights_only=True)\n"
        "pickle.loads(b'')\n"
        "AutoModel.from_pretrained('m', trust_remote_code=True)\n"
        "AutoModel.from_pretrained('m', trust_remote_code=cfg.trust)\n"
    )
    p = tmp_path / "bad.py"
    assert find_unsafe_calls(tmp_path) == [
        f"{p}:2: yaml.load() without a safe Loader: use yaml.safe_load",
        f"{p}:4: yaml.unsafe_load(): use yaml.safe_load",
        f"{p}:5: torch.load() without weights_only=True",
        f"{p}:6: torch.load() without weights_only=True",
        f"{p}:8: pickle.loads(): pickle runs arbitrary code; use safetensors or JSON",
        f"{p}:9: AutoModel.from_pretrained(trust_remote_code=True): take the value from the run config",
    ]


def test_package_has_no_unsafe_deserialisation() -> None:
    """yaml.safe_load only, torch.load(weights_only=True) only, no pickle, no hard-wired remote code."""
    assert find_unsafe_calls(PACKAGE) == []


def test_remote_code_is_announced_once_per_process(caplog) -> None:
    """The tokenizer and the model of one build both resolve the setting: one warning, not two."""
    from moc_cli.reliability import safety

    safety._announce_remote_code.cache_clear()
    with caplog.at_level("WARNING", logger="moc_cli.reliability.safety"):
        assert resolve_trust_remote_code(True) is True
        assert from_pretrained_kwargs(trust_remote_code=True)["trust_remote_code"] is True
    assert [r.getMessage() for r in caplog.records] == [
        "trust_remote_code is on: Python code shipped with the model will be executed."
    ]
