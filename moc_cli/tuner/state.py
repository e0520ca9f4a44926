"""Shared MoC state: per-adapter parameters (expert pools, routers, alpha) and the per-forward runtime.

`MocAdapterState` is registered once on the tuner (`MocModel.moc_state[adapter]`), so its tensors
are saved once, as `base_model.moc_state.<param>` (the adapter name is stripped on save):

- `A.<site>`, `Bt.<site>`: expert pools `[E, r, d]` of the site type (`Bt_j = B_j^T`); the local
  control of layer l is expert l. `A` is Kaiming-uniform (a=sqrt(5)) or N(0, 0.02), `Bt` zero.
- `router.<key>`: `[R, E, d]` with R = 1 (`router_scope="global"`) or E (`"per_layer"`), N(0, 0.02);
  `router_bias.<key>`: `[R, E]` zeros when `router_bias=True`. Absent for the Control baseline.
- `alpha_logit`: `[S, E]` when `learnable_alpha=True`.

The tensors follow the base model's precision where it is float64 and are float32 otherwise;
routing (logits, softmax, gates) runs in float32, or in float64 when the hidden states are float64.

Layers never register this state (they would save it once per layer); they reach it through the
plain `MocRuntime` object, which also carries the per-forward context: tapped states, the shared
routing decision of a block, routing events for the balance loss and the routing statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MocConfig
from .functional import autocast_off, dense_mixture, sparse_is_faster_without_grad, sparse_mixture


class MocAdapterState(nn.Module):
    """All trainable tensors of one MoC adapter."""

    def __init__(self, config: MocConfig, num_layers: int, hidden_size: int) -> None:
        super().__init__()
        e, r, d = num_layers, config.r, hidden_size
        if config.routed and config.top_k > e - int(config.exclude_self):
            raise ValueError(
                f"MocConfig.top_k={config.top_k} is invalid for {e} controlled layers"
                f"{' with exclude_self=True' if config.exclude_self else ''}; allowed: 1..{e - int(config.exclude_self)}."
            )
        self.sites = config.site_types
        self.A = nn.ParameterDict({s: nn.Parameter(torch.empty(e, r, d)) for s in self.sites})
        self.Bt = nn.ParameterDict({s: nn.Parameter(torch.zeros(e, r, d)) for s in self.sites})
        n_routers = e if config.router_scope == "per_layer" else 1
        self.router = nn.ParameterDict(
            {k: nn.Parameter(torch.empty(n_routers, e, d)) for k in config.router_keys}
        )
        self.router_bias = nn.ParameterDict(
            {k: nn.Parameter(torch.zeros(n_routers, e)) for k in config.router_keys if config.router_bias}
        )
        if config.learnable_alpha and config.routed:
            logit = math.log(config.alpha / (1.0 - config.alpha))
            self.alpha_logit = nn.Parameter(torch.full((len(self.sites), e), logit))
        else:
            self.alpha_logit = None
        self.dropout = nn.Dropout(config.control_dropout) if config.control_dropout > 0 else nn.Identity()
        self.reset_parameters(config)

    @torch.no_grad()
    def reset_parameters(self, config: MocConfig) -> None:
        if next(self.parameters()).is_meta:
            return
        for pool in self.A.values():
            for expert in pool:
                if config.init_a == "kaiming":
                    nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
                else:
                    nn.init.normal_(expert, std=0.02)
        for pool in self.Bt.values():
            pool.zero_()
        for weight in self.router.values():
            nn.init.normal_(weight, std=0.02)
        for bias in self.router_bias.values():
            bias.zero_()


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


def _router_trains(state: MocAdapterState, key: str) -> bool:
    """Whether the router `key` of `state` has a parameter that requires grad."""
    bias = state.router_bias.get(key)
    return state.router[key].requires_grad or (bias is not None and bias.requires_grad)


class MocRuntime:
    """Per-model context shared (as a plain object) by the tuner and its layers."""

    def __init__(self) -> None:
        self.states: nn.ModuleDict | None = None  # the tuner's moc_state, set by the tuner
        self.configs: dict[str, MocConfig] = {}
        self.active: list[str] = []
        self.recording = False
        self.attention_mask: torch.Tensor | None = None
        self.taps: dict[tuple[int, str], torch.Tensor] = {}
        self.routes: dict[tuple[str, int], RouteDecision] = {}
        # (adapter, router key, layer pos, probs [N, E], top-1 [N], real-token mask [N] or None)
        self.events: list[tuple[str, str, int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.stats: dict[str, RoutingStats] = {}
        self.gradless_events = 0  # set by consume_events
        self.event_count = 0

    # ----------------------------------------------------------------------------------- forward context
    def begin(self, attention_mask: torch.Tensor | None) -> None:
        self.recording = True
        self.attention_mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        self.taps.clear()
        self.routes.clear()
        self.events.clear()

    def finish(self) -> list[tuple[str, str, int, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
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
    def control(self, site: str, pos: int, u: torch.Tensor) -> torch.Tensor | None:
        """Sum over the active adapters of their control for `u [..., d]` at (site, layer pos)."""
        total = None
        for adapter in self.active:
            if self.states is None or adapter not in self.states or adapter not in self.configs:
                continue
            c = self._adapter_control(adapter, site, pos, u)
            total = c if total is None else total + c
        return total

    def _adapter_control(self, adapter: str, site: str, pos: int, u: torch.Tensor) -> torch.Tensor:
        config = self.configs[adapter]
        state: MocAdapterState = self.states[adapter]  # type: ignore[index]
        lead = u.shape[:-1]
        u2 = u.reshape(-1, u.shape[-1])
        n = u2.shape[0]
        ud = state.dropout(u2)
        a_pool, bt_pool = state.A[site], state.Bt[site]
        if not config.routed:
            idx = torch.zeros(1, 1, dtype=torch.long, device=u.device).expand(n, 1)
            coef = torch.ones(1, 1, dtype=a_pool.dtype, device=u.device).expand(n, 1)
            out = sparse_mixture(
                ud, a_pool[pos : pos + 1], bt_pool[pos : pos + 1], idx, coef, config.control_scale
            )
            return out.view(*lead, -1)
        route = self._route(adapter, config, state, site, pos, u2, lead)
        if state.alpha_logit is not None:
            alpha = torch.sigmoid(state.alpha_logit[state.sites.index(site), pos]).reshape(1, 1)
        else:
            alpha = config.alpha
        parts_idx, parts_coef = [], []
        if isinstance(alpha, torch.Tensor) or alpha > 0.0:
            parts_idx.append(torch.full((n, 1), pos, dtype=torch.long, device=u.device))
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
                "sparse" if torch.is_grad_enabled() or sparse_is_faster_without_grad(idx, e, r) else "dense"
            )
        fn = sparse_mixture if mode == "sparse" else dense_mixture
        return fn(ud, a_pool, bt_pool, idx, coef, config.control_scale).view(*lead, -1)

    def _route(
        self,
        adapter: str,
        config: MocConfig,
        state: MocAdapterState,
        site: str,
        pos: int,
        u2: torch.Tensor,
        lead: torch.Size,
    ) -> RouteDecision:
        key = config.router_key(site)
        shared = key == "block" and len(state.sites) > 1
        if shared and site != state.sites[0]:
            cached = self.routes.pop((adapter, pos), None)
            if cached is not None:
                return cached
        weight = state.router[key]
        weight = weight[pos] if weight.shape[0] > 1 else weight[0]
        # routing runs in float32 for half-precision states and in float64 for float64 ones
        with autocast_off(u2.device.type):
            logits = F.linear(u2, weight.to(u2.dtype)).to(torch.promote_types(u2.dtype, torch.float32))
        if key in state.router_bias:
            bias = state.router_bias[key]
            logits = logits + (bias[pos] if bias.shape[0] > 1 else bias[0])
        if config.router_temperature != 1.0:
            logits = logits / config.router_temperature
        if config.exclude_self:
            logits = logits.index_fill(1, torch.tensor([pos], device=logits.device), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        gates, idx = probs.topk(config.top_k, dim=-1)
        if config.renormalize_topk:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        decision = RouteDecision(idx=idx, gates=gates)
        if shared:
            self.routes[(adapter, pos)] = decision
        if self.recording:
            mask = self.token_mask(lead, u2.device)
            self.events.append((adapter, key, pos, probs, idx[:, 0], mask))
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
        for adapter, key, pos, probs, top1, mask in events:
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
                counts[pos].scatter_add_(0, top1, valid.long())
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

    def summary(self, adapter: str) -> dict[str, Any]:
        stats = self.stats.get(adapter, RoutingStats())
        usage = {k: v.tolist() for k, v in stats.counts.items()}
        matrix = {}
        for k, v in stats.counts.items():
            rows = v.double()
            totals = rows.sum(1, keepdim=True)
            matrix[k] = torch.where(totals > 0, rows / totals.clamp_min(1), torch.zeros_like(rows)).tolist()
        entropy = None
        if (
            stats.entropy_sum is not None
            and stats.entropy_tokens is not None
            and float(stats.entropy_tokens) > 0
        ):
            entropy = float(stats.entropy_sum / stats.entropy_tokens)
        return {
            "balance_loss": None if stats.balance_loss is None else float(stats.balance_loss),
            "expert_usage": usage,
            "routing_entropy": entropy,
            "routing_matrix": matrix,
        }
