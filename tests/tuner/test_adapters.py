"""Adapter management, merge/unload semantics, config validation and registration."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from moc_tuner_testkit import HIDDEN, tiny
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import moc_cli
from moc_cli import MocConfig, MocModel
from moc_cli.tuner import MocLayer, register_moc


def _randomize(model, adapter: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".moc_state.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_add_set_delete_adapter() -> None:
    t = tiny("llama")
    base = t.build()
    with torch.no_grad():
        ref = base(**t.model_inputs).logits
    model = get_peft_model(base, MocConfig(r=4, task_type="CAUSAL_LM"))
    _randomize(model, "default", 1)
    model.add_adapter("second", MocConfig(r=2, task_type="CAUSAL_LM", top_k=2))
    _randomize(model, "second", 2)
    assert model.active_adapters == ["default"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".moc_state.default." in n for n in trainable)
    assert not any(".moc_state.second." in n for n in trainable)
    with torch.no_grad():
        out_default = model(**t.model_inputs).logits
        model.set_adapter("second")
        out_second = model(**t.model_inputs).logits
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".moc_state.second." in n for n in trainable)
    assert not any(".moc_state.default." in n for n in trainable)
    assert not torch.equal(out_default, out_second) and not torch.equal(out_second, ref)

    with pytest.warns(UserWarning, match="Adapter second was active which is now deleted"):
        model.delete_adapter("second")
    assert "second" not in model.base_model.moc_state and "second" not in model.peft_config
    assert model.active_adapters == ["default"]
    with torch.no_grad():
        assert torch.equal(model(**t.model_inputs).logits, out_default)


def test_adapters_must_share_the_variant() -> None:
    t = tiny("bert")
    model = get_peft_model(t.build(), MocConfig(task_type="SEQ_CLS", variant="ffn"))
    with pytest.raises(ValueError, match=r"MocConfig.variant='block' of adapter 'other' differs"):
        model.add_adapter("other", MocConfig(task_type="SEQ_CLS", variant="block"))


def test_merge_and_unload_raises_and_unload_returns_base_with_trained_head() -> None:
    t = tiny("bert")
    base = t.build()
    model = get_peft_model(base, MocConfig(r=4, task_type="SEQ_CLS"))
    with pytest.raises(NotImplementedError) as err:
        model.merge_and_unload()
    message = str(err.value)
    assert "cannot be merged into the base weights" in message
    assert "moc merge-export --format bundle" in message and "--format onnx" in message
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        model.merge_adapter()

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(2):
        model(**t.batch()).loss.backward()
        opt.step()
        opt.zero_grad()
    head = model.base_model.model.classifier.modules_to_save["default"].weight.detach().clone()
    plain = model.unload()
    assert not any(isinstance(m, MocLayer) for m in plain.modules())
    assert torch.equal(plain.classifier.weight, head)
    plain.eval()
    with torch.no_grad():
        out = plain(**t.model_inputs).logits
        # exactly the base network with the trained head, no control, no lingering hooks
        fresh = t.build()
        fresh.classifier.load_state_dict(plain.classifier.state_dict())
        assert torch.equal(out, fresh(**t.model_inputs).logits)
    assert not plain._forward_hooks and not plain._forward_pre_hooks


def test_is_trainable_false_freezes_shared_state(tmp_path) -> None:
    t = tiny("bert")
    base = t.build()
    base.save_pretrained(tmp_path / "base")
    get_peft_model(base, MocConfig(r=4, task_type="SEQ_CLS")).save_pretrained(tmp_path / "a")
    fresh = type(base).from_pretrained(tmp_path / "base")
    frozen = PeftModel.from_pretrained(fresh, tmp_path / "a", is_trainable=False)
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == []


def test_bf16_base_keeps_fp32_controls() -> None:
    t = tiny("llama")
    base = t.build().to(torch.bfloat16)
    model = get_peft_model(base, MocConfig(r=4, task_type="CAUSAL_LM"))
    state = model.base_model.moc_state["default"]
    assert {p.dtype for p in state.parameters()} == {torch.float32}
    model.train()
    loss = model(**t.batch()).loss
    loss.backward()
    assert loss.dtype == torch.bfloat16 or loss.dtype == torch.float32
    assert state.Bt["ffn"].grad is not None and state.Bt["ffn"].grad.dtype == torch.float32


def test_registration_is_idempotent_and_uses_own_enum() -> None:
    register_moc()
    register_moc()
    key = "MOC"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[key] is MocConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[key] is MocModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[key] == "moc_"
    assert MocConfig().peft_type == "MOC"
    assert moc_cli.__version__ == "0.1.0"


def test_config_defaults_help_and_round_trip() -> None:
    cfg = MocConfig()
    assert (cfg.r, cfg.variant, cfg.top_k, cfg.alpha, cfg.aux_loss_coef, cfg.control_scale) == (
        16,
        "both-shared",
        1,
        0.95,
        0.01,
        1.0,
    )
    for f in dataclasses.fields(MocConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help"
    again = MocConfig.from_peft_type(**cfg.to_dict())
    assert isinstance(again, MocConfig) and again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"variant": "mlp"},
            "MocConfig.variant='mlp' is invalid; allowed: ffn, attn, both-separate, both-shared, block",
        ),
        ({"r": 0}, "MocConfig.r=0 is invalid; allowed: an integer >= 1"),
        ({"top_k": 0}, "MocConfig.top_k=0 is invalid"),
        ({"alpha": 1.5}, "MocConfig.alpha=1.5 is invalid; allowed: a float in [0, 1]"),
        ({"alpha": 1.0, "learnable_alpha": True}, "strictly between 0 and 1 when learnable_alpha=True"),
        ({"router_scope": "local"}, "MocConfig.router_scope='local' is invalid; allowed: global, per_layer"),
        ({"init_a": "zeros"}, "MocConfig.init_a='zeros' is invalid; allowed: kaiming, normal"),
        (
            {"expert_compute": "fast"},
            "MocConfig.expert_compute='fast' is invalid; allowed: sparse, dense, auto",
        ),
        ({"router_temperature": 0}, "MocConfig.router_temperature=0 is invalid; allowed: a float > 0"),
        ({"aux_loss_coef": -1}, "MocConfig.aux_loss_coef=-1 is invalid; allowed: a float >= 0"),
        ({"control_dropout": 1.0}, "MocConfig.control_dropout=1.0 is invalid; allowed: a float in [0, 1)"),
        ({"global_control": "yes"}, "MocConfig.global_control='yes' is invalid; allowed: True or False"),
        ({"architecture": {"sites": {"mlp": {}}}}, "MocConfig.architecture.sites key 'mlp' is invalid"),
    ],
)
def test_config_validation_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        MocConfig(**kwargs)
    assert fragment in str(err.value)


def test_unknown_model_type_error_and_block_fallback() -> None:
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(
        "electra",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        embedding_size=32,
        vocab_size=64,
    )
    base = AutoModel.from_config(cfg).eval()
    with pytest.raises(ValueError) as err:
        get_peft_model(base, MocConfig(r=2))
    msg = str(err.value)
    assert "no architecture map for model_type 'electra'" in msg and "layers_pattern" in msg
    x = {"input_ids": torch.randint(0, 64, (2, 5))}
    with torch.no_grad():
        ref = base(**x).last_hidden_state
    model = get_peft_model(base, MocConfig(r=2, variant="block", layers_pattern="encoder.layer"))
    with torch.no_grad():
        assert torch.equal(model(**x).last_hidden_state, ref)
    assert len(model.base_model.moc_state["default"].A["block"]) == 2


def test_target_modules_and_layers_to_transform_select_layers() -> None:
    t = tiny("llama")
    model = get_peft_model(t.build(), MocConfig(r=2, task_type="CAUSAL_LM", layers_to_transform=[0, 2]))
    assert len(model.base_model.moc_state["default"].A["ffn"]) == 2
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, MocLayer))
    assert not any(".layers.1." in n for n in wrapped)
    model2 = get_peft_model(t.build(), MocConfig(r=2, task_type="CAUSAL_LM", target_modules=r".*layers\.1"))
    assert len(model2.base_model.moc_state["default"].A["attn"]) == 1


def test_package_exports_lazy_loader_and_registers_baselines() -> None:
    import importlib

    export = importlib.import_module("moc_cli.export")
    assert moc_cli.load_exported is export.load_exported
    with pytest.raises(AttributeError, match="module 'moc_cli' has no attribute 'nope'"):
        moc_cli.nope  # noqa: B018
    baselines = importlib.import_module("moc_cli.baselines")
    if callable(getattr(baselines, "register", None)):
        assert "MOLEX" in PEFT_TYPE_TO_CONFIG_MAPPING


@pytest.mark.parametrize("arch", ["llama", "vit"])
def test_unload_block_variant_removes_every_hook(arch: str) -> None:
    t = tiny(arch)
    base = t.build()
    with torch.no_grad():
        ref = base(**t.model_inputs).logits
    model = get_peft_model(base, MocConfig(r=4, variant="block", task_type=t.task_type))
    _randomize(model, "default", 5)
    plain = model.unload()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    with torch.no_grad():
        assert torch.equal(plain(**t.model_inputs).logits, ref)


def test_two_active_adapters_add_their_controls_and_train_together() -> None:
    t = tiny("llama")
    model = get_peft_model(t.build(), MocConfig(r=4, task_type="CAUSAL_LM"))
    model.add_adapter("second", MocConfig(r=2, task_type="CAUSAL_LM", top_k=2))
    _randomize(model, "default", 1)
    _randomize(model, "second", 2)
    tuner = model.base_model
    runtime = tuner.control_context
    site = tuner.moc_state["default"].sites[0]
    u = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(0))

    def control(active: list[str]) -> torch.Tensor:
        runtime.active = active
        with torch.no_grad():
            return runtime.control(site, 1, u)

    # The layer adds the sum of the active adapters' controls, each routed by its own router.
    torch.testing.assert_close(control(["default", "second"]), control(["default"]) + control(["second"]))

    with torch.no_grad():
        alone = {}
        for name in ("default", "second"):
            tuner.set_adapter(name)
            alone[name] = model(**t.model_inputs).logits
        tuner.set_adapter(["default", "second"])
        together = model(**t.model_inputs).logits
    assert model.active_adapters == ["default", "second"]
    assert not torch.allclose(together, alone["default"]) and not torch.allclose(together, alone["second"])

    model.train()
    model(**t.batch()).loss.backward()
    for name in ("default", "second"):
        grads = [p.grad for n, p in model.named_parameters() if f".moc_state.{name}." in n]
        assert grads and all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert set(runtime.stats) == {"default", "second"}  # each adapter's routing is recorded
