"""Expert mixture kernels of MoC.

Every site computes, per token n,

    c_n = s * sum_m coef[n, m] * Bt[idx[n, m]]^T-applied (A[idx[n, m]] u_n)

with expert pools `A, Bt` of shape `[E, r, d]` (`Bt_j = B_j^T`), `idx` the `m` experts a token
uses (its local control first, then its top-k picks) and `coef` their weights (alpha, then
(1 - alpha) * gates). Control is the special case of one expert with coefficient 1.

Two implementations:

- `sparse_mixture` (custom autograd function): projects `u` once through all E*r rows of `A` (u is
  already saved by the frozen sub-block, so the projection itself stores nothing new), keeps only
  the `m` chosen r-wide slices, and applies the chosen `B` rows through one matmul over a
  zero-filled `[N, E*r]` operand. It saves `u`, the chosen slices `z_sel [N, m, r]`, `idx` and
  `coef`: about 2r + 2m numbers per token per site. The backward recomputes the E*r-wide
  temporaries.
- `dense_mixture`: the same matmuls in plain autograd; it stores the `[N, E*r]` projection and
  mixed operand (2*E*r numbers per token), so it is only the default where nothing is stored
  (no grad mode).

Both keep the fp32 parameters and compute in the activation dtype: the autocast dtype when autocast
is on, else `u.dtype`. The original `u` is saved, never a cast copy.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


def autocast_off(device_type: str) -> AbstractContextManager[Any]:
    """Autocast disabled for the device; the meta device (memory estimates) has no autocast."""
    return nullcontext() if device_type == "meta" else torch.autocast(device_type, enabled=False)


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """Activation dtype the control computes in (autocast dtype if autocast is enabled)."""
    device_type = u.device.type
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return u.dtype


class _SparseMixture(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        u: torch.Tensor,
        a_pool: torch.Tensor,
        bt_pool: torch.Tensor,
        idx: torch.Tensor,
        coef: torch.Tensor,
        scale: float,
        cdt: torch.dtype,
    ) -> torch.Tensor:
        n, d = u.shape
        e, r, _ = a_pool.shape
        m = idx.shape[1]
        with autocast_off(u.device.type):
            a_flat = a_pool.to(cdt).reshape(e * r, d)
            bt_flat = bt_pool.to(cdt).reshape(e * r, d)
            z_all = (u.to(cdt) @ a_flat.t()).view(n, e, r)
            gather_idx = idx.unsqueeze(-1).expand(n, m, r)
            z_sel = z_all.gather(1, gather_idx)
            del z_all
            mixed = torch.zeros(n, e, r, dtype=cdt, device=u.device)
            mixed.scatter_add_(1, gather_idx, z_sel * coef.to(cdt).unsqueeze(-1))
            out = mixed.view(n, e * r) @ bt_flat
            if scale != 1.0:
                out = out * scale
        # indices are kept as int16 when they fit (E <= 32767): 2 instead of 8 bytes per entry
        # (an expanded constant index, as for Control, already costs nothing and stays as is)
        compact = e <= torch.iinfo(torch.int16).max and idx.stride(0) != 0
        small_idx = idx.to(torch.int16) if compact else idx
        ctx.save_for_backward(u, a_pool, bt_pool, small_idx, coef, z_sel)
        ctx.scale = scale
        ctx.cdt = cdt
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        u, a_pool, bt_pool, idx, coef, z_sel = ctx.saved_tensors
        idx = idx.long()
        scale, cdt = ctx.scale, ctx.cdt
        n, d = u.shape
        e, r, _ = a_pool.shape
        m = idx.shape[1]
        need_u, need_a, need_b, _, need_coef = ctx.needs_input_grad[:5]
        grad_u = grad_a = grad_b = grad_coef = None
        with autocast_off(u.device.type):
            go = grad_out.to(cdt)
            if scale != 1.0:
                go = go * scale
            coef_c = coef.to(cdt)
            gather_idx = idx.unsqueeze(-1).expand(n, m, r)
            if need_b:
                mixed = torch.zeros(n, e, r, dtype=cdt, device=u.device)
                mixed.scatter_add_(1, gather_idx, z_sel * coef_c.unsqueeze(-1))
                grad_b = (mixed.view(n, e * r).t() @ go).view(e, r, d).to(bt_pool.dtype)
                del mixed
            if need_u or need_a or need_coef:
                bt_flat = bt_pool.to(cdt).reshape(e * r, d)
                h_sel = (go @ bt_flat.t()).view(n, e, r).gather(1, gather_idx)  # dL/d(mixed) at chosen slices
                if need_coef:
                    grad_coef = (h_sel * z_sel).sum(-1).to(coef.dtype)
                if need_u or need_a:
                    dz = torch.zeros(n, e, r, dtype=cdt, device=u.device)
                    dz.scatter_add_(1, gather_idx, h_sel * coef_c.unsqueeze(-1))
                    dz_flat = dz.view(n, e * r)
                    if need_a:
                        grad_a = (dz_flat.t() @ u.to(cdt)).view(e, r, d).to(a_pool.dtype)
                    if need_u:
                        grad_u = (dz_flat @ a_pool.to(cdt).reshape(e * r, d)).to(u.dtype)
        return grad_u, grad_a, grad_b, None, grad_coef, None, None


def sparse_mixture(
    u: torch.Tensor,
    a_pool: torch.Tensor,
    bt_pool: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Fused mixture of controls for tokens `u [N, d]`; returns `[N, d]` in the compute dtype."""
    return _SparseMixture.apply(u, a_pool, bt_pool, idx, coef, float(scale), compute_dtype(u))


def dense_mixture(
    u: torch.Tensor,
    a_pool: torch.Tensor,
    bt_pool: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Plain-autograd mixture over all E*r rows (same result as `sparse_mixture`)."""
    cdt = compute_dtype(u)
    n, d = u.shape
    e, r, _ = a_pool.shape
    with autocast_off(u.device.type):
        z = (u.to(cdt) @ a_pool.to(cdt).reshape(e * r, d).t()).view(n, e, r)
        weights = torch.zeros(n, e, dtype=cdt, device=u.device).scatter_add(1, idx, coef.to(cdt))
        out = (z * weights.unsqueeze(-1)).view(n, e * r) @ bt_pool.to(cdt).reshape(e * r, d)
        if scale != 1.0:
            out = out * scale
    return out
