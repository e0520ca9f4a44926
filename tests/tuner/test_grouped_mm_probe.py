"""`grouped_mm_runs`: the sparse kernel asks `torch._grouped_mm` once per device and dtype whether
it runs, and falls back to the per-expert loop where it does not."""

from __future__ import annotations

import pytest
import torch

from moc_cli.tuner import functional


def test_a_refusing_op_is_asked_once_and_the_loop_gives_the_same_products(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(functional, "_GROUPED_MM_RUNS", {})
    calls: list[int] = []

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("Expected inputs of BF16 type but got mat_a.dtype=float")

    monkeypatch.setattr(torch, "_grouped_mm", refuse)
    cpu = torch.device("cpu")
    assert functional.grouped_mm_runs(cpu, torch.float32) is False
    assert functional.grouped_mm_runs(cpu, torch.float32) is False
    assert len(calls) == 1  # remembered: the refusal is not asked again
    assert functional._fits_grouped_mm(torch.zeros(8, 16)) is False

    gen = torch.Generator().manual_seed(0)
    n, e, r, d = 64, 12, 16, 32  # E*r = 192: routed columns per expert
    u = torch.randn(n, d, generator=gen)
    a, bt = torch.randn(e, r, d, generator=gen), torch.randn(e, r, d, generator=gen)
    idx = torch.stack([torch.full((n,), 3), torch.randint(0, e, (n,), generator=gen)], dim=1)
    coef = torch.rand(n, 2, generator=gen)
    got = functional.sparse_mixture(u, a, bt, idx, coef, 2.0)
    torch.testing.assert_close(got, functional.dense_mixture(u, a, bt, idx, coef, 2.0))
    assert len(calls) == 1  # the kernel never called the refusing op


def test_meta_tensors_are_never_asked() -> None:
    assert functional.grouped_mm_runs(torch.device("meta"), torch.float32) is False


def test_devices_outside_the_per_expert_list_project_all_rows_at_once() -> None:
    """On a GPU a wide pool takes the all-rows projection (the kernel benchmark measured it faster
    there): no sort by expert, and the same results."""
    gen = torch.Generator().manual_seed(0)
    n, e, r, d = 64, 30, 16, 32  # E*r = 480: per expert on the CPU
    u = torch.randn(n, d, generator=gen)
    a, bt = torch.randn(e, r, d, generator=gen), torch.randn(e, r, d, generator=gen)
    idx = torch.stack([torch.full((n,), 3), torch.randint(0, e, (n,), generator=gen)], dim=1)
    coef = torch.rand(n, 2, generator=gen)
    default = functional.DEFAULT_KERNEL_POLICY
    assert [seg is not None for _, seg in functional._layouts(idx, e, r, default)] == [True, True]
    per_expert = functional.sparse_mixture(u, a, bt, idx, coef, 2.0)
    as_on_a_gpu = functional.KernelPolicy(per_expert_device_types=())
    assert [(cols, seg) for cols, seg in functional._layouts(idx, e, r, as_on_a_gpu)] == [([0, 1], None)]
    # float32 sums in another order: within 1e-5 relative
    all_rows = functional.sparse_mixture(u, a, bt, idx, coef, 2.0, as_on_a_gpu)
    torch.testing.assert_close(all_rows, per_expert, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("experts", [6, 30])  # all rows at once; per expert on the CPU (E*r >= 160)
def test_no_tokens_give_an_empty_output_and_zero_gradients(experts: int) -> None:
    r, d = 16, 32
    u = torch.randn(0, d, requires_grad=True)
    a = torch.randn(experts, r, d, requires_grad=True)
    bt = torch.randn(experts, r, d, requires_grad=True)
    coef = torch.rand(0, 2, requires_grad=True)
    idx = torch.zeros(0, 2, dtype=torch.long)
    out = functional.sparse_mixture(u, a, bt, idx, coef, 1.5)
    assert out.shape == (0, d)
    out.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a)) and torch.equal(bt.grad, torch.zeros_like(bt))
    assert u.grad.shape == (0, d) and coef.grad.shape == (0, 2)
