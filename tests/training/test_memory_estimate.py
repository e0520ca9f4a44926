"""`moc validate --estimate-memory`: a meta-device forward counts what a real training step saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from moc_cli.config import RunConfig, load_run_config
from moc_cli.profiling import saved_tensor_bytes
from moc_cli.testing import save_tiny_model
from moc_cli.training.memory_estimate import estimate_memory, optimizer_state_bytes
from moc_cli.training.methods import apply_method

BATCH, LENGTH = 4, 16


def _config(model_dir: Path, task: str, method: list[str]) -> RunConfig:
    cfg, _ = load_run_config(
        None,
        None,
        [
            f"model.name_or_path={model_dir}",
            "model.dtype=float32",
            f"task.name={task}",
            f"task.max_length={LENGTH}",
            f"training.per_device_train_batch_size={BATCH}",
            *method,
        ],
    )
    return cfg


@pytest.mark.parametrize(
    ("kind", "task", "method"),
    [
        ("bert", "glue/sst2", ["method.name=moc", "method.variant=both-shared", "method.top_k=1"]),
        ("bert", "glue/sst2", ["method.name=lora", "method.target_modules=[query,value]"]),
        ("llama", "demo/instruct", ["method.name=moc", "method.variant=ffn", "method.top_k=2"]),
        ("llama", "demo/instruct", ["method.name=full"]),
    ],
)
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_estimate_counts_what_a_real_step_saves(
    tmp_path: Path, kind: str, task: str, method: list[str], attention: str
) -> None:
    model_dir = save_tiny_model(kind, tmp_path / kind, with_tokenizer=False)
    cfg = _config(model_dir, task, [*method, f"model.attn_implementation={attention}"])
    estimate = estimate_memory(cfg)

    if kind == "bert":
        real = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=2, attn_implementation=attention
        )
        batch = {"input_ids": torch.randint(1, 50, (BATCH, LENGTH)), "labels": torch.tensor([0, 1, 1, 0])}
    else:
        real = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention)
        ids = torch.randint(1, 50, (BATCH, LENGTH))
        batch = {"input_ids": ids, "labels": ids}
    real = apply_method(real, cfg.method, "seq_cls" if kind == "bert" else "causal_lm")
    real.train()
    params = list(real.parameters())
    measured = saved_tensor_bytes(lambda: real(**batch).loss, exclude=[*params, *real.buffers()]).total_bytes

    if kind == "llama" and attention == "sdpa":
        # The meta device takes SDPA's math path, the CPU kernel saves its own intermediates (a
        # log-sum-exp): a few hundred bytes apart per layer here. Everything else is identical.
        assert estimate.activation_bytes != measured
        assert abs(estimate.activation_bytes - measured) < 0.01 * measured
    else:
        assert estimate.activation_bytes == measured > 0
    assert estimate.trainable_params == sum(p.numel() for p in params if p.requires_grad)
    assert estimate.total_params == sum(p.numel() for p in params)
    assert estimate.gradient_bytes == 4 * estimate.trainable_params  # fp32 gradients
    assert estimate.optimizer_bytes == 8 * estimate.trainable_params  # AdamW: two fp32 states
    assert estimate.batch_shape == (BATCH, LENGTH)


def test_optimizer_state_follows_the_optimizer() -> None:
    params = [torch.nn.Parameter(torch.zeros(10, 10)), torch.nn.Parameter(torch.zeros(5))]
    assert optimizer_state_bytes("adamw_torch", params) == (
        840,
        "adamw_torch: 2 states per trainable parameter",
    )
    assert optimizer_state_bytes("adamw_torch_8bit", params) == (
        210,
        "adamw_torch_8bit: 2 states per trainable parameter at 1 byte",
    )
    assert optimizer_state_bytes("adafactor", params)[0] == 420
    assert optimizer_state_bytes("sgd", params)[0] == 0
