"""MoC under TRL's SFTTrainer: `SFTTrainer(model, train_dataset, peft_config=MocConfig(...))` end to end.

TRL builds the SFT loss from the per-token log-probabilities of its fused LM head, not from
`outputs.loss`; these tests pin that MoC's balance loss still reaches that loss, with the weight
Trainer gives it (its share of the step's tokens), so gradient accumulation does not change it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from peft import PeftModel
from trl_helpers import WORDS, tiny_llama

import moc_cli  # noqa: F401  (registers MoC with peft)
from moc_cli import MocConfig
from moc_cli.tuner import routing_stats

trl = pytest.importorskip("trl")

CONVERSATIONS = [
    [{"role": "user", "content": "hello how are you"}, {"role": "assistant", "content": "fine thanks"}],
    [{"role": "user", "content": "what colour is the sky"}, {"role": "assistant", "content": "blue"}],
    [
        {"role": "system", "content": "yes"},
        {"role": "user", "content": "is the sky green"},
        {"role": "assistant", "content": "no the sky is blue"},
    ],
    [{"role": "user", "content": "good"}, {"role": "assistant", "content": "great thanks"}],
]


def sft_args(tmp_path: Path, **overrides) -> trl.SFTConfig:
    fields = {
        "output_dir": str(tmp_path / "sft"),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "learning_rate": 5e-2,  # tiny model, few steps: large enough to move the controls visibly
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,  # TRL turns bf16 on by default; these tests compare float32 numbers
        "disable_tqdm": True,
        "seed": 0,
    }
    return trl.SFTConfig(**{**fields, **overrides})


def moc_config(**overrides) -> MocConfig:
    return MocConfig(**{"r": 4, "task_type": "CAUSAL_LM", **overrides})


def test_sft_trains_saves_and_reloads_a_moc_adapter(tmp_path: Path, tokenizer) -> None:
    dataset = datasets.Dataset.from_dict({"messages": CONVERSATIONS})
    trainer = trl.SFTTrainer(
        model=tiny_llama(len(tokenizer)),
        args=sft_args(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=moc_config(),
    )
    assert isinstance(trainer.model, PeftModel)
    state = trainer.model.base_model.moc_state["default"]
    assert all(
        float(p.detach().abs().sum()) == 0.0 for p in state.Bt.values()
    )  # B starts at zero: MoC starts as the base
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert all(float(p.detach().abs().sum()) > 0.0 for p in state.Bt.values())  # the controls trained

    trainer.save_model(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["r"], saved["task_type"]) == ("MOC", 4, "CAUSAL_LM")

    # a fresh base with the same weights (get_peft_model modified the first one in place)
    reloaded = PeftModel.from_pretrained(tiny_llama(len(tokenizer)), str(tmp_path / "adapter")).eval()
    trained = trainer.model.eval()
    ids = torch.tensor([tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=True)["input_ids"]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        base = tiny_llama(len(tokenizer)).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, base)  # the reloaded adapter changes the base's output


def one_step_loss(tmp_path: Path, tokenizer, coef: float, **args) -> tuple[float, trl.SFTTrainer]:
    """Loss Trainer logs for the first optimizer step (before any update) and the trainer."""
    dataset = datasets.Dataset.from_dict({"messages": [CONVERSATIONS[0]] * 4})
    trainer = trl.SFTTrainer(
        model=tiny_llama(len(tokenizer)),
        args=sft_args(tmp_path, max_steps=1, **args),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=moc_config(aux_loss_coef=coef),
    )
    trainer.train()
    return trainer.state.log_history[0]["loss"], trainer


def test_balance_loss_reaches_the_sft_loss(tmp_path: Path, tokenizer) -> None:
    with_balance, trainer = one_step_loss(tmp_path, tokenizer, coef=0.5)
    without, _ = one_step_loss(tmp_path, tokenizer, coef=0.0)
    balance = routing_stats(trainer.model)["balance_loss"]
    assert balance is not None and balance > 0.9  # Switch balance loss: 1 when perfectly balanced
    # one forward of 4 identical rows: every scored token carries the balance loss once
    assert with_balance - without == pytest.approx(0.5 * balance, abs=1e-5)


def test_gradient_accumulation_keeps_the_balance_weight(tmp_path: Path, tokenizer) -> None:
    """4 identical rows as 1 x 4 or 2 x 2: same logged loss and same trained controls and routers.

    Weighted once per micro-batch instead, the balance loss would count twice with accumulation.
    """
    one, single = one_step_loss(tmp_path / "ga1", tokenizer, coef=0.5, per_device_train_batch_size=4)
    two, accumulated = one_step_loss(
        tmp_path / "ga2",
        tokenizer,
        coef=0.5,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    assert one == pytest.approx(two, abs=1e-6)
    a = single.model.base_model.moc_state["default"].state_dict()
    b = accumulated.model.base_model.moc_state["default"].state_dict()
    assert any("router" in key for key in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7, msg=key)


def test_chat_template_path_trains_the_added_tokens(tmp_path: Path, tokenizer) -> None:
    """SFTConfig(chat_template_path=...) copies a chat template and its special tokens onto a tokenizer
    without one, and asks the peft config to train those tokens' embeddings (trainable_token_indices)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer.save_pretrained(tmp_path / "chat-tokenizer")
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    vocab_size = len(plain)  # before TRL adds the template's tokens to it in place
    trainer = trl.SFTTrainer(
        model=tiny_llama(vocab_size),
        args=sft_args(tmp_path, max_steps=2, chat_template_path=str(tmp_path / "chat-tokenizer")),
        train_dataset=datasets.Dataset.from_dict({"messages": CONVERSATIONS}),
        processing_class=plain,
        peft_config=moc_config(),
    )
    added = trainer.model.peft_config["default"].trainable_token_indices["embed_tokens"]
    assert plain.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == added[:2]
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    delta = saved["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert delta.shape[0] == len(added) and float(delta.abs().sum()) > 0  # the added rows trained

    base = tiny_llama(vocab_size)
    base.resize_token_embeddings(trainer.model.get_input_embeddings().weight.shape[0])
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids = torch.tensor([plain.apply_chat_template(CONVERSATIONS[0], tokenize=True)["input_ids"]])
    assert set(added[:2]) <= set(ids[0].tolist())  # the rendered chat uses the added markers
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits)
