"""Task features, collators and compute_metrics driven through a real transformers.Trainer (tiny models)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    BertForMultipleChoice,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from moc_cli.tasks import DataSource, get_task
from moc_cli.tasks.metrics import accuracy, multirc_scores
from moc_cli.testing import tiny_bert_config


def tiny_bert(cls, vocab_size: int, num_labels: int = 2):
    torch.manual_seed(0)
    return cls(tiny_bert_config(vocab_size=vocab_size, num_labels=num_labels)).eval()


def trainer_for(model, task, feats, tok, tmp_path: Path, batch_size: int = 8) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=batch_size, report_to="none", use_cpu=True
    )
    return Trainer(
        model=model,
        args=args,
        eval_dataset=feats,
        data_collator=task.data_collator(tok),
        compute_metrics=task.make_compute_metrics(feats),
    )


def test_glue_pair_classification(data_dir: Path, minilm_tokenizer, tmp_path: Path):
    task = get_task("glue/mrpc")
    raw = task.load(
        DataSource(files={"validation": str(data_dir / "glue/mrpc/validation.jsonl")}, max_eval_samples=24)
    )
    feats = task.preprocess(raw, minilm_tokenizer, 128)["validation"]
    trainer = trainer_for(
        tiny_bert(BertForSequenceClassification, len(minilm_tokenizer)),
        task,
        feats,
        minilm_tokenizer,
        tmp_path,
    )
    out = trainer.evaluate()
    pred = trainer.predict(feats)
    preds = pred.predictions.argmax(-1)
    labels = np.array(feats["labels"])
    assert out["eval_accuracy"] == pytest.approx(float(np.mean(preds == labels)))
    tp = int(((preds == 1) & (labels == 1)).sum())
    f1 = (
        2
        * tp
        / (2 * tp + int(((preds == 1) & (labels == 0)).sum()) + int(((preds == 0) & (labels == 1)).sum()))
    )
    assert out["eval_f1"] == pytest.approx(f1)


def test_copa_multiple_choice(data_dir: Path, minilm_tokenizer, tmp_path: Path):
    task = get_task("superglue/copa")
    raw = task.load(
        DataSource(
            files={"validation": str(data_dir / "superglue/copa/validation.jsonl")}, max_eval_samples=12
        )
    )
    feats = task.preprocess(raw, minilm_tokenizer, 64)["validation"]
    trainer = trainer_for(
        tiny_bert(BertForMultipleChoice, len(minilm_tokenizer)), task, feats, minilm_tokenizer, tmp_path, 5
    )
    out = trainer.evaluate()
    pred = trainer.predict(feats)
    assert pred.predictions.shape == (12, 2)
    assert out["eval_accuracy"] == pytest.approx(accuracy(pred.predictions.argmax(-1), feats["labels"]))


def test_multirc_grouped_metrics(data_dir: Path, minilm_tokenizer, tmp_path: Path):
    task = get_task("superglue/multirc")
    raw = task.load(DataSource(path=str(data_dir / "superglue/multirc"), max_eval_samples=30))
    feats = task.preprocess(raw, minilm_tokenizer, 128)["validation"]
    trainer = trainer_for(
        tiny_bert(BertForSequenceClassification, len(minilm_tokenizer)),
        task,
        feats,
        minilm_tokenizer,
        tmp_path,
    )
    out = trainer.evaluate()
    preds = trainer.predict(feats).predictions.argmax(-1)
    idx = raw["validation"].to_dict()["idx"]
    ref = multirc_scores(preds, feats["labels"], [(i["paragraph"], i["question"]) for i in idx])
    assert {k: out[f"eval_{k}"] for k in ref} == pytest.approx(ref)


def test_causal_lm_eval_loss_and_perplexity(data_dir: Path, chat_tokenizer, tiny_causal_lm, tmp_path: Path):
    task = get_task("instruct/alpaca")
    path = data_dir / "instruct/self_instruct_seed_tasks.jsonl"
    raw = task.load(DataSource(files={"validation": str(path)}, max_eval_samples=4))
    feats = task.preprocess(raw, chat_tokenizer, 512)["validation"]
    assert feats.num_rows == 4
    trainer = trainer_for(tiny_causal_lm, task, feats, chat_tokenizer, tmp_path, batch_size=4)
    trainer.compute_metrics = task.make_compute_metrics(feats)
    out = task.finalize_metrics(trainer.evaluate())
    batch = task.data_collator(chat_tokenizer)([feats[i] for i in range(4)])
    with torch.no_grad():
        loss = tiny_causal_lm(**batch).loss.item()  # one batch: Trainer's mean equals the batch loss
    assert out["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert out["eval_perplexity"] == pytest.approx(math.exp(out["eval_loss"]))
