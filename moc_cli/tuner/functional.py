"""Expert mixture kernels of MoC.

Every site computes, per token n,

    c_n = s * sum_m coef[n, m] * Bt[idx[n, m]]^T-applied (A[idx[n, m]] u_n)

with expert pools `A, Bt` of shape `[E, r, d]` (`Bt_j = B_j^T`), `idx` the `m` experts a token
uses (its local control first, then its top-k picks) and `coef` their weights (alpha, then
(1 - alpha) * gates). Control is the special case of one expert with coefficient 1.

Two implementations:

- `sparse_mixture` (custom autograd function) saves only `u` (already saved by the frozen
  sub-block), the chosen r-wide projections `z_sel [N, m, r]`, `idx` and `coef`: about 2r + 2m
  numbers per token per site; the backward recomputes every temporary. Columns of `idx` where all
  tokens use one expert (the local control) are plain matmuls. Routed columns are grouped per
  expert: tokens are sorted by expert into an `[E, c_max]` padded layout and both projections are
  one batched matmul each, so the work grows with the tokens' chosen experts, not with E. When the
  routing is so unbalanced that padding would exceed `PAD_LIMIT` times the routed assignments, the
  routed columns fall back to projecting every token through all E*r rows of `A` and gathering the
  chosen slices (work grows with E, temporaries stay E*r wide).
- `dense_mixture`: the all-rows projection in plain autograd; it stores the `[N, E*r]` projection
  and mixed operand (2*E*r numbers per token), so it is only the default where nothing is stored
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


# When the routed columns use the padded per-expert layout (else the all-rows projection), from
# kernel timings on CPU (N=2048 tokens, top-1, forward+backward, d 384-2048): the all-rows path wins
# up to E*r of about 128 (E=6..8 at r=16: 10.7 vs 18.6 ms at d=384, E=6), the padded one from about
# 192 (E=30, r=16, d=576: 39 vs 63 ms). A skewed routing makes the padded grid mostly padding:
# beyond PAD_LIMIT slots per routed assignment (balanced top-1 needs 1.1-1.4; a collapse onto one
# expert needs E) the all-rows path is used whatever the width.
PADDED_MIN_WIDTH = 160
PAD_LIMIT = 2.0


def _may_read_values(idx: torch.Tensor) -> bool:
    """Whether the kernel may branch on index values: not on the meta device (memory estimates,
    no values), nor while tracing or compiling (ONNX export, torch.compile), where a branch taken
    for one input would be baked into the graph; those take the all-rows path, pure tensor ops."""
    return not (idx.device.type == "meta" or torch.jit.is_tracing() or torch.compiler.is_compiling())


def _fixed_experts(idx: torch.Tensor) -> list[int | None]:
    """Per column of `idx`: the expert when every token uses the same one, else None."""
    if not _may_read_values(idx):
        return [None] * idx.shape[1]
    fixed: list[int | None] = []
    for j in range(idx.shape[1]):
        col = idx[:, j]
        same = col.numel() > 0 and (col.stride(0) == 0 or bool((col == col[0]).all()))
        fixed.append(int(col[0]) if same else None)
    return fixed


class _Padded:
    """Routed assignments `[N, k]` sorted per expert into an `[E, c_max]` grid of token slots.

    `rows[s]` is the token read by slot s (token 0 for padding, whose coefficient is 0 and whose
    results are never read back) and `slot[n * k + j]` the slot of token n's j-th routed expert.
    """

    def __init__(self, idx: torch.Tensor, e: int) -> None:
        n, k = idx.shape
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=e)
        self.c_max = int(counts.max()) if flat.numel() else 0
        self.e, self.n, self.k = e, n, k
        experts = flat[order]
        rank = torch.arange(flat.numel(), device=idx.device) - (torch.cumsum(counts, 0) - counts)[experts]
        self.slot = torch.empty_like(order)
        self.slot[order] = experts * self.c_max + rank
        self.rows = torch.zeros(e * self.c_max, dtype=torch.long, device=idx.device)
        self.rows[self.slot] = torch.arange(flat.numel(), device=idx.device) // k

    @classmethod
    def worth_it(cls, idx: torch.Tensor, e: int, r: int) -> _Padded | None:
        """The grid, if it beats the all-rows projection for this width and routing."""
        if e * r < PADDED_MIN_WIDTH or not _may_read_values(idx):
            return None
        grid = cls(idx, e)
        return grid if e * grid.c_max <= PAD_LIMIT * idx.numel() else None

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token `x [N, d]` -> per-slot `[E, c_max, d]`."""
        return x.index_select(0, self.rows).view(self.e, self.c_max, -1)

    def scatter(self, per_assignment: torch.Tensor) -> torch.Tensor:
        """Per-assignment `[N*k, w]` -> per-slot `[E, c_max, w]`, zero on padding."""
        grid = per_assignment.new_zeros(self.e * self.c_max, per_assignment.shape[-1])
        grid[self.slot] = per_assignment
        return grid.view(self.e, self.c_max, -1)

    def collect(self, per_slot: torch.Tensor) -> torch.Tensor:
        """Per-slot `[E, c_max, w]` -> per-assignment `[N, k, w]`."""
        return per_slot.reshape(self.e * self.c_max, -1).index_select(0, self.slot).view(self.n, self.k, -1)


