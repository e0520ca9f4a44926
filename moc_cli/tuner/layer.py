"""MoC tuner layers: thin wrappers that hold no parameters of their own.

- `MocSiteLayer` wraps a site's *writer* and adds `c(u)` to its output (to the first element when
  the writer returns a tuple). For the `block` site the writer is the whole transformer layer; the
  addition then happens in a forward hook registered first on the wrapped layer, so that
  transformers' output-recording hooks (which `output_hidden_states` uses and which attach to the
  inner layer class) see the controlled state.
- `MocTapLayer` wraps the module whose input is a pre-LN site's `u` (the sub-block's norm) and
  stashes that input for the writer of the same layer.

Both reach the shared state through their tuner's `ControlContext` (`routing.py`), a plain object,
so nothing is registered or saved per layer. Adapter bookkeeping lives in `moc_adapters` (a plain dict, listed
in `other_param_names`) so that peft's `set_adapter` / `delete_adapter` work per layer.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .routing import ControlContext

MERGE_ERROR = (
    "MoC cannot be merged into the base weights: each control reads the residual state and writes next to a "
    "non-linear sub-block, and the router picks experts per token from the input, so there is no static weight "
    "delta to fold. Keep the PeftModel, use `unload()` to get the base model back, or export a self-contained "
    "artefact with `moc merge-export --format bundle` (or `--format onnx` for runtimes outside Python)."
)


class MocLayer(nn.Module, BaseTunerLayer):
    """Base of MoC tuner layers (wraps `base_layer`, delegates unknown attributes to it)."""

    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ("moc_adapters",)

    def __init__(self, base_layer: nn.Module, context: ControlContext, site: str, layer_index: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.moc_adapters: dict[str, bool] = {}
        self._context = context
        self.moc_site = site
        # the controlled layer's index in the plan = the index of its own (local) expert
        self.moc_layer_index = layer_index
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = "default"

    def update_layer(self, adapter_name: str) -> None:
        self.moc_adapters[adapter_name] = True

    def _get_available_adapters(self) -> set[str]:
        return set(self.moc_adapters)

    def _is_active(self) -> bool:
        return not self.disable_adapters and any(a in self.moc_adapters for a in self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        pass

    def remove_hooks(self) -> None:
        """Detach hooks this wrapper put on its base layer (before `unload()`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)


class MocTapLayer(MocLayer):
    """Stashes the input of the wrapped module as `u` of a pre-LN site."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._is_active():
            u = args[0] if args else next(iter(kwargs.values()))
            self._context.taps[(self.moc_layer_index, self.moc_site)] = u
        return self.base_layer(*args, **kwargs)


def _add_to_output(output: Any, control: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return output + control.to(output.dtype)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0] + control.to(output[0].dtype),) + tuple(output[1:])
    raise TypeError(f"MoC cannot add a control to a module output of type {type(output).__name__}.")


class MocSiteLayer(MocLayer):
    """Adds the control `c(u)` of its site to the wrapped writer's output."""

    def __init__(
        self,
        base_layer: nn.Module,
        context: ControlContext,
        site: str,
        layer_index: int,
        arg: tuple[int, str] | None,
    ) -> None:
        super().__init__(base_layer, context, site, layer_index)
        self.moc_arg = arg
        self._hook_handle = None
        if site == "block":
            self._hook_handle = base_layer.register_forward_hook(
                self._block_hook, with_kwargs=True, prepend=True
            )

    def remove_hooks(self) -> None:
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None

    def _read_u(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if self.moc_arg is None:
            u = self._context.taps.pop((self.moc_layer_index, self.moc_site), None)
            if u is None:
                raise RuntimeError(
                    f"MoC site '{self.moc_site}' of layer {self.moc_layer_index} found no tapped state u: the tap module "
                    "did not run before the writer; check MocConfig.architecture."
                )
            return u
        index, name = self.moc_arg
        if len(args) > index:
            return args[index]
        if name in kwargs:
            return kwargs[name]
        raise RuntimeError(
            f"MoC site '{self.moc_site}' expects u as argument {index} ('{name}') of its writer."
        )

    def _control(self, args: tuple, kwargs: dict, output: Any) -> Any:
        u = self._read_u(args, kwargs)
        control = self._context.control(self.moc_site, self.moc_layer_index, u)
        return output if control is None else _add_to_output(output, control)

    def _block_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self._is_active():
            return None
        return self._control(args, kwargs, output)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._hook_handle is not None or not self._is_active():
            if self.moc_arg is None and not self.disable_adapters:
                self._context.taps.pop((self.moc_layer_index, self.moc_site), None)
            return self.base_layer(*args, **kwargs)
        output = self.base_layer(*args, **kwargs)
        return self._control(args, kwargs, output)
