"""Training correctness of the MoC tuner: the balance loss under gradient accumulation and every
calling convention, a second `get_peft_model`, reentrant checkpointing, the `exclude_self`
normalisation and float64 models."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from balance_step_driver import one_step
from moc_tuner_testkit import HIDDEN, LAYERS, tiny
from peft import get_peft_model

from moc_cli import MocConfig
from moc_cli.tuner import routing_stats
from moc_cli.tuner.architectures import resolve_plan
from moc_cli.tuner.model import REENTRANT_ERROR, SECOND_WRAP_ERROR
from moc_cli.tuner.routing import ControlContext


def _randomize(model: torch.nn.Module, std: float = 0.3, seed: int = 5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".moc_state." in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)


def _no_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# ------------------------------------------------------------------ 1. gradient accumulation
def test_balance_loss_weight_does_not_depend_on_gradient_accumulation(tmp_path: Path) -> None:
    # Trainer passes num_items_in_batch to a causal LM and does not divide its loss by the
    # accumulation steps; each micro-batch's balance term must then weigh its share of the items.
    step = {(ga, coef): one_step(tmp_path, 4 // ga, ga, coef) for ga in (1, 2, 4) for coef in (0.0, 0.01)}
    balance = {ga: step[ga, 0.01][0] - step[ga, 0.0][0] for ga in (1, 2, 4)}
    assert balance[1] == pytest.approx(0.01 * step[1, 0.01][2], rel=1e-4)  # lambda * balance
    for ga in (2, 4):
        assert step[ga, 0.0][0] == pytest.approx(step[1, 0.0][0], rel=1e-6)  # task part
        assert balance[ga] == pytest.approx(balance[1], rel=1e-4)
        # and in the update: the router after one SGD step is the same
        torch.testing.assert_close(step[ga, 0.01][1], step[1, 0.01][1], rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # two torchrun processes importing transformers: about a minute on a loaded CPU
@pytest.mark.parametrize("average_tokens", [True, False])
def test_balance_loss_weight_does_not_depend_on_the_process_count(
    tmp_path: Path, average_tokens: bool
) -> None:
    # With average_tokens_across_devices Trainer counts the items of all processes and multiplies
    # each process's loss by the process count; DDP then averages the gradients.
    driver = Path(__file__).with_name("balance_step_driver.py")
    out = tmp_path / "router.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*cmd, str(driver), str(out), "2", "1", "0.01", str(int(average_tokens))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(out)
    assert saved["world_size"] == 2
    _, single, _ = one_step(tmp_path, 4, 1, 0.01, average_tokens)
    torch.testing.assert_close(saved["router"], single, rtol=1e-5, atol=1e-7)


def test_balance_share_follows_num_items_in_batch_of_all_processes() -> None:
    # Under DDP with average_tokens_across_devices, num_items_in_batch counts the items of every
    # process and Trainer multiplies each process's loss by the process count before DDP averages
    # the gradients: a process holding n of N items must add lambda * balance * n / N.
    t = tiny("llama")
    model = get_peft_model(t.build(), MocConfig(r=4, task_type="CAUSAL_LM", aux_loss_coef=0.2))
    _randomize(model)
    batch = t.batch()
    n = int((batch["labels"][:, 1:] != -100).sum())  # causal LM: the first position has no target
    total = torch.tensor(3 * n)
    model.train()
    loss = model(**batch, num_items_in_batch=total).loss
    balance = routing_stats(model)["balance_loss"]
    model.eval()
    with torch.no_grad():
        task = model(**batch, num_items_in_batch=total).loss
    torch.testing.assert_close(loss.detach(), task + 0.2 * balance / 3)
    # without num_items_in_batch (plain loops, Trainer for models without loss kwargs) the full term
    model.train()
    loss = model(**batch).loss
    model.eval()
    with torch.no_grad():
        task = model(**batch).loss
    torch.testing.assert_close(loss.detach(), task + 0.2 * balance)


# ------------------------------------------------------------------ 2. a second get_peft_model
@pytest.mark.parametrize("wrap", ["peft_model", "modified_base", "tuner"])
def test_second_get_peft_model_on_a_moc_model_is_refused(wrap: str) -> None:
    t = tiny("llama")
    first = get_peft_model(t.build(), MocConfig(r=4, task_type="CAUSAL_LM"))
    _randomize(first)
    first.eval()
    with torch.no_grad():
        before = first(**t.model_inputs).logits
    target = {"peft_model": first, "modified_base": first.get_base_model(), "tuner": first.base_model}[wrap]
    with pytest.raises(ValueError, match=f"^{re.escape(SECOND_WRAP_ERROR)}$"):
        get_peft_model(target, MocConfig(r=4, task_type="CAUSAL_LM"))
    assert SECOND_WRAP_ERROR == (
        "This model already carries a MoC adapter: a second get_peft_model would add an adapter that the "
        "existing MoC layers never run. Add it to the PeftModel that holds the first one with "
        "`peft_model.add_adapter(name, MocConfig(...))` (then `set_adapter`), or call `unload()` first to "
        "start again from the plain base model."
    )
    with torch.no_grad():  # the refused call left the first adapter as it was
        assert torch.equal(first(**t.model_inputs).logits, before)
    first.add_adapter("second", MocConfig(r=4, task_type="CAUSAL_LM"))  # the supported way still works
    assert set(first.base_model.moc_state) == {"default", "second"}


def test_get_peft_model_after_unload_is_allowed() -> None:
    t = tiny("llama")
    base = get_peft_model(t.build(), MocConfig(r=4, task_type="CAUSAL_LM")).unload()
    again = get_peft_model(base, MocConfig(r=4, task_type="CAUSAL_LM"))
    assert list(again.base_model.moc_state) == ["default"]


# ------------------------------------------------------------------ 3. reentrant checkpointing
def test_reentrant_checkpointing_with_balance_loss_is_refused_with_the_fix() -> None:
    t = tiny("llama")
    model = get_peft_model(t.build(), MocConfig(r=4, task_type="CAUSAL_LM"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model.train()
    with pytest.raises(
        RuntimeError, match=f"^{re.escape(REENTRANT_ERROR.format(lost=LAYERS, total=LAYERS))}$"
    ):
        model(**t.batch())
    assert REENTRANT_ERROR.format(lost=3, total=3) == (
        "MoC's load-balancing loss would reach the routers without gradient: 3 of 3 routing decisions of this "
        "forward were computed without autograd, as reentrant activation checkpointing (use_reentrant=True) "
        "does in its first forward. Enable checkpointing with gradient_checkpointing_kwargs={'use_reentrant': "
        "False} (TrainingArguments: activation_checkpointing_kwargs={'use_reentrant': False}), or set "
        "MocConfig.aux_loss_coef=0 to train without the balance loss."
    )
    # evaluation (no grad) and non-reentrant checkpointing are unaffected
    with torch.no_grad():
        model(**t.batch())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(**t.batch()).loss.backward()
    assert model.base_model.moc_state["default"].router["block"].grad is not None


# ------------------------------------------------------------------ 4. calling conventions
def _positional(forward: Any, values: dict[str, Any]) -> list[Any]:
    """`values` as positional arguments of `forward`, up to the last one given (None between)."""
    names = [n for n in inspect.signature(forward).parameters if n not in ("self", "args", "kwargs")]
    last = max(names.index(k) for k in values)
    return [values.get(n) for n in names[: last + 1]]


@pytest.mark.parametrize("arch", ["llama", "bert", "vit"])
def test_balance_loss_in_every_calling_convention(arch: str) -> None:
    t = tiny(arch)
    model = get_peft_model(t.build(), MocConfig(r=4, task_type=t.task_type, aux_loss_coef=0.5))
    _randomize(model)
    _no_dropout(model)
    batch = t.batch()
    base = model.get_base_model()
    model.eval()
    with torch.no_grad():
        task = model(**batch).loss
    model.train()
    with torch.no_grad():
        want = model(**batch).loss
        balance = routing_stats(model)["balance_loss"]
        assert balance is not None and balance > 0
        torch.testing.assert_close(want, task + 0.5 * balance)
        if t.task_type is not None:  # PeftModelFor*: input_ids, attention_mask, inputs_embeds, labels
            peft_args = _positional(type(model).forward, batch)
        else:  # PeftModel hands its arguments to the base model as they are
            peft_args = _positional(base.forward, batch)
        calls = {
            "peft, tuple": model(**batch, return_dict=False)[0],
            "peft, positional labels, tuple": model(*peft_args, return_dict=False)[0],
            "peft, positional labels": model(*peft_args).loss,
            "base, positional labels, tuple": base(*_positional(base.forward, batch), return_dict=False)[0],
            "base, keywords, tuple": base(**batch, return_dict=False)[0],
            "tuner, positional labels, tuple": model.base_model(
                *_positional(base.forward, batch), return_dict=False
            )[0],
        }
    for name, loss in calls.items():
        assert torch.equal(loss, want), name


# ------------------------------------------------------------------ 6. exclude_self
@pytest.mark.parametrize("variant", ["both-shared", "both-separate", "ffn"])
def test_exclude_self_balance_loss_is_one_at_uniform_routing(variant: str) -> None:
    t = tiny("bert")
    model = get_peft_model(t.build(), MocConfig(r=4, task_type="SEQ_CLS", variant=variant, exclude_self=True))
    _randomize(model)
    state = model.base_model.moc_state["default"]
    with torch.no_grad():
        for weight in state.router.values():
            weight.zero_()  # uniform over the E - 1 = 2 experts a layer may use
    model.eval()
    with torch.no_grad():
        model(**t.model_inputs)
    assert routing_stats(model)["balance_loss"] == 1.0  # exact: (E - 1) * sum_i f_i * 1/(E - 1)


def test_exclude_self_balance_loss_counts_the_allowed_experts() -> None:
    t = tiny("llama")
    cfg = MocConfig(r=4, task_type="CAUSAL_LM", variant="ffn", exclude_self=True)
    model = get_peft_model(t.build(), cfg)
    _randomize(model, std=1.0)
    base = model.get_base_model()
    us: dict[int, torch.Tensor] = {}
    hooks = [
        base.get_submodule(f"{name}.post_attention_layernorm").register_forward_pre_hook(
            lambda m, a, i=i: us.__setitem__(i, a[0].detach())
        )
        for i, name in enumerate(resolve_plan(base, cfg).layer_names)
    ]
    model.eval()
    with torch.no_grad():
        model(**t.model_inputs)
    for h in hooks:
        h.remove()
    w = model.base_model.moc_state["default"].router["ffn"][0].detach().double()
    mask = t.inputs["attention_mask"].reshape(-1).bool()
    terms = []
    for i in range(LAYERS):
        logits = us[i].reshape(-1, HIDDEN).double() @ w.t()
        logits[:, i] = float("-inf")
        p = torch.softmax(logits, -1)[mask]
        f = torch.bincount(p.argmax(-1), minlength=LAYERS).double() / p.shape[0]
        terms.append((LAYERS - 1) * (f * p.mean(0)).sum())
    assert routing_stats(model)["balance_loss"] == pytest.approx(float(torch.stack(terms).mean()), rel=1e-6)


# ------------------------------------------------------------------ 7. float64
def test_float64_model_routes_and_mixes_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    t = tiny("llama")
    cfg = MocConfig(r=4, task_type="CAUSAL_LM", variant="ffn", learnable_alpha=True, alpha=0.9)
    model = get_peft_model(t.build().double(), cfg)
    _randomize(model, std=1.0)
    state = model.base_model.moc_state["default"]
    assert {p.dtype for p in state.parameters()} == {torch.float64}
    seen: list[torch.Tensor] = []
    route = ControlContext._route

    def spy(self: ControlContext, *args: Any, **kwargs: Any) -> Any:
        decision = route(self, *args, **kwargs)
        seen.append(decision.gates)
        return decision

    monkeypatch.setattr(ControlContext, "_route", spy)
    model.eval()
    with torch.no_grad():
        moc = model(**t.model_inputs).logits
    assert moc.dtype == torch.float64 and {g.dtype for g in seen} == {torch.float64}

    # float64 reference: c_l(u) = a_l B_l A_l u + (1 - a_l) g B_j A_j u, j the top-1 expert, g its probability
    fresh = t.build().double()
    w = state.router["ffn"][0].detach()
    a_pool, bt_pool = state.A["ffn"].detach(), state.Bt["ffn"].detach()
    alpha = torch.sigmoid(state.alpha_logit[0].detach())
    stash: dict[int, torch.Tensor] = {}
    handles = []

    def control(u: torch.Tensor, i: int) -> torch.Tensor:
        g, j = torch.softmax(u @ w.t(), -1).max(-1)
        local = (u @ a_pool[i].t()) @ bt_pool[i]
        chosen = torch.einsum("...d,...rd->...r", u, a_pool[j])
        chosen = torch.einsum("...r,...rd->...d", chosen, bt_pool[j])
        return alpha[i] * local + (1 - alpha[i]) * g.unsqueeze(-1) * chosen

    for i, name in enumerate(resolve_plan(fresh, cfg).layer_names):
        layer = fresh.get_submodule(name)
        handles.append(
            layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, args, i=i: stash.__setitem__(i, args[0])
            )
        )
        handles.append(layer.mlp.register_forward_hook(lambda m, args, out, i=i: out + control(stash[i], i)))
    with torch.no_grad():
        ref = fresh(**t.model_inputs).logits
    for h in handles:
        h.remove()
    assert float((moc - ref).abs().max()) < 1e-12 * float(ref.abs().max())
