"""Tiny randomly initialised models (no download) for the MoC tuner tests."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

import moc_cli  # noqa: F401  (registers MoC)

torch.set_num_threads(1)
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

ENCODERS = ("bert", "roberta", "deberta-v2", "mpnet")
DECODERS = ("llama", "mistral", "qwen2", "gemma", "gpt2")
ARCHS = ENCODERS + DECODERS + ("vit",)
VARIANTS = ("ffn", "attn", "both-separate", "both-shared", "block")

HIDDEN = 32
LAYERS = 3
VOCAB = 64


@dataclass
class Tiny:
    arch: str
    task_type: str | None
    build: Callable[[], torch.nn.Module]
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    @property
    def model_inputs(self) -> dict[str, torch.Tensor]:
        return dict(self.inputs)

    def batch(self) -> dict[str, torch.Tensor]:
        return {**self.inputs, "labels": self.labels}


def _config(arch: str) -> Any:
    common = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64)
    if arch == "gpt2":
        return AutoConfig.for_model(
            "gpt2", n_embd=HIDDEN, n_layer=LAYERS, n_head=4, vocab_size=VOCAB, n_positions=32
        )
    if arch in ("llama", "mistral", "qwen2", "gemma"):
        return AutoConfig.for_model(arch, num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, **common)
    if arch == "vit":
        return AutoConfig.for_model("vit", image_size=8, patch_size=4, num_labels=3, **common)
    extra = {"vocab_size": VOCAB, "num_labels": 2, "max_position_embeddings": 40}
    if arch == "deberta-v2":
        extra.update(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16)
    return AutoConfig.for_model(arch, **extra, **common)


def tiny(arch: str, seed: int = 0) -> Tiny:
    config = _config(arch)
    gen = torch.Generator().manual_seed(1234)

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        if arch == "vit":
            model = AutoModelForImageClassification.from_config(config)
        elif arch in DECODERS:
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = AutoModelForSequenceClassification.from_config(config)
        return model.eval()

    if arch == "vit":
        inputs = {"pixel_values": torch.randn(4, 3, 8, 8, generator=gen)}
        return Tiny(arch, None, build, inputs, torch.tensor([0, 1, 2, 1]))
    ids = torch.randint(3, VOCAB, (4, 6), generator=gen)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 3:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if arch in DECODERS:
        labels = ids.masked_fill(mask == 0, -100)
        return Tiny(arch, "CAUSAL_LM", build, inputs, labels)
    return Tiny(arch, "SEQ_CLS", build, inputs, torch.tensor([0, 1, 1, 0]))
