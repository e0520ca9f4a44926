"""MoC on a GPU: the kernels against a float64 reference, bf16 autocast training, torch.compile,
KV-cache generation, and save/reload, on tiny random models.

Run by `bash scripts/device_check.sh` (see tests/cuda/conftest.py). Tolerances are relative
errors ||x - ref|| / ||ref|| against float64 on the CPU: float32 arithmetic lands far below 1e-4,
bfloat16 operands near 1e-2.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaForCausalLM

import moc_cli  # noqa: F401  (registers MoC with peft)
from moc_cli import MocConfig
from moc_cli.testing import tiny_llama_config
from moc_cli.tuner import functional
from moc_cli.tuner.functional import dense_mixture, sparse_mixture

# Relative-error bounds against float64, by compute dtype.
REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}

# kernel policies forcing each way the sparse kernel computes routed columns
STRATEGIES = {
    "per-expert": functional.KernelPolicy(grouped_min_width=0, per_expert_device_types=("cpu", "cuda")),
    "all-rows": functional.KernelPolicy(grouped_min_width=math.inf),
}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x64, ref64 = x.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(x64).all(), "non-finite values"
    return float((x64 - ref64).norm() / ref64.norm())


def mixture_inputs(seed: int, n: int = 512, e: int = 30, r: int = 16, d: int = 64) -> list[torch.Tensor]:
    """A SmolLM2-like pool (E*r = 480: routed columns per expert), the local column plus a top-1
    pick per token, one expert left empty."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=gen, dtype=torch.float64)
    a = torch.randn(e, r, d, generator=gen, dtype=torch.float64) * d**-0.5
    bt = torch.randn(e, r, d, generator=gen, dtype=torch.float64) * r**-0.5
    picks = torch.randint(0, e, (n,), generator=gen)
    picks[picks == 5] = 6  # an expert no token picks: an empty segment
    idx = torch.stack([torch.full((n,), e // 2), picks], dim=1)
    coef = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    return [u, a, bt, idx, coef]


def run_mixture(fn, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Output and the gradients of u, A, Bt and coef for a fixed output weighting."""
    u, a, bt, idx, coef = inputs
    leaves = [t.detach().requires_grad_() for t in (u, a, bt, coef)]
    out = fn(leaves[0], leaves[1], leaves[2], idx, leaves[3], 1.5)
    weight = torch.linspace(-1, 1, out.shape[1], device=out.device, dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).float().sum(), leaves)
    return [out, *grads]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fn_name", ["sparse", "dense"])
def test_mixture_matches_the_float64_reference(
    device: torch.device, fn_name: str, dtype: torch.dtype, strategy: str
) -> None:
    fn = partial(sparse_mixture, policy=STRATEGIES[strategy]) if fn_name == "sparse" else dense_mixture
    for seed in range(3):  # fresh inputs each time: the same function on any valid input
        inputs = mixture_inputs(seed)
        want = run_mixture(dense_mixture, inputs)  # float64 on the CPU
        on_device = [t.to(device) if not t.is_floating_point() else t.to(device, dtype) for t in inputs]
        got = run_mixture(fn, on_device)
        assert got[0].device.type == device.type and got[0].dtype == dtype
        for name, g, w in zip(("out", "u", "A", "Bt", "coef"), got, want, strict=True):
            assert rel_err(g, w) < REL_TOL[dtype], f"{name}: relative error {rel_err(g, w):.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grouped_products_give_the_per_expert_loop_results(
    device: torch.device, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not functional.grouped_mm_runs(device, dtype):
        pytest.skip(f"torch._grouped_mm does not run for {dtype} on {device}: the loop is the only path")
    per_expert = partial(sparse_mixture, policy=STRATEGIES["per-expert"])
    inputs = [t.to(device) if not t.is_floating_point() else t.to(device, dtype) for t in mixture_inputs(0)]
    calls: list[int] = []
    grouped_mm = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **kw: calls.append(1) or grouped_mm(*a, **kw))
    grouped = run_mixture(per_expert, inputs)
    assert len(calls) == 6  # forward: A and B products; backward: two weight gradients, two products
    monkeypatch.setattr(functional, "_fits_grouped_mm", lambda mat: False)
    looped = run_mixture(per_expert, inputs)
    assert len(calls) == 6
    for g, ref in zip(grouped, looped, strict=True):
        assert rel_err(g, ref) < REL_TOL[dtype] / 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sparse_no_grad_forward_matches_dense(device: torch.device, dtype: torch.dtype) -> None:
    u, a, bt, idx, coef = mixture_inputs(1)
    want = dense_mixture(u, a, bt, idx, coef, 1.5)
    with torch.no_grad():
        got = sparse_mixture(
            u.to(device, dtype),
            a.to(device, dtype),
            bt.to(device, dtype),
            idx.to(device),
            coef.to(device, dtype),
            1.5,
        )
    assert rel_err(got, want) < REL_TOL[dtype]


# ------------------------------------------------------------------------------- whole models


def tiny_llama(device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def moc_llama(device: torch.device, dtype: torch.dtype = torch.float32, **config: object) -> torch.nn.Module:
    model = get_peft_model(tiny_llama(device, dtype=dtype), MocConfig(r=8, task_type="CAUSAL_LM", **config))
    with torch.no_grad():  # B starts at zero: make the controls (and so routing) matter
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(device: torch.device, n: int = 4, length: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (n, length), generator=gen).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def train_losses(
    model: torch.nn.Module, data: dict[str, torch.Tensor], steps: int, autocast: bool
) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(data["input_ids"].device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**data).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_bf16_autocast_training_follows_float32_and_learns(device: torch.device) -> None:
    data = batch(device)
    fp32 = moc_llama(device)
    bf16 = copy.deepcopy(fp32)
    ref = train_losses(fp32, data, 6, autocast=False)
    got = train_losses(bf16, data, 6, autocast=True)
    assert all(torch.isfinite(torch.tensor(got)))
    assert abs(got[0] - ref[0]) / ref[0] < 2e-2  # same model, same batch: bf16 rounding only
    assert got[-1] < got[0] - 0.05  # six steps on one batch at lr 1e-2 fit it
    assert ref[-1] < ref[0] - 0.05


def test_bf16_base_model_trains_float32_controls(device: torch.device) -> None:
    model = moc_llama(device, dtype=torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}  # peft's autocast_adapter_dtype
    before = [p.detach().clone() for p in trainable]
    losses = train_losses(model, batch(device), 3, autocast=True)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(b, p) for b, p in zip(before, trainable, strict=True))


def test_torch_compile_gives_the_eager_loss_and_gradients(device: torch.device) -> None:
    if device.type == "cpu":
        pytest.skip("inductor on a 2-core CPU takes minutes; this check runs on the GPU")
    data = batch(device)
    eager = moc_llama(device)
    compiled_model = copy.deepcopy(eager)
    eager.train()
    compiled_model.train()
    want = eager(**data).loss
    want.backward()
    compiled = torch.compile(compiled_model)
    got = compiled(**data).loss
    got.backward()
    assert rel_err(got, want) < 1e-4
    grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
    assert grads
    for name, p in compiled_model.named_parameters():
        if name in grads:
            assert rel_err(p.grad, grads[name]) < 1e-3, name


@pytest.mark.parametrize("top_k", [1, 2])
def test_kv_cache_generation_equals_no_cache_generation(device: torch.device, top_k: int) -> None:
    model = moc_llama(device, top_k=top_k)
    model.eval()
    prompt = batch(device, n=3, length=10, seed=1)
    kwargs = {
        "input_ids": prompt["input_ids"],
        "attention_mask": prompt["attention_mask"],
        "max_new_tokens": 12,
        "do_sample": False,
        "pad_token_id": 0,
    }
    with torch.no_grad():
        cached = model.generate(**kwargs, use_cache=True)
        uncached = model.generate(**kwargs, use_cache=False)
    assert cached.shape == (3, 22)
    assert torch.equal(cached, uncached)


def test_save_and_reload_give_identical_logits(device: torch.device, tmp_path: Path) -> None:
    model = moc_llama(device, top_k=2)
    model.eval()
    data = batch(device)
    with torch.no_grad():
        want = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_llama(device), tmp_path / "adapter").to(device)
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    assert got.device.type == device.type
    assert torch.equal(got, want)
