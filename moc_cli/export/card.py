"""The export's model card (`README.md`): provenance, metrics, citation and a loading snippet."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from moc_cli.export.source import ExportSource

MOC_CITATION = """@article{nguyen2026mixtureofcontrol,
  title   = {Mixture-of-Control: State-Aware Fine-Tuning for Transformer-based Models},
  author  = {Nguyen and Luu and Pham and Tran},
  journal = {arXiv preprint arXiv:2606.31397},
  note    = {ICML 2026 workshop CoLoRAI},
  year    = {2026}
}"""

LOAD_SNIPPETS = {
    "bundle": """```python
import moc_cli  # registers the MoC tuner

model = moc_cli.load_exported("{path}")  # plain torch module, controls in place, eval mode
```

Or from the command line: `moc predict {path} "some text"`.""",
    "merged": """```python
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```""",
    "onnx": """```python
import onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
session = ort.InferenceSession("{path}/model.onnx")
feeds = dict(tokenizer(["some text"], return_tensors="np"))
logits = session.run(["logits"], {{k: v for k, v in feeds.items() if k in {{i.name for i in session.get_inputs()}}}})[0]
```""",
}


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), sub, out)


def metrics_table(results: dict[str, Any] | None) -> str:
    if not results:
        return "No evaluation results were saved with the run (eval/results.json)."
    flat: dict[str, float] = {}
    # The runner keeps per-split metrics under "metrics"; other layouts are flattened whole.
    _flatten("", results.get("metrics", results), flat)
    if not flat:
        return "eval/results.json holds no numeric metrics."
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in flat.items())
    return "| metric | value |\n|---|---|\n" + rows


def adapter_parameter_count(adapter_dir: Path) -> int | None:
    """Parameters saved in the adapter (controls, routers and trained heads)."""
    from safetensors import safe_open

    adapter = adapter_dir / "adapter_model.safetensors"
    # Full fine-tuning saves the whole model in the adapter folder: every parameter was trained.
    files = [adapter] if adapter.is_file() else sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for weights in files:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= int(dim)
                total += count
    return total


def _versions() -> str:
    import importlib.metadata as md

    names = ["moc_cli", "torch", "transformers", "peft", "safetensors"]
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return ", ".join(parts)


def render_card(source: ExportSource, fmt: str, auto_class: str, path: Path, task_name: str) -> str:
    method = source.method
    base = source.base_model
    data = source.run_config.get("data") or {}
    dataset = data.get("path") or data.get("name") or f"default source of task {task_name}"
    params = adapter_parameter_count(source.adapter_dir)
    tags = ["moc_cli", method, task_name.replace("/", "-")]
    if source.peft_type == "MOC":
        tags.insert(0, "moc")
    library = "transformers" if fmt == "merged" else "peft"
    front = "\n".join(
        ["---", f"base_model: {base}", f"library_name: {library}", "tags:"]
        + [f"- {t}" for t in tags]
        + ["---"]
    )
    kind_note = {
        "bundle": "Base weights and the trained control/adapter weights in safetensors; needs `moc_cli` to load.",
        "merged": "The adapter folded into the base weights: a standard transformers checkpoint.",
        "onnx": "The whole forward graph (routing included) as ONNX, for runtimes outside Python.",
    }[fmt]
    serving = (
        "\n\nvLLM, TGI and other serving stacks do not load custom PEFT types such as MoC; serve the "
        "bundle through `moc_cli.load_exported` or the ONNX export instead."
        if fmt != "merged"
        else ""
    )
    lines = [
        front,
        "",
        f"# {method} fine-tune of {base} on {task_name}",
        "",
        f"Export format: **{fmt}**. {kind_note}{serving}",
        "",
        "## Training",
        "",
        f"- Base model: `{base}` (dtype {source.model_section.get('dtype', 'default')})",
        f"- Recipe: task `{task_name}`, method `{method}`",
        f"- Dataset: {dataset}",
        f"- Trainable parameters saved with the adapter: {params:,}"
        if params is not None
        else "- Trainable parameters: unknown",
        f"- Source: `{source.root}`",
        "",
        "## Evaluation",
        "",
        metrics_table(source.eval_results),
        "",
        "## Usage",
        "",
        LOAD_SNIPPETS[fmt].format(path=path, auto_class=auto_class),
        "",
        "## Framework versions",
        "",
        _versions(),
        "",
        "## Citation",
        "",
        "```bibtex",
        MOC_CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)
