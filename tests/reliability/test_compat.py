"""Adapter onto the wrong base: a clear error naming both models, base weights untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from reliability_helpers import tiny_bert_config
from transformers import AutoModelForSequenceClassification, LlamaConfig

from moc_cli.reliability.compat import AdapterMismatchError, check_adapter_compatible

LORA = {"task_type": "SEQ_CLS", "r": 4, "target_modules": ["query", "value"]}


def _saved_base(root: Path, name: str, hidden: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(tiny_bert_config(hidden)).save_pretrained(root / name)
    return root / name


def _load(path: Path):
    return AutoModelForSequenceClassification.from_pretrained(path)


def _train_free_adapter(base, out: Path) -> Path:
    peft_model = get_peft_model(base, LoraConfig(**LORA))
    with torch.no_grad():  # non-zero B so that loading the adapter changes outputs
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    peft_model.save_pretrained(out)
    return out


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not any("lora" in name or "moc_" in name for name, _ in model.named_modules())


def test_wrong_hidden_size_names_both_bases(tmp_path) -> None:
    base32, base64 = _saved_base(tmp_path, "bert32", 32), _saved_base(tmp_path, "bert64", 64)
    adapter = _train_free_adapter(_load(base32), tmp_path / "adapter")
    wrong = _load(base64)
    before = _snapshot(wrong)
    with pytest.raises(AdapterMismatchError) as err:
        check_adapter_compatible(adapter, wrong)
    assert str(err.value) == (
        f"Adapter {adapter} was trained on '{base32}' (model_type=bert, hidden_size=32) and does not fit the "
        f"base model '{base64}' (model_type=bert, hidden_size=64): hidden_size 32 != 64. Load it onto the base "
        "model it was trained on (see base_model_name_or_path in adapter_config.json)."
    )
    _assert_unchanged(wrong, before)


def test_wrong_architecture_names_both_bases(tmp_path) -> None:
    base32 = _saved_base(tmp_path, "bert32", 32)
    adapter = _train_free_adapter(_load(base32), tmp_path / "adapter")
    torch.manual_seed(0)
    llama_cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=0,
    )
    AutoModelForSequenceClassification.from_config(llama_cfg).save_pretrained(tmp_path / "llama32")
    llama = _load(tmp_path / "llama32")
    before = _snapshot(llama)
    with pytest.raises(AdapterMismatchError) as err:
        check_adapter_compatible(adapter, llama)
    assert str(err.value).startswith(
        f"Adapter {adapter} was trained on '{base32}' (model_type=bert, hidden_size=32) and does not fit the "
        f"base model '{tmp_path / 'llama32'}' (model_type=llama, hidden_size=32): model_type bert != llama."
    )
    _assert_unchanged(llama, before)


def test_unnamed_bases_are_compared_by_saved_shapes(tmp_path) -> None:
    """From-config bases record no name: the saved tensor shapes still expose the mismatch."""
    torch.manual_seed(0)
    small = AutoModelForSequenceClassification.from_config(tiny_bert_config(32))
    adapter = _train_free_adapter(small, tmp_path / "adapter")
    torch.manual_seed(1)
    wider = AutoModelForSequenceClassification.from_config(tiny_bert_config(64))
    before = _snapshot(wider)
    with pytest.raises(AdapterMismatchError) as err:
        check_adapter_compatible(adapter, wider)
    assert str(err.value) == (
        f"Adapter {adapter} was trained on an unnamed model (model_type=unknown, hidden_size=unknown) and does not "
        "fit the base model an unnamed model (model_type=bert, hidden_size=64): 9 tensor shapes differ, e.g. "
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight saved [4, 32] vs expected [4, 64]. "
        "Load it onto the base model it was trained on (see base_model_name_or_path in adapter_config.json)."
    )
    _assert_unchanged(wider, before)
    # Without the check, peft mutates the base before failing: the reason the check runs first.
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(wider, str(adapter))


def test_matching_base_loads_with_identical_logits(tmp_path) -> None:
    base32 = _saved_base(tmp_path, "bert32", 32)
    trained_on = _load(base32)
    peft_model = get_peft_model(trained_on, LoraConfig(**LORA))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.eval()
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    expected = peft_model(**inputs).logits
    base = _load(base32)
    check_adapter_compatible(tmp_path / "adapter", base)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    assert torch.equal(reloaded(**inputs).logits, expected)


def test_missing_adapter_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"adapter_config.json: missing; an adapter folder needs"):
        check_adapter_compatible(tmp_path, torch.nn.Linear(2, 2))


def test_moc_adapter_on_deeper_base(tmp_path) -> None:
    """MoC keeps per-layer controls in tuner-level tensors: a 3-layer base does not fit a 2-layer adapter."""
    import moc_cli  # noqa: F401  (registers MoC)
    from moc_cli import MocConfig

    torch.manual_seed(0)
    two = AutoModelForSequenceClassification.from_config(tiny_bert_config(32, num_layers=2))
    get_peft_model(two, MocConfig(task_type="SEQ_CLS", r=4)).save_pretrained(tmp_path / "moc")
    torch.manual_seed(0)
    three = AutoModelForSequenceClassification.from_config(tiny_bert_config(32, num_layers=3))
    before = _snapshot(three)
    with pytest.raises(
        AdapterMismatchError, match=r"tensor shapes differ, e\.g\. base_model\.moc_state\.\S+ saved \[2, "
    ):
        check_adapter_compatible(tmp_path / "moc", three)
    _assert_unchanged(three, before)
    torch.manual_seed(0)
    check_adapter_compatible(
        tmp_path / "moc", AutoModelForSequenceClassification.from_config(tiny_bert_config(32))
    )
