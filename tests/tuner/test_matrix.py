"""Generic behaviour matrix: every mapped architecture x every MoC variant."""

from __future__ import annotations

import pytest
import torch
from moc_tuner_testkit import ARCHS, HIDDEN, LAYERS, VARIANTS, tiny
from peft import get_peft_model

from moc_cli import MocConfig
from moc_cli.tuner.architectures import resolve_plan

R = 4


def _wrap(arch: str, variant: str, **kw):
    t = tiny(arch)
    base = t.build()
    with torch.no_grad():
        ref = base(**t.model_inputs)
    cfg = MocConfig(r=R, variant=variant, task_type=t.task_type, **kw)
    return t, ref, get_peft_model(base, cfg)


def _logits(out):
    return out.logits


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_init_identity_trainables_training_and_disable(arch: str, variant: str) -> None:
    t, ref, model = _wrap(arch, variant)
    with torch.no_grad():
        out = model(**t.model_inputs)
    assert torch.equal(_logits(out), _logits(ref))

    # only MoC state and the task head train, with the documented count
    cfg = model.peft_config["default"]
    sites = len(cfg.site_types)
    expected = sites * LAYERS * 2 * HIDDEN * R + len(cfg.router_keys) * HIDDEN * LAYERS
    moc = {n: p for n, p in model.named_parameters() if p.requires_grad and ".moc_state." in n}
    head = {n: p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n}
    others = [n for n, p in model.named_parameters() if p.requires_grad and n not in moc and n not in head]
    assert others == []
    assert sum(p.numel() for p in moc.values()) == expected
    assert len(cfg.router_keys) == (2 if variant == "both-separate" else 1)

    # learnable: a few AdamW steps reduce the loss; gradients reach every control expert and router
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    losses = []
    for step in range(6):
        loss = model(**t.batch()).loss
        loss.backward()
        if step == 2:
            for name, p in moc.items():
                assert p.grad is not None, name
                per_expert = p.grad.flatten(2).abs().sum(-1) if p.dim() == 3 else p.grad.abs()
                assert bool((per_expert > 0).all()), f"{name} has experts without gradient"
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    model.eval()
    with torch.no_grad():
        trained = model(**t.model_inputs)
        assert not torch.equal(_logits(trained), _logits(ref))
        with model.disable_adapter():
            disabled = model(**t.model_inputs)
        assert torch.equal(_logits(disabled), _logits(ref))
        again = model(**t.model_inputs)
    assert torch.equal(_logits(again), _logits(trained))


@pytest.mark.parametrize("variant", ["both-shared", "block"])
@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_include_control(arch: str, variant: str) -> None:
    t, ref, model = _wrap(arch, variant)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".moc_state." in name and ".Bt." in name:
                p.normal_(std=0.5)
    plan = resolve_plan(model.get_base_model(), model.peft_config["default"])
    captured = {}
    handles = []
    for i, name in enumerate(plan.layer_names):
        layer = model.get_base_model().get_submodule(name)
        handles.append(
            layer.register_forward_hook(
                lambda m, a, o, i=i: captured.__setitem__(i, o[0] if isinstance(o, tuple) else o)
            )
        )
    with torch.no_grad():
        out = model(**t.model_inputs, output_hidden_states=True)
        base_out = ref
    for h in handles:
        h.remove()
    states = out.hidden_states
    assert len(states) == LAYERS + 1
    for i in range(LAYERS - 1):  # the last entry may be taken after the final norm
        assert torch.equal(states[i + 1], captured[i]), f"hidden state {i + 1} misses the control"
    assert not torch.equal(_logits(out), _logits(base_out))


ATTENTION_MODULE = {
    "llama": "self_attn",
    "mistral": "self_attn",
    "qwen2": "self_attn",
    "gemma": "self_attn",
    "gpt2": "attn",
}
PRE_LN = {"llama", "mistral", "qwen2", "gemma", "gpt2", "vit"}


@pytest.mark.parametrize("arch", ARCHS)
def test_sites_read_u_where_the_method_table_says(arch: str) -> None:
    """attn site: u = block input (both families); ffn site: post-LN u = attention sub-block output,
    pre-LN u = block input + attention branch output (the residual before the FFN norm)."""
    t, _, model = _wrap(arch, "both-separate")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".moc_state." in name:
                p.normal_(std=0.3)
    base = model.get_base_model()
    plan = resolve_plan(base, model.peft_config["default"])
    runtime = model.base_model.control_context
    seen, layer_in, attn_out = {}, {}, {}
    original = runtime.control

    def spy(site, pos, u):
        seen[(site, pos)] = u.detach().clone()
        return original(site, pos, u)

    runtime.control = spy
    handles = []
    for i, name in enumerate(plan.layer_names):
        layer = base.get_submodule(name)
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, i=i: layer_in.__setitem__(i, a[0] if a else k["hidden_states"]),
                with_kwargs=True,
            )
        )
        attention = layer.get_submodule(ATTENTION_MODULE.get(arch, "attention"))
        handles.append(
            attention.register_forward_hook(
                lambda m, a, o, i=i: attn_out.__setitem__(i, o[0] if isinstance(o, tuple) else o)
            )
        )
    try:
        with torch.no_grad():
            model(**t.model_inputs)
    finally:
        del runtime.control
        for h in handles:
            h.remove()
    for i in range(LAYERS):
        assert torch.equal(seen[("attn", i)], layer_in[i])
        expected_ffn = layer_in[i] + attn_out[i] if arch in PRE_LN else attn_out[i]
        assert torch.equal(seen[("ffn", i)], expected_ffn)
