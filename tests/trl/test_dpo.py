"""MoC under TRL's DPOTrainer: the reference model is the base, i.e. the MoC adapter disabled."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import pytest
import torch
from trl_helpers import tiny_llama

import moc_cli  # noqa: F401  (registers MoC with peft)
from moc_cli import MocConfig
from moc_cli.tuner.model import PREFERENCE_ERROR

trl = pytest.importorskip("trl")


def preferences() -> datasets.Dataset:
    user = [{"role": "user", "content": "what colour is the sky"}]
    rows = [
        {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": "blue"}],
            "rejected": [{"role": "assistant", "content": "green maybe"}],
        },
        {
            "prompt": [{"role": "user", "content": "hello how are you"}],
            "chosen": [{"role": "assistant", "content": "fine thanks"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        },
    ]
    return datasets.Dataset.from_list(rows * 2)


def dpo_trainer(tmp_path: Path, tokenizer, coef: float, max_steps: int = 3) -> trl.DPOTrainer:
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=5e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    return trl.DPOTrainer(
        model=tiny_llama(len(tokenizer)),
        args=args,
        train_dataset=preferences(),
        processing_class=tokenizer,
        peft_config=MocConfig(r=4, task_type="CAUSAL_LM", aux_loss_coef=coef),
    )


def test_dpo_uses_the_disabled_adapter_as_reference(tmp_path: Path, tokenizer) -> None:
    trainer = dpo_trainer(tmp_path, tokenizer, coef=0.0)
    assert trainer.ref_model is None  # no second model: the reference is the adapter switched off
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    # MoC starts as the base (B = 0), so the policy equals the reference at the first step:
    # log-ratios 0, loss -log(sigmoid(0)) = log 2 exactly
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert logs[-1]["rewards/margins"] > 0  # the adapter learned to prefer the chosen answers

    model = trainer.model.eval()
    ids = torch.tensor(
        [tokenizer.apply_chat_template(preferences()[0]["prompt"], tokenize=True)["input_ids"]]
    )
    with torch.no_grad():
        policy = model(input_ids=ids).logits
        with model.disable_adapter():
            reference = model(input_ids=ids).logits
        base = tiny_llama(len(tokenizer)).eval()(input_ids=ids).logits
    torch.testing.assert_close(reference, base, rtol=0, atol=0)  # disabled adapter == untouched base
    assert not torch.allclose(policy, base)


def test_dpo_with_a_balance_loss_is_refused_with_the_fix(tmp_path: Path, tokenizer) -> None:
    """The balance loss rides on the per-token log-probabilities (that is how SFT's loss gets it); in
    DPO it would bias the reward by completion length, so the reference pass stops the run."""
    trainer = dpo_trainer(tmp_path, tokenizer, coef=0.01, max_steps=1)
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value) == PREFERENCE_ERROR
    assert "MocConfig(aux_loss_coef=0.0)" in PREFERENCE_ERROR
