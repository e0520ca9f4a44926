"""Routing semantics: balance loss, padding, statistics and the exact special cases."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from moc_tuner_testkit import HIDDEN, LAYERS, tiny
from peft import get_peft_model

from moc_cli import MocConfig
from moc_cli.profiling import saved_tensor_bytes
from moc_cli.tuner import DEFAULT_KERNEL_POLICY, KernelPolicy, functional, reset_routing_stats, routing_stats
from moc_cli.tuner.architectures import resolve_plan
from moc_cli.tuner.functional import dense_mixture, sparse_mixture


def _randomize(model, std: float = 0.3, seed: int = 7) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".moc_state." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def test_balance_loss_added_in_training_only_and_ignores_padding() -> None:
    t = tiny("bert")
    model = get_peft_model(t.build(), MocConfig(r=4, task_type="SEQ_CLS", aux_loss_coef=0.5))
    _randomize(model)
    batch = t.batch()

    model.eval()
    with torch.no_grad():
        eval_loss = model(**batch).loss
        plain = model.get_base_model()  # same modules: the task loss alone via the classifier head
        logits = plain(**t.model_inputs).logits
    task = torch.nn.functional.cross_entropy(logits, batch["labels"])
    assert torch.equal(eval_loss, task)
    eval_balance = routing_stats(model)["balance_loss"]

    for module in model.modules():  # no dropout: training and eval forwards then route identically
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    train_loss = model(**batch).loss
    balance = routing_stats(model)["balance_loss"]
    assert balance == eval_balance
    assert balance is not None and balance > 0
    torch.testing.assert_close(train_loss, task + 0.5 * balance)
    assert train_loss.requires_grad

    # changing the content of padded positions changes nothing in the balance loss or the usage counts
    model.eval()
    reset_routing_stats(model)
    with torch.no_grad():
        model(**batch)
    first = routing_stats(model)
    ids = batch["input_ids"].clone()
    ids[batch["attention_mask"] == 0] = (ids[batch["attention_mask"] == 0] + 17) % 60 + 3
    reset_routing_stats(model)
    with torch.no_grad():
        model(**{**batch, "input_ids": ids})
    second = routing_stats(model)
    assert first["balance_loss"] == second["balance_loss"]
    assert first["expert_usage"] == second["expert_usage"]
    n_real = int(batch["attention_mask"].sum())
    usage = first["expert_usage"]["block"]
    assert len(usage) == LAYERS and all(len(row) == LAYERS and sum(row) == n_real for row in usage)


def test_balance_loss_value_matches_reference_and_trainer_style_loss() -> None:
    t = tiny("llama")
    cfg = MocConfig(r=4, task_type="CAUSAL_LM", variant="ffn", aux_loss_coef=0.25)
    model = get_peft_model(t.build(), cfg)
    _randomize(model)
    base = model.get_base_model()
    plan = resolve_plan(base, cfg)
    # capture u of every ffn site (input of post_attention_layernorm) to rebuild the router by hand
    us = {}
    hooks = [
        base.get_submodule(f"{name}.post_attention_layernorm").register_forward_pre_hook(
            lambda m, a, i=i: us.__setitem__(i, a[0].detach())
        )
        for i, name in enumerate(plan.layer_names)
    ]
    model.train()
    out = model(**t.batch())
    for h in hooks:
        h.remove()
    w = model.base_model.moc_state["default"].router["ffn"][0].detach()
    mask = t.inputs["attention_mask"].reshape(-1).bool()
    terms = []
    for i in range(LAYERS):
        p = torch.softmax(us[i].reshape(-1, HIDDEN) @ w.t(), -1)[mask]
        f = torch.bincount(p.argmax(-1), minlength=LAYERS).double() / p.shape[0]
        terms.append(LAYERS * (f * p.double().mean(0)).sum())
    ref_balance = float(torch.stack(terms).mean())
    stats = routing_stats(model)
    assert stats["balance_loss"] == pytest.approx(ref_balance, rel=1e-5)
    with torch.no_grad():
        model.eval()
        task_only = model(**t.batch()).loss
    # dropout is 0 in these tiny decoders: the training loss is task + lambda * balance
    assert out.loss.item() == pytest.approx(task_only.item() + 0.25 * ref_balance, rel=1e-5)
    assert sum(sum(r) for r in stats["routing_matrix"]["ffn"][0:1]) == pytest.approx(1.0)
    ent = stats["routing_entropy"]
    assert ent is not None and 0 <= ent <= math.log(LAYERS) + 1e-6


def _control_reference(base, t, cfg, state) -> torch.Tensor:
    """Hand-written per-block Control: hooks add s * B_l A_l u at every site (LLaMA pre-LN, BERT post-LN)."""
    plan = resolve_plan(base, cfg)
    handles, stash = [], {}
    for i, name in enumerate(plan.layer_names):
        layer = base.get_submodule(name)
        for site in cfg.site_types:
            a = state.A[site][i].detach()
            b = state.Bt[site][i].detach().t()
            if t.arch == "llama":
                reader = layer.input_layernorm if site == "attn" else layer.post_attention_layernorm
                writer = layer.self_attn if site == "attn" else layer.mlp
                handles.append(
                    reader.register_forward_pre_hook(
                        lambda m, args, k=(i, site): stash.__setitem__(k, args[0])
                    )
                )
            else:  # BERT: u is the residual input of the output sub-module (argument 1)
                writer = layer.attention.output if site == "attn" else layer.output

            def add(m, args, out, k=(i, site), a=a, b=b):
                u = stash.pop(k) if t.arch == "llama" else args[1]
                c = ((u @ a.t()) @ b.t()) * cfg.control_scale
                return (out[0] + c,) + tuple(out[1:]) if isinstance(out, tuple) else out + c

            handles.append(writer.register_forward_hook(add))
    try:
        with torch.no_grad():
            return base(**t.model_inputs).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("kw", [{"global_control": False}, {"alpha": 1.0}])
def test_control_baseline_is_exact(arch: str, kw: dict) -> None:
    t = tiny(arch)
    cfg = MocConfig(r=4, task_type=t.task_type, variant="both-separate", **kw)
    model = get_peft_model(t.build(), cfg)
    _randomize(model)
    state = model.base_model.moc_state["default"]
    assert len(state.router) == 0  # no router parameters at all
    with torch.no_grad():
        moc = model(**t.model_inputs).logits
    fresh = t.build()
    if arch == "bert":  # the trained head copy is part of the model under test
        fresh.classifier.load_state_dict(
            model.base_model.model.classifier.modules_to_save["default"].state_dict()
        )
    ref = _control_reference(fresh, t, cfg, state)
    assert torch.equal(moc, ref)


def test_balance_loss_added_for_task_type_none() -> None:
    t = tiny("vit")  # PeftModel.forward calls the base model directly for task_type=None
    model = get_peft_model(t.build(), MocConfig(r=4, aux_loss_coef=0.3))
    _randomize(model)
    model.eval()
    with torch.no_grad():
        task = model(**t.batch()).loss
    model.train()
    loss = model(**t.batch()).loss
    balance = routing_stats(model)["balance_loss"]
    torch.testing.assert_close(loss.detach(), task + 0.3 * balance)


def test_dense_soft_mixture_special_case() -> None:
    t = tiny("llama")
    cfg = MocConfig(
        r=4, task_type="CAUSAL_LM", variant="ffn", top_k=LAYERS, alpha=0.0, renormalize_topk=False
    )
    model = get_peft_model(t.build(), cfg)
    _randomize(model)
    state = model.base_model.moc_state["default"]
    with torch.no_grad():
        moc = model(**t.model_inputs).logits
    base = t.build()
    plan = resolve_plan(base, cfg)
    w = state.router["ffn"][0].detach()
    a_all, b_all = state.A["ffn"].detach(), state.Bt["ffn"].detach()
    stash, handles = {}, []

    def mix(u):  # c(u) = sum_j softmax(W u)_j B_j A_j u
        p = torch.softmax(u @ w.t(), -1)
        return sum(p[..., j : j + 1] * ((u @ a_all[j].t()) @ b_all[j]) for j in range(LAYERS))

    for i, name in enumerate(plan.layer_names):
        layer = base.get_submodule(name)
        handles.append(
            layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, args, i=i: stash.__setitem__(i, args[0])
            )
        )
        handles.append(layer.mlp.register_forward_hook(lambda m, args, out, i=i: out + mix(stash[i])))
    with torch.no_grad():
        ref = base(**t.model_inputs).logits
    torch.testing.assert_close(moc, ref, rtol=1e-5, atol=1e-6)


def _mixture_inputs(m: int, local: bool, n: int = 11, e: int = 5, r: int = 3, d: int = 8) -> tuple:
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(n, d, generator=gen, requires_grad=True)
    a = torch.randn(e, r, d, generator=gen, requires_grad=True)
    bt = torch.randn(e, r, d, generator=gen, requires_grad=True)
    idx = torch.randint(0, e, (n, m), generator=gen)
    if local:  # column 0 is the layer's own control, the same expert for every token
        idx[:, 0] = 2
    coef = torch.rand(n, m, generator=gen, requires_grad=True)
    return u, a, bt, idx, coef


# kernel policies forcing each way of computing routed columns
STRATEGIES = {
    "per-expert": functional.KernelPolicy(grouped_min_width=0),
    "all-rows": functional.KernelPolicy(grouped_min_width=math.inf),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize(
    ("m", "local"), [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]
)
def test_sparse_function_matches_dense_autograd(m: int, local: bool, strategy: str) -> None:
    # tokens sorted by expert into segments, or every token projected
    # through all E*r rows of A
    policy = STRATEGIES[strategy]
    u, a, bt, idx, coef = _mixture_inputs(m, local)
    layouts = functional._layouts(idx, a.shape[0], a.shape[1], policy)
    assert all((seg is None) == (strategy == "all-rows") for _, seg in layouts)
    outs, grads = [], []
    for fn in (partial(sparse_mixture, policy=policy), dense_mixture):
        out = fn(u, a, bt, idx, coef, 1.5)
        g = torch.autograd.grad((out * torch.linspace(-1, 1, u.shape[1])).sum(), (u, a, bt, coef))
        outs.append(out)
        grads.append(g)
    torch.testing.assert_close(outs[0], outs[1])
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g0, g1)
    assert torch.autograd.gradcheck(
        lambda *x: sparse_mixture(*x[:3], idx, x[3], 1.5, policy),
        (
            u.double().detach().requires_grad_(),
            a.double().detach().requires_grad_(),
            bt.double().detach().requires_grad_(),
            coef.double().detach().requires_grad_(),
        ),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_product_gives_the_per_expert_loop_results(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routed segments go through one `torch._grouped_mm` when the operands allow it; its output
    and every gradient must equal the per-expert loop it replaces (exactly in float32)."""
    u, a, bt, idx, coef = _mixture_inputs(2, local=True, n=256, e=30, r=16, d=64)  # E*r=480: per expert
    idx[idx[:, 1] == 5, 1] = 6  # an expert no token picks: an empty segment
    leaves = [x.detach().to(dtype).requires_grad_() for x in (u, a, bt, coef)]
    assert functional.grouped_mm_runs(u.device, dtype)  # asked (and remembered) before counting calls
    calls = []
    grouped_mm = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *args, **kw: calls.append(1) or grouped_mm(*args, **kw))

    def run() -> list[torch.Tensor]:
        out = sparse_mixture(leaves[0], leaves[1], leaves[2], idx, leaves[3], 1.5)
        return [out, *torch.autograd.grad((out.float() * torch.linspace(-1, 1, 64)).sum(), leaves)]

    grouped = run()
    assert len(calls) == 6  # forward: A and B products; backward: two weight gradients, two products
    monkeypatch.setattr(functional, "_fits_grouped_mm", lambda mat: False)
    looped = run()
    assert len(calls) == 6
    for g, ref in zip(grouped, looped, strict=True):
        if dtype == torch.float32:
            assert torch.equal(g, ref)
        else:  # bfloat16 sums may round differently: within one unit in the last place of the largest value
            torch.testing.assert_close(g, ref, rtol=0, atol=float(ref.detach().abs().max()) * 2**-7)


