"""MoC on a 4-bit quantized base (bitsandbytes NF4, QLoRA-style): the controls read the sub-blocks'
activations and never touch the quantized weights, so a 4-bit base trains, saves and reloads like
any other. bitsandbytes runs 4-bit layers on the CPU too, so this runs here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes)")

from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM  # noqa: E402

import moc_cli  # noqa: E402,F401  (registers MoC)
from moc_cli import MocConfig  # noqa: E402
from moc_cli.testing import tiny_llama_config  # noqa: E402


def load_4bit(path: Path) -> torch.nn.Module:
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-4bit")
    torch.manual_seed(0)
    LlamaForCausalLM(
        tiny_llama_config(hidden_size=64, intermediate_size=128, num_hidden_layers=3)
    ).save_pretrained(path)
    return path


def test_moc_trains_saves_and_reloads_on_a_4bit_base(base_dir: Path, tmp_path: Path) -> None:
    base = prepare_model_for_kbit_training(load_4bit(base_dir), use_gradient_checkpointing=False)
    assert isinstance(base.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    model = get_peft_model(base, MocConfig(r=8, task_type="CAUSAL_LM"))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".moc_state." in n for n in trainable)  # the 4-bit weights stay frozen
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 256, (4, 16), generator=gen)
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05  # five steps on one batch fit it

    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_4bit(base_dir), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, want)


def test_merging_into_a_4bit_base_is_refused_and_unload_gives_the_base_back(base_dir: Path) -> None:
    from moc_cli.tuner.layer import MERGE_ERROR

    base = load_4bit(base_dir)
    ids = torch.arange(3, 19).view(2, 8)
    with torch.no_grad():
        want = base(input_ids=ids).logits
    model = get_peft_model(base, MocConfig(r=8, task_type="CAUSAL_LM"))
    with pytest.raises(NotImplementedError) as info:
        model.merge_and_unload()
    assert str(info.value) == MERGE_ERROR
    unloaded = model.unload()
    assert isinstance(unloaded.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    with torch.no_grad():
        assert torch.equal(unloaded(input_ids=ids).logits, want)
