"""moc_cli.models: head per task kind, labels, dtype, pad token, safetensors only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    BertForMultipleChoice,
    BertForSequenceClassification,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from moc_cli.models import (
    AUTO_CLASS_BY_KIND,
    ModelSetupError,
    auto_class_name,
    build_model,
    build_model_and_tokenizer,
    build_tokenizer,
    resolve_dtype,
)
from moc_cli.tasks.registry import get_task
from tests.training import conftest as training_fixtures

# The tiny models of the training tests (a BERT with a real WordPiece tokenizer; a Llama without pad token).
tiny_bert = training_fixtures.tiny_bert
tiny_llama = training_fixtures.tiny_llama


def test_sequence_classification_with_label_names(tiny_bert: Path) -> None:
    task = get_task("glue/sst2")
    model, tokenizer, source = build_model_and_tokenizer({"name_or_path": str(tiny_bert)}, task)
    assert source == str(tiny_bert)
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.num_labels == 2
    assert model.config.problem_type == "single_label_classification"
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert model.dtype == torch.float32
    # The real WordPiece vocabulary, not a 5-token fallback.
    assert tokenizer("a great movie")["input_ids"] == [101, 1037, 2307, 3185, 102]


def test_regression_and_multiple_choice_heads(tiny_bert: Path) -> None:
    tokenizer = build_tokenizer(str(tiny_bert), {})
    stsb = build_model(str(tiny_bert), get_task("glue/stsb"), {}, tokenizer)
    assert stsb.config.num_labels == 1 and stsb.config.problem_type == "regression"
    copa = build_model(str(tiny_bert), get_task("superglue/copa"), {}, tokenizer)
    assert isinstance(copa, BertForMultipleChoice)


def test_dtype_is_applied_and_validated(tiny_bert: Path) -> None:
    tokenizer = build_tokenizer(str(tiny_bert), {})
    model = build_model(str(tiny_bert), get_task("glue/sst2"), {"dtype": "bfloat16"}, tokenizer)
    assert model.dtype == torch.bfloat16
    assert resolve_dtype("auto") == "auto" and resolve_dtype(None) is None
    with pytest.raises(ModelSetupError, match="model.dtype='float8' is not a known dtype"):
        resolve_dtype("float8")


def test_decoder_classifier_gets_a_pad_token(tiny_llama: Path) -> None:
    model, tokenizer, _ = build_model_and_tokenizer({"name_or_path": str(tiny_llama)}, get_task("glue/sst2"))
    assert isinstance(model, LlamaForSequenceClassification)
    assert tokenizer.pad_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == 1
    batch = tokenizer(["good movie", "a bad bad movie"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)  # batches > 1 need pad_token_id


def test_causal_lm_head(tiny_llama: Path) -> None:
    model, _, _ = build_model_and_tokenizer({"name_or_path": str(tiny_llama)}, get_task("demo/instruct"))
    assert isinstance(model, LlamaForCausalLM)


def test_pickled_weights_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    pickled = tmp_path / "pickled"
    model = AutoModel.from_pretrained(tiny_bert)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    tokenizer = build_tokenizer(str(tiny_bert), {})
    with pytest.raises(ModelSetupError) as caught:
        build_model(str(pickled), get_task("glue/sst2"), {}, tokenizer)
    assert str(caught.value.issues[0]) == (
        f"model.allow_pickle: {pickled} has no safetensors weights, only pickle files (pytorch_model.bin), "
        "which can run arbitrary code when loaded; convert them (model.save_pretrained(dir) writes "
        "model.safetensors), or set model.allow_pickle=true if you trust them"
    )


def test_missing_model_name_is_reported() -> None:
    with pytest.raises(ModelSetupError, match="model.name_or_path is not set"):
        build_model_and_tokenizer({}, get_task("glue/sst2"))


def test_the_typed_model_section_is_read_like_a_mapping(tiny_bert: Path) -> None:
    from moc_cli.config import ModelSection

    section = ModelSection(name_or_path=str(tiny_bert), dtype="bfloat16")
    model, _, source = build_model_and_tokenizer(section, get_task("glue/sst2"))
    assert source == str(tiny_bert)
    assert model.dtype == torch.bfloat16


def test_one_auto_class_per_task_kind() -> None:
    assert dict(AUTO_CLASS_BY_KIND) == {
        "seq_cls": "AutoModelForSequenceClassification",
        "regression": "AutoModelForSequenceClassification",
        "multiple_choice": "AutoModelForMultipleChoice",
        "causal_lm": "AutoModelForCausalLM",
    }
    assert auto_class_name("causal_lm") == "AutoModelForCausalLM"
    with pytest.raises(ModelSetupError) as caught:
        auto_class_name("token_cls")
    assert caught.value.message == (
        "task kind 'token_cls' has no model head; known kinds: seq_cls, regression, multiple_choice, causal_lm"
    )
