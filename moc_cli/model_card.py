"""The model card (`README.md`) of a trained adapter and of every export: one layout, one citation.

What a card says about a method (its title, tags, whether it is a baseline, why it cannot be merged)
comes from the methods table (`moc_cli.methods`); the framework versions from
`moc_cli.environment.versions_line`. The training run writes the card beside its final adapter
(`moc_cli.training.finish`), `moc merge-export` into every export folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moc_cli.methods import METHODS

# The paper (docs/moc-method.md).
MOC_CITATION = """@article{nguyen2026mixtureofcontrol,
  title   = {Mixture-of-Control: State-Aware Fine-Tuning for Transformer-based Models},
  author  = {Nguyen and Luu and Pham and Tran},
  journal = {arXiv preprint arXiv:2606.31397},
  note    = {ICML 2026 workshop CoLoRAI},
  year    = {2026}
}"""

# What each export format holds.
EXPORT_FORMAT_NOTES = {
    "bundle": "Base weights and the trained control/adapter weights in safetensors; needs `moc_cli` to load.",
    "merged": "The adapter folded into the base weights: a standard transformers checkpoint.",
    "onnx": "The whole forward graph (routing included) as ONNX, for runtimes outside Python.",
}

_EXPORT_SNIPPETS = {
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


def merge_refusal(method: str) -> str | None:
    """Why `method`'s adapters cannot be folded into the base weights, and what to use instead.

    The error of `moc merge-export --format merged` and the note on the method's cards; None for a
    method that merges (or one the methods table does not know: peft itself decides then).
    """
    entry = METHODS.get(method)
    if entry is None or entry.mergeable:
        return None
    return (
        f"{entry.title} cannot be merged into the base weights: {entry.no_merge_reason}. "
        "Export it with `moc merge-export --format bundle` (loads with moc_cli.load_exported) or "
        "`--format onnx`; serving stacks that load only LoRA-style adapters (e.g. vLLM) do not load it."
    )


@dataclass(frozen=True)
class CardFacts:
    """What a card reports about one fine-tune."""

    method: str  # `method.name`
    # The base model as the user named it (a Hub id, a pkg:// URI or a path), not the folder it
    # resolved to, which for packaged models lies inside one machine's virtualenv.
    base_model: str
    task: str
    auto_class: str  # the transformers auto class of the task's head
    recipe: str | None = None
    dataset: str | None = None  # None: the task's default source
    dtype: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)  # nested mappings are shown as `a/b`
    trainable_params: int | None = None
    # With it, the share of trainable parameters is shown; without it, `trainable_params` counts
    # the parameters saved with the adapter.
    total_params: int | None = None
    run: str | None = None  # the run folder an export was made from


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        out[prefix] = value
    elif isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), sub, out)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """A markdown table of the numeric metrics (floats to 4 decimals), or a line saying there are none."""
    flat: dict[str, Any] = {}
    _flatten("", metrics, flat)
    if not flat:
        return "No evaluation results were recorded."
    rows = [
        f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
        for name, value in flat.items()
    ]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def _source_expression(name: str) -> str:
    """Python for the base model's location: a pkg:// URI resolves on the reader's machine."""
    return f'resolve_model_source("{name}")' if name.startswith("pkg://") else f'"{name}"'


def _parameters_line(facts: CardFacts) -> str:
    trainable, total = facts.trainable_params, facts.total_params
    if trainable is None:
        return "- **Trainable parameters:** unknown"
    if total is None:
        return f"- **Trainable parameters saved with the adapter:** {trainable:,}"
    return (
        f"- **Trainable parameters:** {trainable:,} of {total:,} ({100.0 * trainable / max(total, 1):.3f} %)"
    )


def _usage(facts: CardFacts, export_format: str | None, path: str) -> list[str]:
    if export_format is not None:
        return [_EXPORT_SNIPPETS[export_format].format(path=path, auto_class=facts.auto_class)]
    auto_class, given = facts.auto_class, facts.base_model
    entry = METHODS.get(facts.method)
    if entry is not None and entry.peft_type is None:
        return [
            "This folder holds the full fine-tuned model (no adapter):",
            "",
            "```python",
            f"from transformers import {auto_class}",
            "",
            f'model = {auto_class}.from_pretrained("{path}")',
            "```",
        ]
    return [
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
        f'model = PeftModel.from_pretrained(base, "{path}")',
        "```",
        "",
        "Or evaluate it from the command line: `moc eval path/to/run_dir`.",
    ]


def render_model_card(facts: CardFacts, export_format: str | None = None, path: str | None = None) -> str:
    """Markdown with YAML front matter (`library_name`, `base_model`, tags).

    `export_format` is None for the folder a training run saves (its adapter, or the whole model
    for full fine-tuning), else the export's format (`bundle`, `merged`, `onnx`). `path` is where
    the reader finds the folder (a placeholder by default).
    """
    from moc_cli.environment import versions_line

    entry = METHODS.get(facts.method)
    title = entry.title if entry is not None else facts.method
    whole_model = export_format == "merged" or (
        export_format is None and entry is not None and entry.peft_type is None
    )
    library = "transformers" if whole_model else "peft"
    where = path or ("path/to/this/folder" if whole_model else "path/to/this/adapter")
    tags = [library, "moc_cli", facts.method]
    if entry is not None and entry.moc_family:
        tags += ["moc", "mixture-of-control"]
    tags.append(facts.task.replace("/", "-"))

    lines = ["---", f"library_name: {library}", f"base_model: {facts.base_model}", "tags:"]
    lines += [f"  - {tag}" for tag in dict.fromkeys(tags)]
    lines += ["---", "", f"# {facts.base_model} fine-tuned on {facts.task} with {title}", ""]
    if entry is not None and entry.baseline:
        lines += [f"{title[:1].upper()}{title[1:]} is one of the baselines moc_cli compares MoC with.", ""]
    if export_format is not None:
        lines += [f"Export format: **{export_format}**. {EXPORT_FORMAT_NOTES[export_format]}", ""]
    lines += ["## Training", "", f"- **Base model:** `{facts.base_model}`"]
    if facts.dtype:
        lines.append(f"- **Weights dtype:** `{facts.dtype}`")
    lines.append(f"- **Method:** `{facts.method}`")
    if facts.recipe:
        lines.append(f"- **Recipe:** `{facts.recipe}`")
    lines += [
        f"- **Task:** `{facts.task}`",
        f"- **Dataset:** `{facts.dataset or 'task default'}`",
        _parameters_line(facts),
    ]
    if facts.run:
        lines.append(f"- **Run:** `{facts.run}`")
    lines += ["", "## Evaluation", "", metrics_table(facts.metrics), ""]
    lines += ["## Usage", "", *_usage(facts, export_format, where), ""]
    refusal = merge_refusal(facts.method)
    if refusal is not None and export_format != "merged":
        lines += [refusal, ""]
    lines += ["## Framework versions", "", versions_line(), ""]
    lines += ["## Citation", "", "```bibtex", MOC_CITATION, "```", ""]
    return "\n".join(lines)