def _routed_forward(
    u: torch.Tensor, a: torch.Tensor, bt: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output `[N, d]` and chosen projections `[N, k, r]` of the routed columns (compute dtype)."""
    n, k = idx.shape
    e, r, _ = a.shape
    grid = _Padded.worth_it(idx, e, r)
    if grid is not None:
        z_grid = torch.bmm(grid.spread(u), a.transpose(1, 2))  # [E, c_max, r]
        z = grid.collect(z_grid)
        weighted = grid.scatter((z * coef.unsqueeze(-1)).reshape(n * k, r))
        return grid.collect(torch.bmm(weighted, bt)).sum(1), z
    gather_idx = idx.unsqueeze(-1).expand(n, k, r)
    z = (u @ a.reshape(e * r, -1).t()).view(n, e, r).gather(1, gather_idx)
    mixed = torch.zeros(n, e, r, dtype=u.dtype, device=u.device)
    mixed.scatter_add_(1, gather_idx, z * coef.unsqueeze(-1))
    return mixed.view(n, e * r) @ bt.reshape(e * r, -1), z


def _routed_backward(
    go: torch.Tensor,
    u: torch.Tensor,
    a: torch.Tensor,
    bt: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    z: torch.Tensor,
    need: tuple[bool, bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (u, A, Bt, coef) of the routed columns, given dL/d(out) `go` (compute dtype)."""
    need_u, need_a, need_b, need_coef = need
    n, k = idx.shape
    e, r, d = a.shape
    grad_u = grad_a = grad_b = grad_coef = None
    grid = _Padded.worth_it(idx, e, r)
    if grid is not None:
        go_grid = grid.spread(go)
        if need_b:
            weighted = grid.scatter((z * coef.unsqueeze(-1)).reshape(n * k, r))
            grad_b = torch.bmm(weighted.transpose(1, 2), go_grid)
        if need_u or need_a or need_coef:
            h_grid = torch.bmm(go_grid, bt.transpose(1, 2))  # dL/d(weighted z) per slot
            h = grid.collect(h_grid)
            if need_coef:
                grad_coef = (h * z).sum(-1)
            dz_grid = grid.scatter((h * coef.unsqueeze(-1)).reshape(n * k, r))
            if need_a:
                grad_a = torch.bmm(dz_grid.transpose(1, 2), grid.spread(u))
            if need_u:
                grad_u = grid.collect(torch.bmm(dz_grid, a)).sum(1)
        return grad_u, grad_a, grad_b, grad_coef
    gather_idx = idx.unsqueeze(-1).expand(n, k, r)
    if need_b:
        mixed = torch.zeros(n, e, r, dtype=go.dtype, device=go.device)
        mixed.scatter_add_(1, gather_idx, z * coef.unsqueeze(-1))
        grad_b = (mixed.view(n, e * r).t() @ go).view(e, r, d)
    if need_u or need_a or need_coef:
        h = (go @ bt.reshape(e * r, d).t()).view(n, e, r).gather(1, gather_idx)
        if need_coef:
            grad_coef = (h * z).sum(-1)
        dz = torch.zeros(n, e, r, dtype=go.dtype, device=go.device)
        dz.scatter_add_(1, gather_idx, h * coef.unsqueeze(-1))
        if need_a:
            grad_a = (dz.view(n, e * r).t() @ u).view(e, r, d)
        if need_u:
            grad_u = dz.view(n, e * r) @ a.reshape(e * r, d)
    return grad_u, grad_a, grad_b, grad_coef


def _add(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    if part is None:
        return total
    return part if total is None else total + part


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
        e = a_pool.shape[0]
        m = idx.shape[1]
        fixed = _fixed_experts(idx)
        routed = [j for j, expert in enumerate(fixed) if expert is None]
        with autocast_off(u.device.type):
            u_c, a_c, bt_c, coef_c = u.to(cdt), a_pool.to(cdt), bt_pool.to(cdt), coef.to(cdt)
            # built out of place: the ONNX exporter traces this forward and mistranslates writes
            # into slices of an uninitialised buffer
            z_cols: dict[int, torch.Tensor] = {}
            out: torch.Tensor | None = None
            for j, expert in enumerate(fixed):
                if expert is not None:
                    z_cols[j] = u_c @ a_c[expert].t()
                    out = _add(out, (z_cols[j] * coef_c[:, j : j + 1]) @ bt_c[expert])
            if routed:
                part, z_routed = _routed_forward(u_c, a_c, bt_c, idx[:, routed], coef_c[:, routed])
                z_cols.update((j, z_routed[:, i]) for i, j in enumerate(routed))
                out = _add(out, part)
            z_sel = torch.stack([z_cols[j] for j in range(m)], dim=1)
            assert out is not None
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
        need_u, need_a, need_b, _, need_coef = ctx.needs_input_grad[:5]
        fixed = _fixed_experts(idx)
        routed = [j for j, expert in enumerate(fixed) if expert is None]
        grad_u = grad_a = grad_b = grad_coef = None
        with autocast_off(u.device.type):
            go = grad_out.to(cdt)
            if scale != 1.0:
                go = go * scale
            u_c, a_c, bt_c, coef_c = u.to(cdt), a_pool.to(cdt), bt_pool.to(cdt), coef.to(cdt)
            if need_a:
                grad_a = torch.zeros_like(a_c)
            if need_b:
                grad_b = torch.zeros_like(bt_c)
            if need_coef:
                grad_coef = torch.zeros_like(coef_c)
            for j, expert in enumerate(fixed):
                if expert is None:
                    continue
                z, c = z_sel[:, j], coef_c[:, j : j + 1]
                if need_b:
                    grad_b[expert] += (z * c).t() @ go
                if need_u or need_a or need_coef:
                    h = go @ bt_c[expert].t()
                    if need_coef:
                        grad_coef[:, j] = (h * z).sum(-1)
                    dz = h * c
                    if need_a:
                        grad_a[expert] += dz.t() @ u_c
                    if need_u:
                        grad_u = _add(grad_u, dz @ a_c[expert])
            if routed:
                need = (need_u, need_a, need_b, need_coef)
                parts = _routed_backward(
                    go, u_c, a_c, bt_c, idx[:, routed], coef_c[:, routed], z_sel[:, routed], need
                )
                grad_u = _add(grad_u, parts[0])
                if need_a:
                    grad_a += parts[1]
                if need_b:
                    grad_b += parts[2]
                if need_coef:
                    grad_coef[:, routed] = parts[3]

        def back(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
            return None if grad is None else grad.to(like.dtype)

        return (
            back(grad_u, u),
            back(grad_a, a_pool),
            back(grad_b, bt_pool),
            None,
            back(grad_coef, coef),
            None,
            None,
        )


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
