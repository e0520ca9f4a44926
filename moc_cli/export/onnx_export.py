"""The `onnx` format: the full forward graph (controls and routing included) for non-Python runtimes."""

from __future__ import annotations

import json
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


def sample_inputs(tokenizer: Any, model: nn.Module) -> dict[str, Any]:
    """Padded tokenised samples with the inputs the model's forward takes."""
    encoded = tokenizer(SAMPLE_TEXTS, padding=True, return_tensors="pt")
    return {k: encoded[k] for k in model_input_names(model, list(encoded.keys()))}


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
    with torch.no_grad():
        expected = wrapper(*inputs.values()).float().numpy()
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
    got = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
    max_diff = float(np.max(np.abs(got.astype(np.float32) - expected)))
    check = {"inputs": names, "opset": OPSET, "max_abs_diff_vs_torch": max_diff}
    (folder / "onnx_inputs.json").write_text(json.dumps(check, indent=2) + "\n")
    return check
