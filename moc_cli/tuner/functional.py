"""Expert mixture kernels of MoC.

Every site computes, per token n,

    c_n = s * sum_m coef[n, m] * Bt[idx[n, m]]^T-applied (A[idx[n, m]] u_n)

with expert pools `A, Bt` of shape `[E, r, d]` (`Bt_j = B_j^T`), `idx` the `m` experts a token
uses (its local control first, then its top-k picks) and `coef` their weights (alpha, then
(1 - alpha) * gates). Control is the special case of one expert with coefficient 1.

Two implementations:

- `sparse_mixture` (custom autograd function) saves only `u` (already saved by the frozen
  sub-block), the chosen r-wide projections `z_sel [N, m, r]`, `idx` and `coef`: about 2r + 2m
  numbers per token per site, plus, for wide pools, the expert layout's index tensors (a few
  integers per token); the backward recomputes every other temporary. How it computes depends on
  the pool width E*r:
  - narrow pools (E*r < `KernelPolicy.grouped_min_width`, e.g. MiniLM's 6 layers at r=16): every token is
    projected through all E*r rows of `A` at once and the chosen r-wide slices are gathered; the
    work grows with E, which is cheap at this width.
  - wide pools (e.g. SmolLM2's 30 layers): a column where every token uses one expert (the local
    control) is a plain matmul; routed assignments are sorted by expert (one gather of `u`), each
    expert multiplies its contiguous segment (one `torch._grouped_mm` for all of them where the
    op takes the operands, else a loop), and one scatter-add puts the results into their tokens'
    rows. The work follows the chosen experts, not E, however unbalanced the routing. (Padding
    the segments to a common size for one batched `bmm` was tried: with the long-tailed routing of
    untrained routers, where a few experts take most tokens, SmolLM2's 4x128 training step took
    1.11-1.12x Control's time in paired steps, against 1.07-1.08x with segments.)
- `dense_mixture`: the all-rows projection in plain autograd; it stores the `[N, E*r]` projection
  and mixed operand (2*E*r numbers per token), so it is only the default where nothing is stored
  (no grad mode).

Both keep the fp32 parameters and compute in the activation dtype: the autocast dtype when autocast
is on, else `u.dtype`. The original `u` is saved, never a cast copy.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
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


@dataclass(frozen=True)
class KernelPolicy:
    """When `sparse_mixture` computes routed columns per expert, and when `expert_compute="auto"`
    takes the sparse function without grad. Both produce the same numbers; the policy only picks the
    faster formulation for a pool width E*r, a token count and a device type.

    The defaults come from `benchmarks/kernels.py` (reports in `benchmarks/results/kernels*.md`):

    - `grouped_min_width`: on CPU the all-rows projection wins for MiniLM's pools (E=6, r=16: 96),
      the per-expert segments from about 160 (SmolLM2's E=30, r=16: 480).
    - `per_expert_device_types`: on a GPU (H200, bf16, 4096 tokens) the all-rows projection took
      0.5-0.6x the per-expert time at every pool up to E*r = 512: the GPU is idle during such small
      products, so the sort, the segment bookkeeping and the host reads of the per-expert path cost
      more than the E*r-wide products save. Both paths save the same r-wide projections.
    - `sparse_inference_*`: under no grad nothing is saved, so "auto" takes the faster function. On
      CPU the per-expert segments take 0.3-0.6x the dense time for SmolLM2's pools at 4x128 and
      16x128 tokens and 0.76x for BERT-base's (E*r = 192, 16x128); dense wins for MiniLM's narrow
      pool and for decoding-sized inputs (a few tokens spread over 30 experts). On a GPU dense took
      0.5-0.8x the sparse time at every measured shape, so "auto" runs dense there.

    Benchmarks compare formulations by passing another policy, e.g.
    `KernelPolicy(grouped_min_width=math.inf)` for the all-rows projection everywhere.
    """

    grouped_min_width: float = 160
    per_expert_device_types: tuple[str, ...] = ("cpu",)
    sparse_inference_min_width: float = 160
    sparse_inference_min_tokens_per_expert: int = 4

    def per_expert(self, device_type: str, e: int, r: int) -> bool:
        """Whether routed columns of a pool of E experts of rank r go per expert on this device type."""
        return e * r >= self.grouped_min_width and device_type in self.per_expert_device_types

    def sparse_without_grad(self, device_type: str, tokens: int, e: int, r: int) -> bool:
        """The no-grad choice of `expert_compute="auto"` for `tokens` tokens over E experts of rank r
        (the kernel benchmark's reports print it per measured shape)."""
        return (
            device_type == "cpu"
            and e * r >= self.sparse_inference_min_width
            and tokens >= self.sparse_inference_min_tokens_per_expert * e
        )


DEFAULT_KERNEL_POLICY = KernelPolicy()


def _fits_grouped_mm(mat: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes this operand: a matrix (or stack) of a dtype the op runs
    on this device (`grouped_mm_runs`), at a 16-byte aligned address, one of its last two dims
    contiguous and the other's stride a multiple of 16 bytes (so not r=2 in float32 or d=100 in
    bfloat16)."""
    if mat.dtype not in (torch.float32, torch.bfloat16, torch.float16) or mat.data_ptr() % 16:
        return False
    align = 16 // mat.element_size()
    rows, cols = mat.stride(-2), mat.stride(-1)
    aligned = (cols == 1 and rows % align == 0) or (rows == 1 and cols % align == 0)
    return aligned and grouped_mm_runs(mat.device, mat.dtype)


_GROUPED_MM_RUNS: dict[tuple[str, int | None, torch.dtype], bool] = {}


def grouped_mm_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the private `torch._grouped_mm` runs for `dtype` on `device`, asked once per device
    and dtype with two tiny products (both shapes the kernel uses) and remembered.

    Which dtypes it takes differs by device and release (CPU takes float32; CUDA builds have taken
    bfloat16 only on some GPUs), so the op is asked instead of a table kept here going stale; where
    it refuses, the per-expert loop computes the same products.
    """
    key = (device.type, device.index, dtype)
    if key not in _GROUPED_MM_RUNS:
        runs = hasattr(torch, "_grouped_mm") and device.type not in ("meta",)
        if runs:
            try:
                x = torch.ones(16, 16, dtype=dtype, device=device)
                w = torch.ones(2, 16, 16, dtype=dtype, device=device)
                offs = torch.tensor([8, 16], dtype=torch.int32, device=device)
                torch._grouped_mm(x, w, offs=offs)  # [M, i] x [E, i, o]: the segment products
                torch._grouped_mm(x.t(), x, offs=offs)  # [i, M] x [M, o]: the weight gradients
            except (RuntimeError, NotImplementedError, TypeError):
                runs = False
        _GROUPED_MM_RUNS[key] = runs
    return _GROUPED_MM_RUNS[key]


def sparse_is_faster_without_grad(
    idx: torch.Tensor, e: int, r: int, policy: KernelPolicy = DEFAULT_KERNEL_POLICY
) -> bool:
    """Whether `sparse_mixture` beats `dense_mixture` for a no-grad forward of these assignments."""
    return _may_read_values(idx) and policy.sparse_without_grad(idx.device.type, idx.shape[0], e, r)


def _may_read_values(idx: torch.Tensor) -> bool:
    """Whether the kernel may branch on index values: not on the meta device (memory estimates,
    no values), nor while tracing or compiling (ONNX export, torch.compile), where a branch taken
    for one input would be baked into the graph; those take the all-rows path, pure tensor ops."""
    return not (idx.device.type == "meta" or torch.jit.is_tracing() or torch.compiler.is_compiling())


def _fixed_experts(idx: torch.Tensor) -> list[int | None]:
    """Per column of `idx`: the expert when every token uses the same one, else None."""
    fixed: list[int | None] = []
    for j in range(idx.shape[1]):
        col = idx[:, j]
        same = col.numel() > 0 and (col.stride(0) == 0 or bool((col == col[0]).all()))
        fixed.append(int(col[0]) if same else None)
    return fixed


class _Segments:
    """Assignments `[N, k]` sorted by expert: expert j owns sorted positions `[start_j, end_j)`.

    With `expert` given (k = 1, every token uses that expert) the sorted order is the token order,
    so gathers and scatters are skipped.
    """

    def __init__(self, idx: torch.Tensor, e: int, expert: int | None = None) -> None:
        self.n, self.k = idx.shape
        self.order = self.rows = self.inverse = self.offsets = None
        if expert is not None:
            self.spans = [(expert, 0, self.n)]
            return
        flat = idx.reshape(-1)
        self.order = torch.argsort(flat, stable=True)
        self.rows = torch.div(self.order, self.k, rounding_mode="floor")  # token of each sorted assignment
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(flat.numel(), device=idx.device)
        cumulative = torch.cumsum(torch.bincount(flat, minlength=e), 0)
        self.offsets = cumulative.to(torch.int32)  # segment ends of every expert, empty ones included
        ends = cumulative.tolist()
        self.spans = [
            (j, start, end)
            for j, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True))
            if end > start
        ]

    def index_tensors(self) -> list[torch.Tensor]:
        """The index tensors the layout holds (kept for the backward, so they count as saved)."""
        return [t for t in (self.order, self.rows, self.inverse, self.offsets) if t is not None]

    def gather(self, per_token: torch.Tensor) -> torch.Tensor:
        """`[N, w]` -> `[M, w]` in sorted order (each token once per assignment)."""
        return per_token if self.rows is None else per_token.index_select(0, self.rows)

    def sort(self, per_assignment: torch.Tensor) -> torch.Tensor:
        """`[N, k, w]` in token order -> `[M, w]` in sorted order."""
        flat = per_assignment.reshape(self.n * self.k, -1)
        return flat if self.order is None else flat.index_select(0, self.order)

    def unsort(self, per_sorted: torch.Tensor) -> torch.Tensor:
        """`[M, w]` in sorted order -> `[N, k, w]` in token order."""
        flat = per_sorted if self.inverse is None else per_sorted.index_select(0, self.inverse)
        return flat.view(self.n, self.k, -1)

    def add_to_tokens(self, per_sorted: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor:
        """Adds sorted rows `[M, w]` into their tokens' rows of `total [N, w]` (None: zeros), in
        place: one scatter instead of an unsort, a sum over k and an add, each a pass over `[N, w]`.
        `total` and `per_sorted` must be the caller's own buffers."""
        if self.rows is None:  # one column in token order
            return per_sorted if total is None else total.add_(per_sorted)
        if total is None:
            total = per_sorted.new_zeros(self.n, per_sorted.shape[1])
        return total.index_add_(0, self.rows, per_sorted)

    def _grouped(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether one `torch._grouped_mm(a, b)` replaces the loop over experts: routed segments
        and operands that op takes. On CPU it saves the loop's per-expert Python, slicing and
        launches; it is a private op, so the loop stays as the fallback."""
        return (
            self.offsets is not None
            and hasattr(torch, "_grouped_mm")
            and _fits_grouped_mm(a)
            and _fits_grouped_mm(b)
        )

    def matmul(self, x: torch.Tensor, weights: torch.Tensor, transpose: bool) -> torch.Tensor:
        """Each expert's segment of `x [M, i]` times its `weights[j]` (`[i, o]`, or `[o, i]` transposed)."""
        w = weights.transpose(1, 2) if transpose else weights
        if self._grouped(x, w):
            return torch._grouped_mm(x, w, offs=self.offsets)
        out = x.new_empty(x.shape[0], w.shape[2])
        for j, start, end in self.spans:
            torch.mm(x[start:end], w[j], out=out[start:end])
        return out

    def add_outer(self, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor) -> None:
        """Per expert, `grad[j] += x[segment]^T @ y[segment]` (a weight gradient `[E, i, o]`)."""
        if self._grouped(x.t(), y):
            grad += torch._grouped_mm(x.t(), y, offs=self.offsets)
            return
        for j, start, end in self.spans:
            grad[j].addmm_(x[start:end].t(), y[start:end])


def _layouts(
    idx: torch.Tensor, e: int, r: int, policy: KernelPolicy
) -> list[tuple[list[int], _Segments | None]]:
    """Groups of columns of `idx` computed together, each with its expert segments (None: the
    all-rows projection).

    Narrow pools, GPUs (`KernelPolicy.per_expert_device_types`), no tokens, and inputs whose values may not be
    read, are one all-rows group. Wide pools on the CPU give
    each column where every token uses one expert (the local control) a group of its own, a plain
    matmul, and sort the routed columns together by expert.
    """
    n, m = idx.shape
    per_expert = policy.per_expert(idx.device.type, e, r)
    # no tokens (an empty batch or shard): nothing to sort, and the all-rows path handles N = 0
    if not per_expert or n == 0 or not _may_read_values(idx):
        return [(list(range(m)), None)]
    fixed = _fixed_experts(idx)
    layouts = [
        ([j], _Segments(idx[:, j : j + 1], e, expert)) for j, expert in enumerate(fixed) if expert is not None
    ]
    routed = [j for j, expert in enumerate(fixed) if expert is None]
    if routed:
        layouts.append((routed, _Segments(idx[:, routed], e)))
    return layouts


def _span(cols: list[int]) -> slice | list[int]:
    """Columns as a slice when contiguous (a view, no indexing kernel), else the list."""
    return slice(cols[0], cols[-1] + 1) if cols == list(range(cols[0], cols[-1] + 1)) else cols


def _columns(x: torch.Tensor, cols: list[int]) -> torch.Tensor:
    return x if len(cols) == x.shape[1] else x[:, _span(cols)]


def _group_forward(
    u: torch.Tensor,
    a: torch.Tensor,
    bt: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    seg: _Segments | None,
    out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`out` plus the output `[N, d]` of one column group, and the group's chosen projections
    `[N, k, r]` (compute dtype)."""
    if seg is not None:
        z = seg.matmul(seg.gather(u), a, transpose=True)  # [M, r]
        weighted = z * seg.sort(coef.unsqueeze(-1))
        return seg.add_to_tokens(seg.matmul(weighted, bt, transpose=False), out), seg.unsort(z)
    n, k = idx.shape
    e, r, _ = a.shape
    gather_idx = idx.unsqueeze(-1).expand(n, k, r)
    z = (u @ a.reshape(e * r, -1).t()).view(n, e, r).gather(1, gather_idx)
    mixed = torch.zeros(n, e, r, dtype=u.dtype, device=u.device)
    mixed.scatter_add_(1, gather_idx, z * coef.unsqueeze(-1))
    # out of place: this is the path the ONNX exporter traces (see `_SparseMixture.forward`)
    return _add(out, mixed.view(n, e * r) @ bt.reshape(e * r, -1)), z


def _group_backward(
    go: torch.Tensor,
    u: torch.Tensor,
    a: torch.Tensor,
    bt: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    z: torch.Tensor,
    seg: _Segments | None,
    grad_a: torch.Tensor | None,
    grad_b: torch.Tensor | None,
    grad_u: torch.Tensor | None,
    need: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (u plus this group's part, coef) of one column group given dL/d(out) `go`; adds
    into `grad_a`, `grad_b`."""
    need_u, need_coef = need
    grad_coef = None
    if seg is not None:
        go_s, z_s, c_s = seg.gather(go), seg.sort(z), seg.sort(coef.unsqueeze(-1))
        if grad_b is not None:
            seg.add_outer(z_s * c_s, go_s, grad_b)
        if need_u or need_coef or grad_a is not None:
            h = seg.matmul(go_s, bt, transpose=True)  # dL/d(weighted z), sorted
            if need_coef:
                grad_coef = seg.unsort((h * z_s).sum(-1, keepdim=True)).squeeze(-1)
            dz = h * c_s
            if grad_a is not None:
                seg.add_outer(dz, seg.gather(u), grad_a)
            if need_u:
                grad_u = seg.add_to_tokens(seg.matmul(dz, a, transpose=False), grad_u)
        return grad_u, grad_coef
    n, k = idx.shape
    e, r, d = a.shape
    gather_idx = idx.unsqueeze(-1).expand(n, k, r)
    if grad_b is not None:
        mixed = torch.zeros(n, e, r, dtype=go.dtype, device=go.device)
        mixed.scatter_add_(1, gather_idx, z * coef.unsqueeze(-1))
        grad_b += (mixed.view(n, e * r).t() @ go).view(e, r, d)
    if need_u or need_coef or grad_a is not None:
        h = (go @ bt.reshape(e * r, d).t()).view(n, e, r).gather(1, gather_idx)
        if need_coef:
            grad_coef = (h * z).sum(-1)
        dz = torch.zeros(n, e, r, dtype=go.dtype, device=go.device)
        dz.scatter_add_(1, gather_idx, h * coef.unsqueeze(-1))
        if grad_a is not None:
            grad_a += (dz.view(n, e * r).t() @ u).view(e, r, d)
        if need_u:
            grad_u = _add(grad_u, dz.view(n, e * r) @ a.reshape(e * r, d))
    return grad_u, grad_coef


def _scaled(coef: torch.Tensor, scale: float) -> torch.Tensor:
    """The coefficients times the site's scale: multiplying `[N, m]` coefficients instead of the
    `[N, d]` output (and its gradient) saves a pass over the widest tensor of the site."""
    return coef if scale == 1.0 else coef * scale


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
        policy: KernelPolicy,
    ) -> torch.Tensor:
        e, r, _ = a_pool.shape
        with autocast_off(u.device.type):
            u_c, a_c, bt_c, coef_c = u.to(cdt), a_pool.to(cdt), bt_pool.to(cdt), _scaled(coef.to(cdt), scale)
            # built out of place: the ONNX exporter traces this forward and mistranslates writes
            # into slices of an uninitialised buffer
            z_cols: dict[int, torch.Tensor] = {}
            out: torch.Tensor | None = None
            layouts = _layouts(idx, e, r, policy)
            for cols, seg in layouts:
                out, z = _group_forward(u_c, a_c, bt_c, _columns(idx, cols), _columns(coef_c, cols), seg, out)
                z_cols.update((j, z[:, i]) for i, j in enumerate(cols))
            z_sel = torch.stack([z_cols[j] for j in range(idx.shape[1])], dim=1)
            assert out is not None
        # indices are kept as int16 when they fit (E <= 32767): 2 instead of 8 bytes per entry
        # (an expanded constant index, as for Control, already costs nothing and stays as is)
        compact = e <= torch.iinfo(torch.int16).max and idx.stride(0) != 0
        small_idx = idx.to(torch.int16) if compact else idx
        # The backward reuses the expert layouts instead of sorting again; their index tensors go
        # through save_for_backward too, so that saved-bytes measurements count them.
        ctx.layouts = layouts
        held = [t for _, seg in layouts if seg is not None for t in seg.index_tensors()]
        ctx.save_for_backward(u, a_pool, bt_pool, small_idx, coef, z_sel, *held)
        ctx.scale = scale
        ctx.cdt = cdt
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        u, a_pool, bt_pool, idx, coef, z_sel = ctx.saved_tensors[:6]
        idx = idx.long()
        scale, cdt = ctx.scale, ctx.cdt
        need_u, need_a, need_b, _, need_coef = ctx.needs_input_grad[:5]
        with autocast_off(u.device.type):
            go = grad_out.to(cdt)
            u_c, a_c, bt_c, coef_c = u.to(cdt), a_pool.to(cdt), bt_pool.to(cdt), _scaled(coef.to(cdt), scale)
            grad_a = torch.zeros_like(a_c) if need_a else None
            grad_b = torch.zeros_like(bt_c) if need_b else None
            grad_coef = torch.empty_like(coef_c) if need_coef else None
            grad_u = None
            for cols, seg in ctx.layouts:
                grad_u, part_coef = _group_backward(
                    go,
                    u_c,
                    a_c,
                    bt_c,
                    _columns(idx, cols),
                    _columns(coef_c, cols),
                    _columns(z_sel, cols),
                    seg,
                    grad_a,
                    grad_b,
                    grad_u,
                    (need_u, need_coef),
                )
                if grad_coef is not None:
                    grad_coef[:, _span(cols)] = part_coef
            if grad_coef is not None:
                grad_coef = _scaled(grad_coef, scale)  # the groups' gradients are for coef * scale

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
            None,
        )


def sparse_mixture(
    u: torch.Tensor,
    a_pool: torch.Tensor,
    bt_pool: torch.Tensor,
    idx: torch.Tensor,
    coef: torch.Tensor,
    scale: float,
    policy: KernelPolicy = DEFAULT_KERNEL_POLICY,
) -> torch.Tensor:
    """Fused mixture of controls for tokens `u [N, d]`; returns `[N, d]` in the compute dtype.

    `policy` picks how the products are laid out (never what they compute)."""
    return _SparseMixture.apply(u, a_pool, bt_pool, idx, coef, float(scale), compute_dtype(u), policy)


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
        weights = torch.zeros(n, e, dtype=cdt, device=u.device).scatter_add(
            1, idx, _scaled(coef.to(cdt), scale)
        )
        return (z * weights.unsqueeze(-1)).view(n, e * r) @ bt_pool.to(cdt).reshape(e * r, d)