def test_backward_reuses_the_forward_expert_layout_and_it_counts_as_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    u, a, bt, idx, coef = _mixture_inputs(2, local=True, n=256, e=30, r=16, d=64)  # E*r=480: per expert
    sorts = []
    argsort = torch.argsort
    monkeypatch.setattr(torch, "argsort", lambda *args, **kw: sorts.append(1) or argsort(*args, **kw))
    measured = saved_tensor_bytes(
        lambda: sparse_mixture(u, a, bt, idx, coef, 1.5).sum(), exclude=[u, a, bt, coef]
    )
    measured.result.backward()
    assert len(sorts) == 1  # the routed column is sorted by expert once, in the forward
    # z_sel [256, 2, 16] float32, idx as int16, the routed column's sorted order, token rows and
    # inverse order (int64 per assignment) and segment ends (int32 per expert)
    assert measured.total_bytes == 256 * 2 * 16 * 4 + 256 * 2 * 2 + 3 * 256 * 8 + 30 * 4


@pytest.mark.parametrize(
    ("shape", "dtype", "fits"),
    [
        ((8, 16), torch.float32, True),
        ((8, 3), torch.float32, False),  # a 12-byte row stride
        ((8, 12), torch.bfloat16, False),  # a 24-byte row stride
        ((8, 16), torch.bfloat16, True),
        ((8, 16), torch.float64, False),  # a dtype the op does not take
    ],
)
def test_grouped_product_is_only_asked_for_operands_it_takes(
    shape: tuple, dtype: torch.dtype, fits: bool
) -> None:
    mat = torch.zeros(shape, dtype=dtype)
    assert functional._fits_grouped_mm(mat) is fits
    assert functional._fits_grouped_mm(mat.t()) is fits  # column-major: the other stride is checked
    assert (
        functional._fits_grouped_mm(torch.zeros(64, dtype=dtype)[1 : 1 + 16].view(4, 4)) is False
    )  # unaligned


