"""The per-model context the tuner and its layers share: `ControlContext`.

MoC's layers hold no parameters; at each site they ask the one `ControlContext` of their tuner for
the control `c(u)`. It knows every adapter's state and config and which adapters are active, and
it carries what one forward needs across layers:

- the states `u` that tap layers stash for the writer of the same layer (pre-LN sites),
- a block's routing decision, shared by its two sites under a `block` router,
- the routing events of the forward (probabilities, top-1 picks, the padding mask), which the
  tuner's forward hook folds into the balance loss and the accumulated `RoutingStats`,
- the `KernelPolicy` the expert mixture is computed under.

Routing (logits, softmax, gates) runs in float32, or in float64 when the hidden states are float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MocConfig
from .functional import (
    DEFAULT_KERNEL_POLICY,
    KernelPolicy,
    autocast_off,
    dense_mixture,
    sparse_is_faster_without_grad,
    sparse_mixture,
)
from .state import MocAdapterState

# (adapter, router key, layer index, probs [N, E], top-1 [N], real-token mask [N] or None)
RoutingEvent = tuple[str, str, int, torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass
class RouteDecision:
    """Routing of the tokens of one (layer, router) pair."""

    idx: torch.Tensor  # [N, k] chosen experts
    gates: torch.Tensor  # [N, k] gate weights (differentiable)


@dataclass
class RoutingStats:
    """Accumulated routing statistics of one adapter since the last reset."""

    counts: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> [L, E] top-1 picks
    entropy_sum: torch.Tensor | None = None
    entropy_tokens: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None

    def reset(self) -> None:
        self.counts.clear()
        self.entropy_sum = self.entropy_tokens = self.balance_loss = None

    def summary(self) -> dict[str, Any]:
        """`{"balance_loss": float | None (last forward), "expert_usage": {router key: [[top-1 picks
        per expert] per layer]}, "routing_entropy": float | None (mean over routed tokens),
        "routing_matrix": {router key: L x E fractions}}`, padding excluded. Router keys: `ffn`,
        `attn`, or `block` (the shared router of `both-shared` and of the `block` variant)."""
        usage = {k: v.tolist() for k, v in self.counts.items()}
        matrix = {}
        for k, v in self.counts.items():
            rows = v.double()
            totals = rows.sum(1, keepdim=True)
            matrix[k] = torch.where(totals > 0, rows / totals.clamp_min(1), torch.zeros_like(rows)).tolist()
        entropy = None
        if (
            self.entropy_sum is not None
            and self.entropy_tokens is not None
            and float(self.entropy_tokens) > 0
        ):
            entropy = float(self.entropy_sum / self.entropy_tokens)
        return {
            "balance_loss": None if self.balance_loss is None else float(self.balance_loss),
            "expert_usage": usage,
            "routing_entropy": entropy,
            "routing_matrix": matrix,
        }


def _router_trains(state: MocAdapterState, key: str) -> bool:
    """Whether the router `key` of `state` has a parameter that requires grad."""
    bias = state.router_bias.get(key)
    return state.router[key].requires_grad or (bias is not None and bias.requires_grad)


class ControlContext:
    """Computes each site's control for the active adapters and carries one forward's routing
    context (a plain object, not a module: nothing in it is saved)."""

    def __init__(self) -> None:
        self.states: nn.ModuleDict | None = None  # the tuner's moc_state, set by the tuner
        self.configs: dict[str, MocConfig] = {}
        self.active: list[str] = []
        self.recording = False
        self.attention_mask: torch.Tensor | None = None
        self.taps: dict[tuple[int, str], torch.Tensor] = {}
        self.routes: dict[tuple[str, int], RouteDecision] = {}
        self.events: list[RoutingEvent] = []
        self.stats: dict[str, RoutingStats] = {}
        self.kernel_policy: KernelPolicy = DEFAULT_KERNEL_POLICY
        self.gradless_events = 0  # set by consume_events
        self.event_count = 0

    # ----------------------------------------------------------------------------------- forward context
    def begin(self, attention_mask: torch.Tensor | None) -> None:
        self.recording = True
        self.attention_mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        self.taps.clear()
        self.routes.clear()
        self.events.clear()

    def finish(self) -> list[RoutingEvent]:
        events = list(self.events)
        self.recording = False
        self.attention_mask = None
        self.taps.clear()
        self.routes.clear()
        self.events.clear()
        return events

    def token_mask(self, lead_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
        """Flat boolean mask of real (non-padding) tokens for states of shape `[*lead_shape, d]`."""
        mask = self.attention_mask
        if mask is None or mask.dim() != 2 or len(lead_shape) != 2 or mask.shape[0] != lead_shape[0]:
            return None
        if mask.shape[1] != lead_shape[1]:
            if mask.shape[1] < lead_shape[1]:
                return None
            mask = mask[:, -lead_shape[1] :]  # cached decoding: the mask also covers past positions
        return mask.reshape(-1).to(device=device) != 0

    # ------------------------------------------------------------------------------------ computation
    def control(self, site: str, layer: int, u: torch.Tensor) -> torch.Tensor | None:
        """Sum over the active adapters of their control for `u [..., d]` at (site, layer)."""
        total = None
        for adapter in self.active:
            if self.states is None or adapter not in self.states or adapter not in self.configs:
                continue
            c = self._adapter_control(adapter, site, layer, u)
            total = c if total is None else total + c
        return total

    def _adapter_control(self, adapter: str, site: str, layer: int, u: torch.Tensor) -> torch.Tensor:
        config = self.configs[adapter]
        state: MocAdapterState = self.states[adapter]  # type: ignore[index]
        lead = u.shape[:-1]
        u2 = u.reshape(-1, u.shape[-1])
        n = u2.shape[0]
        ud = state.dropout(u2)
        a_pool, bt_pool = state.A[site], state.Bt[site]
        policy = self.kernel_policy
        if not config.routed:
            idx = torch.zeros(1, 1, dtype=torch.long, device=u.device).expand(n, 1)
            coef = torch.ones(1, 1, dtype=a_pool.dtype, device=u.device).expand(n, 1)
            out = sparse_mixture(
                ud,
                a_pool[layer : layer + 1],
                bt_pool[layer : layer + 1],
                idx,
                coef,
                config.control_scale,
                policy,
            )
            return out.view(*lead, -1)
        route = self._route(adapter, config, state, site, layer, u2, lead)
        if state.alpha_logit is not None:
            alpha = torch.sigmoid(state.alpha_logit[state.sites.index(site), layer]).reshape(1, 1)
        else:
            alpha = config.alpha
        parts_idx, parts_coef = [], []
        if isinstance(alpha, torch.Tensor) or alpha > 0.0:
            parts_idx.append(torch.full((n, 1), layer, dtype=torch.long, device=u.device))
            a_col = (
                alpha
                if isinstance(alpha, torch.Tensor)
                else route.gates.new_full((1, 1), alpha)  # a fill on the device, not a host copy
            )
            parts_coef.append(a_col.to(route.gates.dtype).expand(n, 1))
        parts_idx.append(route.idx)
        parts_coef.append(route.gates * (1.0 - alpha))
        idx = torch.cat(parts_idx, dim=1) if len(parts_idx) > 1 else parts_idx[0]
        coef = torch.cat(parts_coef, dim=1) if len(parts_coef) > 1 else parts_coef[0]
        mode = config.expert_compute
        if mode == "auto":
            e, r, _ = a_pool.shape
            mode = (
                "sparse"
                if torch.is_grad_enabled() or sparse_is_faster_without_grad(idx, e, r, policy)
                else "dense"
            )
        if mode == "sparse":
            out = sparse_mixture(ud, a_pool, bt_pool, idx, coef, config.control_scale, policy)
        else:
            out = dense_mixture(ud, a_pool, bt_pool, idx, coef, config.control_scale)
        return out.view(*lead, -1)

    def _route(
        self,
        adapter: str,
        config: MocConfig,
        state: MocAdapterState,
        site: str,
        layer: int,
        u2: torch.Tensor,
        lead: torch.Size,
    ) -> RouteDecision:
        key = config.router_key(site)
        shared = key == "block" and len(state.sites) > 1
        if shared and site != state.sites[0]:
            cached = self.routes.pop((adapter, layer), None)
            if cached is not None:
                return cached
        weight = state.router[key]
        weight = weight[layer] if weight.shape[0] > 1 else weight[0]
        # routing runs in float32 for half-precision states and in float64 for float64 ones
        with autocast_off(u2.device.type):
            logits = F.linear(u2, weight.to(u2.dtype)).to(torch.promote_types(u2.dtype, torch.float32))
        if key in state.router_bias:
            bias = state.router_bias[key]
            logits = logits + (bias[layer] if bias.shape[0] > 1 else bias[0])
        if config.router_temperature != 1.0:
            logits = logits / config.router_temperature
        if config.exclude_self:
            logits = logits.index_fill(1, torch.tensor([layer], device=logits.device), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        gates, idx = probs.topk(config.top_k, dim=-1)
        if config.renormalize_topk:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        decision = RouteDecision(idx=idx, gates=gates)
        if shared:
            self.routes[(adapter, layer)] = decision
        if self.recording:
            mask = self.token_mask(lead, u2.device)
            self.events.append((adapter, key, layer, probs, idx[:, 0], mask))
        return decision

    # ------------------------------------------------------------------------------------ statistics
    def consume_events(self) -> dict[str, torch.Tensor]:
        """Fold this forward's routing events into the statistics; return the balance loss per adapter.

        Also counts, in `gradless_events`, the events whose probabilities carry no gradient although
        grad mode is on and their router is trainable (what reentrant checkpointing produces).
        """
        events = self.finish()
        self.gradless_events = 0
        self.event_count = len(events)
        per_adapter: dict[str, list[torch.Tensor]] = {}
        for adapter, key, layer, probs, top1, mask in events:
            config = self.configs.get(adapter)
            state = self.states[adapter] if self.states is not None and adapter in self.states else None
            if config is None or state is None:
                continue
            if torch.is_grad_enabled() and not probs.requires_grad and _router_trains(state, key):
                self.gradless_events += 1
            e = probs.shape[-1]
            # Switch normalisation over the experts a token may pick: with exclude_self the layer's
            # own expert is masked out, so uniform routing over the E - 1 others gives exactly 1
            allowed = e - 1 if config.exclude_self else e
            valid = mask.to(probs.dtype) if mask is not None else torch.ones_like(probs[:, 0])
            n_valid = valid.sum().clamp_min(1.0)
            one_hot = torch.zeros_like(probs).scatter_(1, top1.unsqueeze(1), 1.0)
            frac = (one_hot * valid.unsqueeze(1)).sum(0) / n_valid
            mean_p = (probs * valid.unsqueeze(1)).sum(0) / n_valid
            per_adapter.setdefault(adapter, []).append(allowed * (frac.detach() * mean_p).sum())
            with torch.no_grad():
                stats = self.stats.setdefault(adapter, RoutingStats())
                n_layers = len(next(iter(state.A.values())))
                counts = stats.counts.get(key)
                if counts is None:
                    counts = stats.counts[key] = torch.zeros(
                        n_layers, e, dtype=torch.long, device=probs.device
                    )
                counts[layer].scatter_add_(0, top1, valid.long())
                ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
                ent_sum = (ent * valid).sum()
                stats.entropy_sum = ent_sum if stats.entropy_sum is None else stats.entropy_sum + ent_sum
                stats.entropy_tokens = (
                    n_valid if stats.entropy_tokens is None else stats.entropy_tokens + n_valid
                )
        losses = {}
        for adapter, terms in per_adapter.items():
            loss = torch.stack(terms).mean()
            self.stats.setdefault(adapter, RoutingStats()).balance_loss = loss.detach()
            losses[adapter] = loss
        return losses
