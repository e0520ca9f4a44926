"""Activation memory saved for backward: MoC ~ Control < LoRA (all linear layers)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from moc_cli import MocConfig
from moc_cli.profiling import saved_tensor_bytes
from moc_cli.tuner.architectures import resolve_plan

KW = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, vocab_size=100)


def _build(arch: str):
    torch.manual_seed(0)
    if arch == "llama":
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", num_key_value_heads=2, **KW))
    cfg = AutoConfig.for_model(
        "bert", num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **KW
    )
    return AutoModelForSequenceClassification.from_config(cfg)


def _saved(model, arch: str) -> int:
    x = torch.randint(0, 100, (4, 48), generator=torch.Generator().manual_seed(0))
    labels = x if arch == "llama" else torch.zeros(4, dtype=torch.long)
    model.train()
    exclude = list(model.parameters()) + list(model.buffers())
    return saved_tensor_bytes(lambda: model(input_ids=x, labels=labels).loss, exclude=exclude).total_bytes


def _hand_written_control(arch: str, r: int) -> int:
    """Per-block Control on the attn and ffn sites written with plain hooks (the predecessor method)."""
    base = _build(arch)
    for p in base.parameters():
        p.requires_grad_(False)
    head = base.classifier if arch == "bert" else None
    if head is not None:
        head.requires_grad_(True)
    plan = resolve_plan(base, MocConfig(variant="both-separate"))
    params, stash, sites = [], {}, []
    for i, name in enumerate(plan.layer_names):
        layer = base.get_submodule(name)
        if arch == "llama":
            sites += [
                (layer.input_layernorm, layer.self_attn, (i, "attn")),
                (layer.post_attention_layernorm, layer.mlp, (i, "ffn")),
            ]
        else:
            sites += [(None, layer.attention.output, (i, "attn")), (None, layer.output, (i, "ffn"))]
    for reader, writer, key in sites:
        a = torch.nn.Parameter(torch.randn(r, 64) * 0.1)
        b = torch.nn.Parameter(torch.randn(64, r) * 0.1)
        params += [a, b]
        if reader is not None:
            reader.register_forward_pre_hook(lambda m, args, key=key: stash.__setitem__(key, args[0]))

        def add(m, args, out, key=key, a=a, b=b, tapped=reader is not None):
            u = stash.pop(key) if tapped else args[1]
            c = (u @ a.t()) @ b.t()
            return (out[0] + c,) + tuple(out[1:]) if isinstance(out, tuple) else out + c

        writer.register_forward_hook(add)
    base.moc_test_params = torch.nn.ParameterList(params)
    return _saved(base, arch)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_saved_bytes_moc_control_lora(arch: str) -> None:
    tt = "CAUSAL_LM" if arch == "llama" else "SEQ_CLS"
    moc = _saved(get_peft_model(_build(arch), MocConfig(r=16, task_type=tt, top_k=1)), arch)
    dense = _saved(get_peft_model(_build(arch), MocConfig(r=16, task_type=tt, expert_compute="dense")), arch)
    control = _saved(get_peft_model(_build(arch), MocConfig(r=16, task_type=tt, global_control=False)), arch)
    lora = _saved(
        get_peft_model(_build(arch), LoraConfig(r=8, target_modules="all-linear", task_type=tt)), arch
    )
    reference = _hand_written_control(arch, 16)
    ratio = moc / control
    print(
        f"{arch}: moc {moc} dense {dense} control {control} lora {lora} hand-written {reference} moc/control {ratio:.3f}"
    )
    # MoC's Control path stores what a hand-written Control does, plus one constant 1x1 expert index
    # (8 bytes) and weight (4 bytes) per site
    n_sites = 2 * KW["num_hidden_layers"]
    assert control - reference == 12 * n_sites
    assert ratio <= 1.15
    assert moc < dense
    assert control < lora


def test_saved_bytes_under_bf16_autocast_stay_close_to_control() -> None:
    x = torch.randint(0, 100, (4, 48), generator=torch.Generator().manual_seed(0))

    def measure(**kw) -> int:
        model = get_peft_model(_build("llama"), MocConfig(r=16, task_type="CAUSAL_LM", **kw))
        model.train()

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(input_ids=x, labels=x).loss

        return saved_tensor_bytes(step, exclude=list(model.parameters())).total_bytes

    # fp32 controls computed in bf16 save no extra copy of u: the ratio stays as in fp32
    assert measure() / measure(global_control=False) <= 1.15


def test_saved_bytes_count_only_what_the_graph_still_holds() -> None:
    """A graph built and dropped inside the forward (as DoRA does for its detached weight norm) frees
    what it saved; it must not count, nor collide with a later tensor at the freed address."""
    x = torch.randn(64, 64, requires_grad=True)

    def step() -> torch.Tensor:
        for _ in range(3):
            scratch = x.sin().cos()  # cos saves its 16 KiB input; the graph dies with `scratch`
            del scratch
        kept = x.exp()  # exp saves its 16 KiB output, held by the returned graph
        return kept.sum()

    measured = saved_tensor_bytes(step, exclude=[x])
    assert (measured.total_bytes, measured.num_storages, measured.num_saved_tensors) == (
        64 * 64 * 4,
        1,
        7,
    )  # sin saves x (excluded)