def test_only_wide_pools_split_off_the_local_column_and_group_per_expert() -> None:
    gen = torch.Generator().manual_seed(0)
    with_local = torch.cat([torch.full((2048, 1), 4), torch.randint(0, 30, (2048, 1), generator=gen)], dim=1)
    (local, local_seg), (routed, routed_seg) = functional._layouts(
        with_local, e=30, r=16, policy=DEFAULT_KERNEL_POLICY
    )  # SmolLM2
    assert (local, local_seg.spans, local_seg.rows) == ([0], [(4, 0, 2048)], None)  # a plain matmul
    assert routed == [1] and routed_seg is not None and routed_seg.rows is not None  # sorted by expert
    assert functional._layouts(with_local % 6, e=6, r=16, policy=DEFAULT_KERNEL_POLICY) == [
        ([0, 1], None)
    ]  # MiniLM: all rows at once
    collapsed = torch.zeros(2048, 2, dtype=torch.long)  # every token on one expert: a fixed column too
    assert [
        (cols, seg.spans)
        for cols, seg in functional._layouts(collapsed, e=30, r=16, policy=DEFAULT_KERNEL_POLICY)
    ] == [
        ([0], [(0, 0, 2048)]),
        ([1], [(0, 0, 2048)]),
    ]


def test_exported_sparse_mixture_follows_the_routing_of_each_input(tmp_path) -> None:
    """An exported graph must not bake in the expert grouping of the example input (ONNX export
    traces the forward: the value-dependent branches give way to the all-rows path there)."""
    ort = pytest.importorskip("onnxruntime")
    u, a, bt, idx, coef = _mixture_inputs(2, local=True, n=64, e=20, r=8, d=16)  # E*r=160: per expert eagerly
    u, a, bt, coef = (x.detach() for x in (u, a, bt, coef))

    class Mixture(torch.nn.Module):
        def forward(self, u: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
            return sparse_mixture(u, a, bt, idx, coef, 1.5)

    path = tmp_path / "mixture.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Mixture(), (u, idx, coef), str(path), input_names=["u", "idx", "coef"], dynamo=False
        )
    other = idx.clone()
    other[:, 0] = 7  # another local expert
    other[:, 1] = torch.arange(64) % 20
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"u": u.numpy(), "idx": other.numpy(), "coef": coef.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), dense_mixture(u, a, bt, other, coef, 1.5))


