"""`MolexLayer`: wraps one transformer layer and mixes in router-chosen other (frozen) layers."""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import MolexConfig

# Keyword arguments that carry a KV cache. An expert layer must not write its keys/values into the cache
# slot of its own index while it stands in for another layer, so experts run without a cache.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _slice_rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """Select batch rows of every tensor that carries the batch dimension (dim >= 2, size(0) == batch).

    1-D tensors (e.g. `cache_position`) and broadcast tensors (size(0) == 1) are passed through unchanged.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.size(0) == batch:
            return value[rows]
        return value
    if isinstance(value, tuple):
        return tuple(_slice_rows(v, rows, batch) for v in value)
    if isinstance(value, list):
        return [_slice_rows(v, rows, batch) for v in value]
    return value


class MolexLayer(nn.Module, BaseTunerLayer):
    """`out = alpha * Layer_l(u) + (1 - alpha) * sum_{j in TopK} g_j * Layer_j(u)`.

    The sibling layers are reached through a plain tuple reference to the parent `ModuleList` (never
    registered as submodules here, so their weights are not saved twice); an expert is always called as
    its unwrapped base layer, so it does not mix in further layers itself.
    """

    adapter_layer_names = ("molex_router",)
    other_param_names = ("molex_alpha", "molex_top_k", "molex_temperature", "molex_routing")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: MolexConfig,
        *,
        hidden_size: int,
        siblings: nn.ModuleList,
        index: int,
        shared_state: dict[str, Any],
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.hidden_size = int(hidden_size)
        self.molex_index = int(index)
        self.num_experts = len(siblings)
        # A tuple is not an nn.Module attribute: no second registration of the sibling layers.
        self._molex_links = (siblings, shared_state)
        self.molex_router = nn.ModuleDict({})
        self.molex_alpha: dict[str, float] = {}
        self.molex_top_k: dict[str, int] = {}
        self.molex_temperature: dict[str, float] = {}
        self.molex_routing: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def __getattr__(self, name: str) -> Any:
        # Decoder loops read attributes off their layers (e.g. `attention_type`): delegate to the block.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def update_layer(self, adapter_name: str, config: MolexConfig) -> None:
        if config.top_k > self.num_experts:
            raise ValueError(
                f"MolexConfig.top_k={config.top_k} exceeds the number of layers ({self.num_experts}); "
                f"set top_k <= {self.num_experts}."
            )
        router = nn.Linear(self.hidden_size, self.num_experts, bias=False)
        # Small random init: a zero router would send every sequence to expert 0 at step 0.
        if router.weight.device.type != "meta":
            nn.init.normal_(router.weight, mean=0.0, std=0.02)
        device = next((p.device for p in self.base_layer.parameters() if p.device.type != "meta"), None)
        if device is not None and router.weight.device.type != "meta":
            router.to(device)
        self.molex_router[adapter_name] = router
        self.molex_alpha[adapter_name] = float(config.alpha)
        self.molex_top_k[adapter_name] = int(config.top_k)
        self.molex_temperature[adapter_name] = float(config.router_temperature)
        self.molex_routing[adapter_name] = str(config.routing)
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "MoLEx cannot be merged: its output mixes whole layers chosen per input. "
            "Use `unload()` for the base model, or save the adapter and reload it with `import moc_cli`."
        )

    def unmerge(self) -> None:
        return None

    def _expert(self, j: int) -> nn.Module:
        siblings, _ = self._molex_links
        layer = siblings[j]
        return layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output = self.base_layer(hidden_states, *args, **kwargs)
        if self.disable_adapters:
            return output
        active = [name for name in self.active_adapters if name in self.molex_router]
        if not active:
            return output
        if len(active) > 1:
            raise ValueError(f"MoLEx supports one active adapter at a time, got {active}.")
        name = active[0]
        alpha = self.molex_alpha[name]
        if alpha == 1.0:
            # Exactly the base layer: no expert forward, no router use.
            return output
        mixed = self._mix(name, hidden_states, _first(output), args, kwargs)
        if isinstance(output, tuple):
            return (mixed, *output[1:])
        return mixed

    def _routing_probs(self, name: str, hidden_states: torch.Tensor) -> torch.Tensor:
        router = self.molex_router[name]
        _, shared_state = self._molex_links
        x = hidden_states.to(router.weight.dtype)
        if self.molex_routing[name] == "token":
            logits = router(x)  # (B, T, E)
        else:
            mask = shared_state.get("attention_mask")
            if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(hidden_states.shape[:2]):
                m = mask.to(x.dtype).unsqueeze(-1)
                pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
            else:
                pooled = x.mean(1)
            logits = router(pooled)  # (B, E)
        return torch.softmax(logits / self.molex_temperature[name], dim=-1)

    def _mix(
        self,
        name: str,
        hidden_states: torch.Tensor,
        own: torch.Tensor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        alpha = self.molex_alpha[name]
        probs = self._routing_probs(name, hidden_states)
        # Gate = softmax probability of the chosen layer, not renormalised: with top_k = 1 the router
        # then receives gradient from the task loss (Switch-Transformer style).
        gates, index = probs.topk(self.molex_top_k[name], dim=-1)
        batch = hidden_states.size(0)
        expert_kwargs = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items()}
        if "use_cache" in expert_kwargs:
            expert_kwargs["use_cache"] = False
        mixture = torch.zeros_like(own)
        for j in torch.unique(index).tolist():
            chosen = index == j
            weight = (gates * chosen).sum(-1)  # (B,) or (B, T)
            rows = chosen.reshape(batch, -1).any(-1)
            weight = weight[:, None, None] if weight.dim() == 1 else weight.unsqueeze(-1)
            expert = self._expert(j)
            if bool(rows.all()):
                out = _first(expert(hidden_states, *args, **expert_kwargs))
                mixture = mixture + weight.to(out.dtype) * out
            else:
                sub_args = _slice_rows(args, rows, batch)
                sub_kwargs = {k: _slice_rows(v, rows, batch) for k, v in expert_kwargs.items()}
                out = _first(expert(hidden_states[rows], *sub_args, **sub_kwargs))
                contribution = weight[rows].to(out.dtype) * out
                mixture = mixture.index_add(0, rows.nonzero().squeeze(1), contribution)
        return alpha * own + (1.0 - alpha) * mixture
