"""`MocModel`: the peft tuner of Mixture-of-Control.

Structure (modelled on peft's Shadow / VB-LoRA tuners, not copied):

- `_prepare_adapter_config` resolves a `Plan` from the architecture map (`architectures.py`);
  `_check_target_module_exists` matches exactly the plan's writer and tap modules, so the user's
  `target_modules` keeps its MoC meaning (which *layers* are controlled) and the saved config
  rebuilds the same placement on reload.
- The shared state (expert pools, routers, alpha) of each adapter is one `MocAdapterState` in the
  `moc_state` ModuleDict on the tuner, created lazily in `_create_and_replace` (the injection hooks
  do not run for `add_adapter` / `load_adapter`); under `low_cpu_mem_usage` it is created on the
  meta device and filled by peft's `load_state_dict(assign=True)`.
- Two hooks on the wrapped base model carry what a tuner-level `forward` override would miss
  (`PeftModel.forward` calls the base model directly for `task_type=None`): a forward pre-hook
  reads `attention_mask` (padding is excluded from the balance loss and the statistics) and opens
  the routing context; a forward hook folds the routing events into the statistics and, in training
  mode, adds `aux_loss_coef * balance_loss` to the loss: `outputs.loss`, or the first element of
  a `return_dict=False` tuple when labels were given (by keyword or by position). Under
  transformers' Trainer `num_items_in_batch` regime the term is weighted by the micro-batch's share
  of the items (`_accumulation_share`), so lambda does not grow with gradient accumulation or the
  process count. TRL's trainers call the model through a fused LM head (`fused_lm_head=True`) and
  build their loss from the per-token `log_probs` it returns, not from `loss`: there the term is
  also subtracted from the log-probability of every scored token (`label_mask`), so SFTTrainer's
  token-summed NLL carries it with the same per-token weight as Trainer's loss. A preference
  trainer compares those log-probabilities with a reference pass that has the adapter disabled,
  where such a term has no place: that pass raises `PREFERENCE_ERROR` while a balance loss is
  configured. Layers recomputed by activation checkpointing during backward run outside that
  context and record nothing. Reentrant checkpointing runs the first forward without grad, so the
  balance loss would carry no gradient to the router: a training forward that finds such routing
  decisions raises `REENTRANT_ERROR` (use `use_reentrant=False`, or `aux_loss_coef=0`).
- `get_peft_model` on a model that already holds MoC layers (the PeftModel, its modified base or
  its tuner) raises `SECOND_WRAP_ERROR`: the existing layers would keep computing with the first
  tuner's state, leaving the new adapter dead. `add_adapter` is the supported way.
- The state is float32 for float32 and half-precision bases, float64 for float64 ones.
- `set_adapter`, `delete_adapter` and `_cast_adapter_dtype` also handle the shared state, so
  `is_trainable=False` freezes the routers too; `merge_and_unload` raises (see `MERGE_ERROR`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .architectures import Plan, resolve_plan
from .config import MocConfig
from .functional import KernelPolicy
from .layer import MERGE_ERROR, MocLayer, MocSiteLayer, MocTapLayer
from .routing import ControlContext, RoutingStats
from .state import MocAdapterState

SECOND_WRAP_ERROR = (
    "This model already carries a MoC adapter: a second get_peft_model would add an adapter that the existing MoC "
    "layers never run. Add it to the PeftModel that holds the first one with `peft_model.add_adapter(name, "
    "MocConfig(...))` (then `set_adapter`), or call `unload()` first to start again from the plain base model."
)

REENTRANT_ERROR = (
    "MoC's load-balancing loss would reach the routers without gradient: {lost} of {total} routing decisions of "
    "this forward were computed without autograd, as reentrant activation checkpointing (use_reentrant=True) does "
    "in its first forward. Enable checkpointing with gradient_checkpointing_kwargs={{'use_reentrant': False}} "
    "(TrainingArguments: activation_checkpointing_kwargs={{'use_reentrant': False}}), or set "
    "MocConfig.aux_loss_coef=0 to train without the balance loss."
)

PREFERENCE_ERROR = (
    "MoC adds its load-balancing loss to the per-token log-probabilities of TRL's fused LM head, which is how "
    "SFTTrainer's loss receives it; this forward, in training mode with the MoC adapter disabled, is the reference "
    "pass of a preference trainer (DPO, KTO, ...), whose loss compares sequence log-probabilities with it, so the "
    "term would bias the reward by completion length. Train with MocConfig(aux_loss_coef=0.0): the routers then "
    "learn from the preference loss alone."
)


def _loss_shifts_labels(model: nn.Module) -> bool:
    """Whether the model's loss shifts labels by one (causal LM): Trainer's own rule for counting
    `num_items_in_batch` (`Trainer._loss_shifts_labels`), so that the shares of a step sum to 1."""
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    config = getattr(model, "config", None)
    return LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss and not getattr(
        config, "is_encoder_decoder", False
    )


def _is_low_precision(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16)


class MocModel(BaseTuner):
    """Mixture-of-Control tuner (`get_peft_model(model, MocConfig(...))` builds it)."""

    prefix: str = "moc_"
    tuner_layer_cls = MocLayer
    target_module_mapping: dict = {}
    uses_shared_state = True

    # ------------------------------------------------------------------------------------ setup
    def __init__(
        self,
        model: nn.Module,
        peft_config: MocConfig | dict[str, MocConfig],
        adapter_name: str,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        # Checked before BaseTuner.__init__, which would already write the new config into the
        # `peft_config` dict of a PeftModel passed in (a refused call must leave it as it was).
        self._refuse_foreign_moc(model)
        super().__init__(
            model, peft_config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict
        )

    def _refuse_foreign_moc(self, model: nn.Module) -> None:
        """Raise if `model` holds MoC layers of another tuner: they would keep computing with that
        tuner's state, so the adapter created here would be dead."""
        own = self.__dict__.get("_control_context")
        for module in model.modules():
            if (isinstance(module, MocModel) and module is not self) or (
                isinstance(module, MocLayer) and module._context is not own
            ):
                raise ValueError(SECOND_WRAP_ERROR)

    def _check_new_adapter_config(self, config: MocConfig) -> None:  # type: ignore[override]
        """Cross-adapter checks peft runs before injecting an adapter (also for `add_adapter` and
        `load_adapter`): no foreign MoC layers, one variant for all adapters of the model."""
        self._refuse_foreign_moc(self.model)
        name = next(n for n, c in self.peft_config.items() if c is config)
        plans: dict[str, Plan] = self.__dict__.get("_moc_plans", {})
        first = next((n for n in plans if n != name), None)
        if first is not None and self.peft_config[first].variant != config.variant:
            raise ValueError(
                f"MocConfig.variant={config.variant!r} of adapter '{name}' differs from the variant "
                f"{self.peft_config[first].variant!r} of adapter '{first}'; all MoC adapters of one model must use "
                "the same variant."
            )
        super()._check_new_adapter_config(config)

    def _ensure_context(self) -> ControlContext:
        # Created on first use: BaseTuner.__init__ injects adapters before our __init__ body runs.
        if "_control_context" not in self.__dict__:
            self.__dict__["_control_context"] = ControlContext()
            self.moc_state = nn.ModuleDict()
            self._moc_plans: dict[str, Plan] = {}
            self._moc_hook_handles: list[Any] = []
        context: ControlContext = self.__dict__["_control_context"]
        context.states = self.moc_state
        return context

    @property
    def control_context(self) -> ControlContext:
        """The context the MoC layers of this tuner compute their controls through."""
        return self._ensure_context()

    @property
    def kernel_policy(self) -> KernelPolicy:
        """How the expert mixtures are laid out (`functional.KernelPolicy`); never changes results."""
        return self.control_context.kernel_policy

    @kernel_policy.setter
    def kernel_policy(self, policy: KernelPolicy) -> None:
        self.control_context.kernel_policy = policy

    def _prepare_adapter_config(self, peft_config: MocConfig, model_config: dict) -> MocConfig:
        self._ensure_context()
        name = next(n for n, c in self.peft_config.items() if c is peft_config)
        self._moc_plans[name] = resolve_plan(self.model, peft_config)
        return peft_config

    def _plan_for(self, peft_config: MocConfig) -> Plan:
        for name, config in self.peft_config.items():
            if config is peft_config and name in self._moc_plans:
                return self._moc_plans[name]
        raise RuntimeError("MoC plan missing for this adapter config.")

    def _check_target_module_exists(self, peft_config: MocConfig, key: str) -> bool:  # type: ignore[override]
        return key in self._plan_for(peft_config).roles

    def _create_and_replace(
        self,
        peft_config: MocConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        context = self._ensure_context()
        plan = self._plan_for(peft_config)
        if adapter_name not in self.moc_state:
            self._create_state(adapter_name, peft_config, plan)
        context.configs[adapter_name] = peft_config
        self._ensure_hooks()
        if isinstance(target, MocLayer):
            target.update_layer(adapter_name)
            return
        role = plan.roles[current_key]
        if role.kind == "tap":
            new_module: MocLayer = MocTapLayer(target, context, role.site, role.layer)
        else:
            new_module = MocSiteLayer(target, context, role.site, role.layer, role.arg)
        new_module.update_layer(adapter_name)
        new_module.set_adapter(self.active_adapters)
        setattr(parent, target_name, new_module)

    def _create_state(self, adapter_name: str, config: MocConfig, plan: Plan) -> None:
        layer0 = self.model.get_submodule(plan.layer_names[0])
        param = next(layer0.parameters(), None)
        state = MocAdapterState(config, plan.num_layers, plan.hidden_size)
        if param is not None and not param.is_meta and not next(state.parameters()).is_meta:
            # float32 state for half-precision bases (kept so by _cast_adapter_dtype), float64 for float64 ones
            dtype = torch.promote_types(param.dtype, torch.float32) if param.is_floating_point() else None
            state.to(device=param.device, dtype=dtype)
        self.moc_state[adapter_name] = state

    def _ensure_hooks(self) -> None:
        if self._moc_hook_handles:
            return
        self._moc_params = self._forward_params(self.model)
        self._moc_label_names = [p for p in self._moc_params if "label" in p] or [
            p for p in self._moc_params if p in ("start_positions", "end_positions")
        ]
        self._moc_loss_shifts_labels = _loss_shifts_labels(self.model)
        self._moc_hook_handles = [
            self.model.register_forward_pre_hook(self._moc_pre_hook, with_kwargs=True),
            self.model.register_forward_hook(self._moc_post_hook, with_kwargs=True),
        ]

    @staticmethod
    def _forward_params(model: nn.Module) -> list[str]:
        """Parameter names of `model.forward`, in order (positional arguments map onto them)."""
        try:
            return list(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            return []

    def _argument(self, args: tuple, kwargs: dict, name: str) -> Any:
        """The base model's argument `name` of this call, given by keyword or by position."""
        if kwargs.get(name) is not None:
            return kwargs[name]
        params: list[str] = self.__dict__.get("_moc_params", [])
        position = params.index(name) if name in params else None
        return args[position] if position is not None and len(args) > position else None

    def _remove_hooks(self) -> None:
        for handle in getattr(self, "_moc_hook_handles", []):
            handle.remove()
        self._moc_hook_handles = []

    # ----------------------------------------------------------------------------- forward hooks
    def _moc_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if (
            module.training
            and kwargs.get("fused_lm_head")
            and self._balance_loss_configured()
            and not any(m._is_active() for m in self.model.modules() if isinstance(m, MocLayer))
        ):
            raise ValueError(PREFERENCE_ERROR)
        mask = self._argument(args, kwargs, "attention_mask")
        context = self.control_context
        context.active = [a for a in self.active_adapters if a in self.moc_state]
        context.begin(mask)

    def _moc_post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        context = self.control_context
        losses = context.consume_events()
        if not module.training or not losses:
            return None
        aux = None
        for adapter, loss in losses.items():
            coef = self.peft_config[adapter].aux_loss_coef
            if coef > 0:
                aux = coef * loss if aux is None else aux + coef * loss
        if aux is None:
            return None
        if context.gradless_events:
            raise RuntimeError(
                REENTRANT_ERROR.format(lost=context.gradless_events, total=context.event_count)
            )
        per_token = aux
        share = self._accumulation_share(args, kwargs)
        if share is not None:
            aux = aux * share
        if isinstance(output, dict) and output.get("loss") is not None:
            output["loss"] = output["loss"] + aux.to(output["loss"].dtype)
            log_probs, scored = output.get("log_probs"), output.get("label_mask")
            if isinstance(log_probs, torch.Tensor) and isinstance(scored, torch.Tensor):
                # TRL's fused head: its trainers sum -log_probs over the scored tokens and divide by the
                # step's token count, so each scored token carries the balance loss once (weight: the
                # micro-batch's share of the step's tokens, as in `loss`)
                output["log_probs"] = log_probs - per_token.to(log_probs.dtype) * scored.to(log_probs.dtype)
            return output
        # return_dict=False: the loss, when the model computed one, is the tuple's first element,
        # a scalar (logits never are); labels may have been passed by keyword or by position
        if (
            isinstance(output, tuple)
            and output
            and isinstance(output[0], torch.Tensor)
            and output[0].dim() == 0
            and any(self._argument(args, kwargs, n) is not None for n in self._moc_label_names)
        ):
            return (output[0] + aux.to(output[0].dtype),) + tuple(output[1:])
        return None

    def _balance_loss_configured(self) -> bool:
        return any(
            self.peft_config[a].aux_loss_coef > 0 for a in self.active_adapters if a in self.peft_config
        )

    def _accumulation_share(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """Share of this micro-batch in Trainer's `num_items_in_batch`, or None outside that regime.

        When a model takes loss kwargs, transformers' Trainer passes `num_items_in_batch` (the label
        items of all micro-batches of the optimizer step, and with `average_tokens_across_devices`
        of all processes) and does not divide the loss by the accumulation steps; with
        `average_tokens_across_devices` it multiplies it by the process count, which DDP's gradient
        mean undoes. The model's task loss is then `sum / num_items_in_batch`, and the balance term
        must weigh `items / num_items_in_batch` likewise, or lambda would grow with the accumulation
        steps (and the processes). Items are counted as Trainer counts them: `shift_labels` if
        given, else labels != -100, without the first position for causal-LM losses.
        """
        total = kwargs.get("num_items_in_batch")
        if total is None:
            return None
        labels = kwargs.get("shift_labels")
        if labels is None:
            labels = self._argument(args, kwargs, "labels")
            if isinstance(labels, torch.Tensor) and self.__dict__.get("_moc_loss_shifts_labels", False):
                labels = labels[..., 1:]
        if not isinstance(labels, torch.Tensor):
            return None
        items = labels.ne(-100).sum()
        # DataParallel hands each replica a one-element tensor: reshape to a scalar
        return (items / torch.as_tensor(total, device=items.device)).reshape(())

    # ----------------------------------------------------------------------- adapter management
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        active = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self._sync_state_trainability(active, inference_mode)
        self.control_context.active = [a for a in active if a in self.moc_state]

    def _sync_state_trainability(self, active: list[str], inference_mode: bool) -> None:
        for name, state in self.moc_state.items():
            state.requires_grad_((name in active) and not inference_mode)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        inference = any(
            self.peft_config[a].inference_mode for a in self.active_adapters if a in self.peft_config
        )
        self._sync_state_trainability(self.active_adapters, inference)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name in self.moc_state:
            del self.moc_state[adapter_name]
        context = self.control_context
        context.configs.pop(adapter_name, None)
        context.stats.pop(adapter_name, None)
        self._moc_plans.pop(adapter_name, None)
        context.active = [a for a in self.active_adapters if a in self.moc_state]

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        if not autocast_adapter_dtype or adapter_name not in self.moc_state:
            return
        for module in self.moc_state[adapter_name].modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if _is_low_precision(param):
                    setattr(module, name, nn.Parameter(param.data.float(), requires_grad=param.requires_grad))

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        marker = f"moc_state.{adapter_name}."
        if marker in key:
            return key.replace(marker, "moc_state.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    # ----------------------------------------------------------------------------- merge/unload
    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        for module in self.model.modules():
            if isinstance(module, MocLayer):
                module.remove_hooks()
        self._remove_hooks()
        return super()._unload_and_optionally_merge(
            merge=False, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # Whole sub-blocks have no `.weight`: plain replacement, the wrapped module keeps its device.
        setattr(parent, child_name, new_module)


# ---------------------------------------------------------------------------------- statistics
def find_moc_model(model: nn.Module) -> MocModel:
    """The MoC tuner inside `model` (a PeftModel, its base model, a wrapper around either)."""
    for module in model.modules():
        if isinstance(module, MocModel):
            return module
    raise ValueError(f"{type(model).__name__} carries no MoC adapter (no MocModel inside).")


def routing_stats(model: nn.Module, adapter_name: str | None = None) -> dict[str, Any]:
    """Routing statistics of one MoC adapter (default: the first active) since the last reset:
    `RoutingStats.summary()` (balance loss, expert usage, routing entropy, routing matrix)."""
    tuner = find_moc_model(model)
    name = adapter_name or (tuner.active_adapters[0] if tuner.active_adapters else "default")
    return tuner.control_context.stats.get(name, RoutingStats()).summary()


def reset_routing_stats(model: nn.Module) -> None:
    """Clear the accumulated routing statistics of every MoC adapter of `model`."""
    for stats in find_moc_model(model).control_context.stats.values():
        stats.reset()


__all__ = ["MocModel", "find_moc_model", "reset_routing_stats", "routing_stats"]
