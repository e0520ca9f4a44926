"""Greedy generation shared by the instruction tasks' sample replies, commonsense scoring and
`moc predict`: prompts left-padded in batches (a decoder continues the last position), new tokens
only, cut at the end-of-sequence token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's padding id, else its end-of-sequence or unknown id (small LMs often have no pad)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Greedy decoding of pre-tokenised prompts, left-padded in batches; returns new tokens only.

    `repetition_penalty` > 1 divides the positive (multiplies the negative) logits of tokens already
    in the prompt or reply, which keeps small models out of loops."""
    import torch

    pad = pad_token_id(tokenizer)
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, p in enumerate(chunk):
                ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                attn[row, width - len(p) :] = 1
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=attn.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    repetition_penalty=repetition_penalty,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            for row in gen[:, width:].tolist():
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                out.append(row)
    finally:
        model.train(was_training)
    return out