def test_segments_sort_assignments_by_expert_and_back() -> None:
    idx = torch.tensor([[2, 0], [2, 2], [1, 0]])
    seg = functional._Segments(idx, e=3)
    assert seg.spans == [(0, 0, 2), (1, 2, 3), (2, 3, 6)]  # expert 2 serves three assignments
    assert torch.equal(idx.reshape(-1)[seg.order], torch.tensor([0, 0, 1, 2, 2, 2]))
    assert torch.equal(seg.rows, torch.tensor([0, 2, 2, 0, 1, 1]))  # the token of each sorted assignment
    per_assignment = torch.arange(6.0).view(3, 2, 1)
    assert torch.equal(seg.unsort(seg.sort(per_assignment)), per_assignment)


def test_expert_compute_modes_agree_and_options() -> None:
    t = tiny("bert")
    results = {}
    for mode in ("sparse", "dense", "auto"):
        model = get_peft_model(t.build(), MocConfig(r=4, task_type="SEQ_CLS", expert_compute=mode, top_k=2))
        _randomize(model)
        model.train()
        torch.manual_seed(0)
        loss = model(**t.batch()).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[mode] = (loss.detach(), grads)
    for mode in ("dense", "auto"):
        torch.testing.assert_close(results[mode][0], results["sparse"][0])
        for name, g in results["sparse"][1].items():
            torch.testing.assert_close(results[mode][1][name], g, msg=name)


