"""apply_method: each method.name becomes the right peft config; only adapter + head train."""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel
from transformers import BertConfig, BertForMultipleChoice, BertForSequenceClassification

import moc_cli  # noqa: F401  (registers MoC and MoLEx with peft)
from moc_cli import MocConfig
from moc_cli.training.errors import RunSetupError
from moc_cli.training.methods import apply_method, build_peft_config, count_parameters


def tiny_config(**kw) -> BertConfig:
    return BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **kw,
    )


def seq_cls() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config(num_labels=2))


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize(
    ("method", "config_cls", "marker"),
    [
        (
            {"name": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
            LoraConfig,
            "lora_",
        ),
        ({"name": "dora", "r": 4, "target_modules": ["query", "value"]}, LoraConfig, "lora_magnitude_vector"),
        ({"name": "ia3"}, IA3Config, "ia3_"),
        ({"name": "moc", "r": 4, "expert_compute": "dense"}, MocConfig, "moc_"),
        ({"name": "control", "r": 4, "expert_compute": "dense"}, MocConfig, "moc_"),
    ],
)
def test_peft_methods_train_only_adapter_and_head(method: dict, config_cls: type, marker: str) -> None:
    model = apply_method(seq_cls(), method, "seq_cls")
    assert isinstance(model, PeftModel)
    config = model.peft_config["default"]
    assert type(config) is config_cls
    assert str(config.task_type) == "SEQ_CLS"
    names = trainable_names(model)
    assert any(marker in name for name in names)
    adapter_markers = ("lora_", "ia3_", "moc_", "classifier.modules_to_save")
    assert all(any(m in name for m in adapter_markers) for name in names), names
    # The head trains (peft's modules_to_save copy), the frozen base does not.
    assert any("classifier.modules_to_save" in name for name in names)
    assert not any("word_embeddings" in name for name in names)


def test_dora_sets_use_dora_and_control_disables_routing() -> None:
    dora = build_peft_config(seq_cls(), {"name": "dora", "r": 4}, "seq_cls")
    assert dora.use_dora is True and dora.r == 4
    control = build_peft_config(seq_cls(), {"name": "control", "r": 4}, "seq_cls")
    assert control.global_control is False
    moc = build_peft_config(seq_cls(), {"name": "moc", "r": 4}, "seq_cls")
    assert moc.global_control is True


def test_molex_goes_through_its_peft_config() -> None:
    from moc_cli.baselines.molex import MolexConfig

    config = build_peft_config(seq_cls(), {"name": "molex", "alpha": 0.9, "top_k": 1}, "seq_cls")
    assert type(config) is MolexConfig
    assert config.alpha == 0.9 and str(config.task_type) == "SEQ_CLS"


def test_full_fine_tuning_trains_everything() -> None:
    model = seq_cls()
    for p in model.parameters():
        p.requires_grad_(False)
    out = apply_method(model, {"name": "full"}, "seq_cls")
    assert out is model
    trainable, total = count_parameters(out)
    assert trainable == total == sum(p.numel() for p in model.parameters())


def test_multiple_choice_head_is_saved_without_task_type() -> None:
    torch.manual_seed(0)
    model = BertForMultipleChoice(tiny_config())
    config = build_peft_config(
        model, {"name": "lora", "r": 4, "target_modules": ["query"]}, "multiple_choice"
    )
    assert config.task_type is None
    assert config.modules_to_save == ["classifier"]
    wrapped = apply_method(model, {"name": "lora", "r": 4, "target_modules": ["query"]}, "multiple_choice")
    assert any("classifier.modules_to_save" in n for n in trainable_names(wrapped))


def test_causal_lm_task_type() -> None:
    config = build_peft_config(seq_cls(), {"name": "lora", "r": 4}, "causal_lm")
    assert str(config.task_type) == "CAUSAL_LM"


class MysteryConfig(BertConfig):
    model_type = "mystery"


def test_unknown_default_targets_name_the_key() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())
    model.config = MysteryConfig(**model.config.to_dict())
    with pytest.raises(RunSetupError) as info:
        apply_method(model, {"name": "lora", "r": 4}, "seq_cls")
    message = str(info.value)
    assert "no default target modules for model_type='mystery'" in message
    assert "set method.target_modules" in message


def test_unknown_option_and_method_are_reported() -> None:
    with pytest.raises(RunSetupError, match=r"method\.lora_alpha is not an option of method\.name=ia3"):
        build_peft_config(seq_cls(), {"name": "ia3", "lora_alpha": 8}, "seq_cls")
    with pytest.raises(
        RunSetupError, match=r"method\.name='vera' is not a method; choose one of moc, control"
    ):
        build_peft_config(seq_cls(), {"name": "vera"}, "seq_cls")
    with pytest.raises(RunSetupError, match=r"method\.r is not an option of method\.name=full$"):
        build_peft_config(seq_cls(), {"name": "full", "r": 8}, "seq_cls")


def test_accepts_the_validated_config_sections() -> None:
    from moc_cli.config import METHOD_MODELS

    section = METHOD_MODELS["lora"](name="lora", r=2, target_modules=["query"])
    config = build_peft_config(seq_cls(), section, "seq_cls")
    assert config.r == 2 and config.target_modules == {"query"}
