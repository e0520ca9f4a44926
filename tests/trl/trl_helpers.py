"""Builders for the TRL tests: a word-level ChatML tokenizer and a tiny Llama, offline (a module with a
unique name so tests can import it)."""

from __future__ import annotations

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = [
    "user",
    "assistant",
    "system",
    "hello",
    "hi",
    "how",
    "are",
    "you",
    "fine",
    "thanks",
    "what",
    "colour",
    "is",
    "the",
    "sky",
    "blue",
    "red",
    "green",
    "yes",
    "no",
    "good",
    "bad",
    "great",
    "sure",
    "maybe",
]
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


def chat_tokenizer():
    """A whitespace word-level tokenizer over WORDS with ChatML markers and template (no Hub, no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def tiny_llama(vocab_size: int, seed: int = 0):
    """A randomly initialised 2-layer Llama; the same seed gives the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    from moc_cli.testing import tiny_llama_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=vocab_size, max_position_embeddings=128))
