"""The benchmarked methods: names -> the `method:` config section users would write.

Every method is applied through the training runner's own `apply_method`, so the benchmark measures
exactly what `moc train` builds.
"""

from __future__ import annotations

from typing import Any

# Query/value projections per model family: LoRA r=8 there has the parameter count of Control r=16
# on one site (2 * L * 2 * d * 8 == L * 2 * d * 16), the predecessor's fair comparison.
QV_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
}


def method_sections(model_type: str) -> dict[str, dict[str, Any]]:
    """Benchmarked method name -> `method:` section (a dict accepted by `apply_method`)."""
    qv = QV_TARGETS.get(model_type, ["q_proj", "v_proj"])
    sections: dict[str, dict[str, Any]] = {}
    for variant in ("ffn", "attn", "both-separate", "both-shared"):
        sections[f"moc-{variant}"] = {
            "name": "moc",
            "variant": variant,
            "r": 16,
            "top_k": 1,
            "alpha": 0.95,
            "expert_compute": "sparse",
        }
    sections["control"] = {"name": "control", "variant": "ffn", "r": 16}
    sections["control-attn"] = {"name": "control", "variant": "attn", "r": 16}
    sections["control-both"] = {"name": "control", "variant": "both-separate", "r": 16}
    sections["lora-qv"] = {"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": qv}
    sections["lora-all"] = {"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    sections["dora"] = {"name": "dora", "r": 8, "lora_alpha": 16, "target_modules": qv}
    sections["ia3"] = {"name": "ia3"}
    sections["full"] = {"name": "full"}
    sections["molex"] = {"name": "molex", "alpha": 0.95, "top_k": 1}
    return sections


METHOD_NAMES: tuple[str, ...] = tuple(method_sections("bert"))

# The per-block Control with the same sites, for the "same-site Control" ratio of each MoC variant.
SAME_SITE_CONTROL: dict[str, str] = {
    "moc-ffn": "control",
    "moc-attn": "control-attn",
    "moc-both-separate": "control-both",
    "moc-both-shared": "control-both",
}

METHOD_DESCRIPTIONS: dict[str, str] = {
    "moc-ffn": "MoC, FFN sites, r=16, top-1 sparse, alpha 0.95",
    "moc-attn": "MoC, attention sites, r=16, top-1 sparse, alpha 0.95",
    "moc-both-separate": "MoC, both sites, one router per site type, r=16, top-1 sparse",
    "moc-both-shared": "MoC, both sites, one shared block router, r=16, top-1 sparse",
    "control": "Control (per-block), FFN site, r=16 (reference for the ratios)",
    "control-attn": "Control (per-block), attention site, r=16",
    "control-both": "Control (per-block), attention and FFN sites, r=16",
    "lora-qv": "LoRA r=8 on query/value (parameter count of Control r=16 on one site)",
    "lora-all": "LoRA r=8 on all linear layers",
    "dora": "DoRA r=8 on query/value",
    "ia3": "IA3 with peft's default targets",
    "full": "full fine-tuning",
    "molex": "MoLEx, alpha 0.95, top-1, sequence routing (one extra layer forward per layer)",
}
