"""README.md model card written next to the final adapter."""

from __future__ import annotations

from typing import Any

MOC_CITATION = """@inproceedings{nguyen2026mixture,
  title     = {Mixture-of-Control: State-Aware Fine-Tuning for Transformer-based Models},
  author    = {Nguyen and Luu and Pham and Tran},
  booktitle = {ICML 2026 Workshop CoLoRAI},
  year      = {2026},
  note      = {arXiv:2606.31397}
}"""

_METHOD_TITLES = {
    "moc": "Mixture-of-Control (MoC)",
    "control": "per-block Control (MoC without routing)",
    "lora": "LoRA",
    "dora": "DoRA",
    "ia3": "IA3",
    "full": "full fine-tuning",
    "molex": "MoLEx (mixture of layer experts)",
}


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _source_expression(name: str) -> str:
    """Python for the base model's location: a pkg:// URI resolves on the reader's machine."""
    return f'resolve_model_source("{name}")' if name.startswith("pkg://") else f'"{name}"'


def render_model_card(
    *,
    base_model: str,
    method: str,
    base_model_name: str | None = None,
    recipe: str | None,
    task: str,
    dataset: str | None,
    metrics: dict[str, Any],
    trainable_params: int,
    total_params: int,
    versions: dict[str, str | None],
    auto_class: str,
) -> str:
    """Markdown with YAML front matter (`library_name: peft`, base model, tags) for the adapter folder.

    The base model is recorded as the user named it (`base_model_name`: a Hub id, a `pkg://` URI or
    a path), not as the folder it resolved to (`base_model`), which for packaged models lies inside
    one machine's virtualenv.
    """
    given = base_model_name or base_model
    tags = (
        (["peft"] if method != "full" else [])
        + ["moc_cli", method]
        + (["moc", "mixture-of-control"] if method in ("moc", "control") else [])
    )
    library = "transformers" if method == "full" else "peft"
    front = ["---", f"library_name: {library}", f"base_model: {given}", "tags:"]
    front += [f"  - {tag}" for tag in dict.fromkeys(tags)]
    front.append("---")

    lines = [*front, "", f"# {task} adapter: {_METHOD_TITLES.get(method, method)}", ""]
    lines += [
        f"- **Base model:** `{given}`",
        f"- **Method:** `{method}`",
        f"- **Recipe:** `{recipe or 'custom config'}`",
        f"- **Task:** `{task}`",
        f"- **Dataset:** `{dataset or 'task default'}`",
        f"- **Trainable parameters:** {trainable_params:,} of {total_params:,} "
        f"({100.0 * trainable_params / max(total_params, 1):.3f} %)",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_format(value)} |" for key, value in metrics.items()]
    else:
        lines.append("No evaluation split was configured.")
    lines += ["", "## Loading", ""]
    if method == "full":
        lines += [
            "This folder holds the full fine-tuned model (no adapter):",
            "",
            "```python",
            f"from transformers import {auto_class}",
            "",
            f'model = {auto_class}.from_pretrained("path/to/this/folder")',
            "```",
        ]
    else:
        lines += [
            "`import moc_cli` registers the MoC and MoLEx tuners with peft; without it peft cannot read",
            "this adapter's `peft_type`.",
            "",
            "```python",
            "import moc_cli  # registers the MoC tuner with peft",
            "from peft import PeftModel",
            f"from transformers import {auto_class}",
            *(["from moc_cli.assets import resolve_model_source"] if given.startswith("pkg://") else []),
            "",
            f"base = {auto_class}.from_pretrained({_source_expression(given)})",
            'model = PeftModel.from_pretrained(base, "path/to/this/adapter")',
            "```",
        ]
    lines += ["", "Or evaluate it from the command line: `moc eval path/to/run_dir`.", ""]
    if method in ("moc", "control"):
        lines += [
            "MoC controls act on hidden states with input-dependent routing, so they cannot be merged into",
            "the base weights; serving stacks that only load LoRA-style adapters (e.g. vLLM) do not load it.",
            "",
        ]
    lines += ["## Framework versions", ""]
    lines += [f"- {name} {version}" for name, version in versions.items() if version]
    lines += ["", "## Citation", "", "```bibtex", MOC_CITATION, "```", ""]
    return "\n".join(lines)
