"""The benchmarked configurations: name -> the `method:` config section users would write.

Each configuration is one method of the project's table (`moc_cli.methods`, which owns the names
a `method.name` may take and their titles) at the settings the benchmark compares: sites, rank,
targets. Every one is applied through the training runner's own `apply_method`, so the benchmark
measures exactly what `moc train` builds.
"""

from __future__ import annotations

from typing import Any

from moc_cli.methods import get_method

# Query/value projections per model family: LoRA r=8 there has the parameter count of Control r=16
# on one site (2 * L * 2 * d * 8 == L * 2 * d * 16), the predecessor's fair comparison.
QV_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
}


def _section(method: str, **options: Any) -> dict[str, Any]:
    return {"name": get_method(method).name, **options}


def method_sections(model_type: str) -> dict[str, dict[str, Any]]:
    """Benchmarked configuration name -> `method:` section (a dict accepted by `apply_method`)."""
    qv = QV_TARGETS.get(model_type, ["q_proj", "v_proj"])
    sections: dict[str, dict[str, Any]] = {}
    for variant in ("ffn", "attn", "both-separate", "both-shared"):
        sections[f"moc-{variant}"] = _section(
            "moc", variant=variant, r=16, top_k=1, alpha=0.95, expert_compute="sparse"
        )
    sections["control"] = _section("control", variant="ffn", r=16)
    sections["control-attn"] = _section("control", variant="attn", r=16)
    sections["control-both"] = _section("control", variant="both-separate", r=16)
    sections["lora-qv"] = _section("lora", r=8, lora_alpha=16, target_modules=qv)
    sections["lora-all"] = _section("lora", r=8, lora_alpha=16, target_modules="all-linear")
    sections["dora"] = _section("dora", r=8, lora_alpha=16, target_modules=qv)
    sections["ia3"] = _section("ia3")
    sections["full"] = _section("full")
    sections["molex"] = _section("molex", alpha=0.95, top_k=1)
    return sections


METHOD_NAMES: tuple[str, ...] = tuple(method_sections("bert"))

# Every figure is also reported as a ratio to this configuration (per-block Control, FFN site).
REFERENCE_METHOD = "control"

# The per-block Control with the same sites, for the "same-site Control" ratio of each MoC variant.
SAME_SITE_CONTROL: dict[str, str] = {
    "moc-ffn": "control",
    "moc-attn": "control-attn",
    "moc-both-separate": "control-both",
    "moc-both-shared": "control-both",
}


def _titled(method: str, settings: str = "") -> str:
    """The table's title of `method`, followed by the benchmarked settings."""
    return get_method(method).title + settings


# One line per configuration for the reports. Where the table's title names the method as the
# reports do (LoRA, DoRA, IA3, full fine-tuning) it is used; MoC, Control and MoLEx are named by
# their sites and settings here, which the table (one entry per method, not per configuration)
# does not describe.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "moc-ffn": "MoC, FFN sites, r=16, top-1 sparse, alpha 0.95",
    "moc-attn": "MoC, attention sites, r=16, top-1 sparse, alpha 0.95",
    "moc-both-separate": "MoC, both sites, one router per site type, r=16, top-1 sparse",
    "moc-both-shared": "MoC, both sites, one shared block router, r=16, top-1 sparse",
    "control": "Control (per-block), FFN site, r=16 (reference for the ratios)",
    "control-attn": "Control (per-block), attention site, r=16",
    "control-both": "Control (per-block), attention and FFN sites, r=16",
    "lora-qv": _titled("lora", " r=8 on query/value (parameter count of Control r=16 on one site)"),
    "lora-all": _titled("lora", " r=8 on all linear layers"),
    "dora": _titled("dora", " r=8 on query/value"),
    "ia3": _titled("ia3", " with peft's default targets"),
    "full": _titled("full"),
    "molex": "MoLEx, alpha 0.95, top-1, sequence routing (one extra layer forward per layer)",
}
