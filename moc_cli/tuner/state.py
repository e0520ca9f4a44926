"""The trainable tensors of one MoC adapter (`MocAdapterState`).

It is registered once on the tuner (`MocModel.moc_state[adapter]`), so its tensors are saved once,
as `base_model.moc_state.<param>` (the adapter name is stripped on save). With E the number of
controlled layers (each layer's own control is expert `l` of the pools), r the rank and d the width:

- `A.<site>`: `[E, r, d]`, the down projections, Kaiming-uniform (a=sqrt(5)) or N(0, 0.02).
- `Bt.<site>`: `[E, r, d]`, the up projections stored *transposed* (`Bt_j = B_j^T`, B_j being
  `[d, r]`), zero-initialised so training starts at the base model. Both pools share one layout,
  so expert j's rows are one contiguous `[r, d]` block in each, which the grouped products of
  `functional.py` index directly. The name is part of saved checkpoints and stays.
- `router.<key>`: `[R, E, d]` with R = 1 (`router_scope="global"`) or E (`"per_layer"`), N(0, 0.02);
  `router_bias.<key>`: `[R, E]` zeros when `router_bias=True`. Absent for the Control baseline.
- `alpha_logit`: `[S, E]` when `learnable_alpha=True`.

The tensors follow the base model's precision where it is float64 and are float32 otherwise.
Layers never register this state (they would save it once per layer): they reach it through the
tuner's `ControlContext` (`routing.py`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import MocConfig


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