@pytest.mark.parametrize(
    ("tokens", "experts", "rank", "sparse"),
    [
        (2048, 6, 16, False),  # MiniLM 16x128: narrow pool, dense is faster
        (2048, 12, 16, True),  # BERT-base 16x128: sparse measured 0.76x dense (kernels.md)
        (2048, 9, 16, False),  # E*r 144 < 160: narrow, all rows
        (2048, 30, 16, True),  # SmolLM2 16x128
        (512, 30, 16, True),  # SmolLM2 4x128
        (120, 30, 16, True),  # exactly 4 tokens per expert
        (119, 30, 16, False),
        (8, 30, 16, False),  # decoding 8 sequences
    ],
)
def test_auto_runs_sparse_without_grad_only_where_the_kernel_benchmark_found_it_faster(
    tokens: int, experts: int, rank: int, sparse: bool
) -> None:
    idx = torch.zeros(tokens, 2, dtype=torch.long)
    assert functional.sparse_is_faster_without_grad(idx, experts, rank) is sparse
    # no values to branch on (memory estimates): always dense
    assert functional.sparse_is_faster_without_grad(idx.to("meta"), experts, rank) is False


def test_auto_without_grad_gives_the_dense_logits_through_either_formulation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import moc_cli.tuner.routing as routing_module

    t = tiny("llama")
    models = {}
    for mode in ("dense", "auto"):
        models[mode] = get_peft_model(t.build(), MocConfig(r=4, task_type="CAUSAL_LM", expert_compute=mode))
        _randomize(models[mode])
        models[mode].eval()
    calls: list[str] = []
    for name in ("sparse_mixture", "dense_mixture"):
        real = getattr(routing_module, name)
        monkeypatch.setattr(
            routing_module, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a)
        )
    with torch.no_grad():
        want = models["dense"](**t.inputs).logits
        calls.clear()
        narrow = models["auto"](**t.inputs).logits  # pool E*r = 3*4 < 256: dense
        assert set(calls) == {"dense_mixture"}
        models["auto"].base_model.kernel_policy = KernelPolicy(sparse_inference_min_width=LAYERS * 4)
        calls.clear()
        wide = models["auto"](**t.inputs).logits
        assert set(calls) == {"sparse_mixture"}
    torch.testing.assert_close(narrow, want)
    torch.testing.assert_close(wide, want)


def test_options_exclude_self_per_layer_bias_learnable_alpha() -> None:
    t = tiny("bert")
    cfg = MocConfig(
        r=4,
        task_type="SEQ_CLS",
        variant="both-separate",
        exclude_self=True,
        router_scope="per_layer",
        router_bias=True,
        learnable_alpha=True,
        renormalize_topk=True,
        router_temperature=0.5,
    )
    model = get_peft_model(t.build(), cfg)
    n_moc = sum(p.numel() for n, p in model.named_parameters() if ".moc_state." in n)
    s, e, d = 2, LAYERS, HIDDEN
    assert n_moc == s * e * 2 * d * 4 + 2 * e * (d * e + e) + s * e
    _randomize(model)
    model.eval()
    with torch.no_grad():
        model(**t.model_inputs)
    usage = routing_stats(model)["expert_usage"]
    assert set(usage) == {"attn", "ffn"}
    for rows in usage.values():
        for layer, row in enumerate(rows):
            assert row[layer] == 0  # never routed to itself
    model.train()
    model(**t.batch()).loss.backward()
    alpha = model.base_model.moc_state["default"].alpha_logit
    assert alpha.grad is not None and bool((alpha.grad != 0).all())


def test_top_k_larger_than_experts_is_rejected() -> None:
    t = tiny("bert")
    with pytest.raises(
        ValueError, match=r"MocConfig.top_k=3 is invalid for 3 controlled layers with exclude_self"
    ):
        get_peft_model(t.build(), MocConfig(task_type="SEQ_CLS", top_k=3, exclude_self=True))
