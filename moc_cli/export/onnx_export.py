"""The `onnx` format: the full forward graph (controls and routing included) for non-Python runtimes."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.export.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

ONNX_FILE = "model.onnx"
INSTALL_HINT = "pip install 'moc_cli[onnx]'"
OPSET = 17
SAMPLE_TEXTS = ["A short sample.", "A somewhat longer sample sentence used to trace the export graph."]


def require_onnx() -> None:
    """Fail early, naming the extra to install, when the ONNX stack is missing."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--format onnx needs {', '.join(missing)}; install them with {INSTALL_HINT}")


class _LogitsOnly:
    """Factory for a module returning only logits (ONNX graphs need plain tensor outputs)."""

    @staticmethod
    def wrap(model: nn.Module, input_names: list[str], causal: bool) -> nn.Module:
        from torch import nn

        class LogitsOnly(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: Any) -> Any:
                kwargs = dict(zip(input_names, tensors, strict=True))
                if causal:
                    kwargs["use_cache"] = False
                return self.model(**kwargs).logits

        return LogitsOnly().eval()


def model_input_names(model: nn.Module, available: list[str]) -> list[str]:
    """Inputs among `available` that the model's forward names explicitly (not via **kwargs)."""
    import inspect

    named = set(inspect.signature(model.forward).parameters)
    order = ["input_ids", "attention_mask", "token_type_ids"]
    return [k for k in order if k in available and k in named] or [k for k in order[:2] if k in available]


# Inputs of another batch size and length than the traced ones: a graph that baked in a shape
# (the trace follows Python branches on shapes) gives different logits for them.
CHECK_TEXTS = ["Short.", "Another sample, of a different length again.", "A third one."]
# float32 logits of the same graph agree to ~1e-6; anything near this means a wrong graph.
MAX_ABS_DIFF = 1e-3


def sample_inputs(tokenizer: Any, model: nn.Module, texts: list[str] | None = None) -> dict[str, Any]:
    """Padded tokenised samples with the inputs the model's forward takes."""
    encoded = tokenizer(texts or SAMPLE_TEXTS, padding=True, return_tensors="pt")
    return {k: encoded[k] for k in model_input_names(model, list(encoded.keys()))}


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """The TorchScript tracer warns at every Python branch on a tensor's shape or value (transformers'
    masks, MoC's routing); whether the graph generalises is checked on inputs of another shape."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        yield


def export_onnx(model: nn.Module, tokenizer: Any, causal: bool, folder: Path) -> dict[str, Any]:
    """Export to `folder/model.onnx`, check it against PyTorch with onnxruntime, return the check."""
    require_onnx()
    import numpy as np
    import onnxruntime as ort
    import torch

    inputs = sample_inputs(tokenizer, model)
    names = list(inputs)
    wrapper = _LogitsOnly.wrap(model, names, causal)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic_axes["logits"] = {0: "batch", 1: "sequence"} if causal else {0: "batch"}
    target = folder / ONNX_FILE
    with torch.no_grad(), _quiet_tracing():
        # The TorchScript exporter traces through custom autograd functions and data-dependent
        # routing (gather/top-k) as plain ops; dynamic axes keep batch and length free.
        torch.onnx.export(
            wrapper,
            tuple(inputs.values()),
            str(target),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    max_diff = 0.0
    for check_inputs in (inputs, sample_inputs(tokenizer, model, CHECK_TEXTS)):
        with torch.no_grad():
            expected = wrapper(*check_inputs.values()).float().numpy()
        got = session.run(["logits"], {k: v.numpy() for k, v in check_inputs.items()})[0]
        if got.shape != expected.shape:
            raise ExportError(
                f"{target}: the ONNX graph gives logits of shape {got.shape} where PyTorch gives "
                f"{expected.shape} for inputs of shape {tuple(check_inputs[names[0]].shape)}; the trace "
                "baked in a shape, so the export is not usable",
                exit_code=1,
            )
        max_diff = max(max_diff, float(np.max(np.abs(got.astype(np.float32) - expected))))
    if max_diff > MAX_ABS_DIFF:
        raise ExportError(
            f"{target}: onnxruntime and PyTorch disagree by up to {max_diff:.2e} on the check inputs "
            f"(more than {MAX_ABS_DIFF:g}); the graph is not usable, keep --format bundle for this model",
            exit_code=1,
        )
    check = {"inputs": names, "opset": OPSET, "max_abs_diff_vs_torch": max_diff}
    (folder / "onnx_inputs.json").write_text(json.dumps(check, indent=2) + "\n")
    return check
