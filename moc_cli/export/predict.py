"""Batched inference on an export or a run directory: labels with probabilities, or generations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.export.bundle import MANIFEST
from moc_cli.export.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

Input = str | dict[str, str]


def read_inputs(texts: list[str], file: Path | None) -> list[Input]:
    """Texts from the command line, then records of a JSONL file (`text`, or `sentence1`/`sentence2`)."""
    inputs: list[Input] = list(texts)
    if file is not None:
        if not file.is_file():
            raise ExportError(f"--file {file} does not exist")
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ExportError(f"{file} line {number} is not valid JSON ({err})") from None
                inputs.append(_check_record(record, f"{file} line {number}"))
    if not inputs:
        raise ExportError("no inputs: pass texts as arguments or --file inputs.jsonl")
    return inputs


def _check_record(record: Any, where: str) -> Input:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return {"text": record["text"]}
        if isinstance(record.get("sentence1"), str):
            pair = {"sentence1": record["sentence1"]}
            if record.get("sentence2") is not None:
                pair["sentence2"] = str(record["sentence2"])
            return pair
    raise ExportError(
        f"{where}: expected an object with field 'text' or 'sentence1' (and optional 'sentence2')"
    )


class Predictor:
    """A loaded model, its tokenizer and what kind of output it produces."""

    def __init__(self, model: nn.Module, tokenizer: Any, kind: str, max_length: int | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length

    @property
    def config(self) -> Any:
        for candidate in (self.model, getattr(self.model, "model", None)):
            if candidate is not None and hasattr(candidate, "config"):
                return candidate.config
        raise ExportError("the loaded model carries no transformers config")


def load_predictor(model_dir: str | Path, allow_pickle: bool = False) -> Predictor:
    """Load an export (bundle/merged) or, for a run/adapter directory, the PEFT model itself."""
    from transformers import AutoTokenizer

    path = Path(model_dir).expanduser()
    if (path / MANIFEST).is_file():
        from moc_cli.export.bundle import load_exported, read_manifest

        manifest = read_manifest(path)
        model = load_exported(path)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        kind = (manifest.get("task") or {}).get("kind", "seq_cls")
        return Predictor(model, tokenizer, kind, manifest.get("max_length"))
    from moc_cli.export.build import load_peft_model
    from moc_cli.export.source import resolve_source

    source = resolve_source(path)
    source.refuse_pickles(allow_pickle)
    peft_model, tokenizer, info = load_peft_model(source, allow_pickle=allow_pickle)
    max_length = (source.run_config.get("task") or {}).get("max_length")
    return Predictor(peft_model, tokenizer, info.kind, max_length)


def _batches(items: list[Input], size: int) -> list[list[Input]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _max_length(predictor: Predictor) -> int | None:
    if predictor.max_length:
        return int(predictor.max_length)
    limits = [
        getattr(predictor.config, "max_position_embeddings", None),
        predictor.tokenizer.model_max_length,
    ]
    known = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(known) if known else None


def _classify(predictor: Predictor, batch: list[Input]) -> list[dict[str, Any]]:
    import torch

    firsts = [x if isinstance(x, str) else x.get("text", x.get("sentence1", "")) for x in batch]
    seconds = [None if isinstance(x, str) else x.get("sentence2") for x in batch]
    pairs = seconds if any(s is not None for s in seconds) else None
    if pairs is not None and any(s is None for s in pairs):
        raise ExportError(
            "mixing single texts and sentence1/sentence2 pairs in one batch; use one kind per file"
        )
    encoded = predictor.tokenizer(
        firsts, pairs, padding=True, truncation=True, max_length=_max_length(predictor), return_tensors="pt"
    )
    with torch.no_grad():
        logits = predictor.model(**encoded).logits.float()
    if predictor.kind == "regression":
        return [{"score": float(v)} for v in logits[:, 0]]
    probs = torch.softmax(logits, dim=-1)
    id2label = getattr(predictor.config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(probs.shape[-1])]
    rows = []
    for row in probs:
        best = int(row.argmax())
        rows.append(
            {
                "label": names[best],
                "score": float(row[best]),
                "probabilities": {name: float(p) for name, p in zip(names, row, strict=True)},
            }
        )
    return rows


def _generate(
    predictor: Predictor, batch: list[Input], max_new_tokens: int, repetition_penalty: float
) -> list[dict[str, Any]]:
    from moc_cli.generation import generate_greedy

    tokenizer = predictor.tokenizer
    prompts = [x if isinstance(x, str) else x.get("text", x.get("sentence1", "")) for x in batch]
    ids = tokenizer(prompts)["input_ids"]
    model = predictor.model
    # a bundle's control wrapper holds the transformers model (and its generate) as `.model`
    generator = model if hasattr(model, "generate") else model.model
    new_tokens = generate_greedy(generator, tokenizer, ids, max_new_tokens, len(ids), repetition_penalty)
    return [{"generated_text": text} for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def predict(
    model_dir: str | Path,
    inputs: list[Input],
    batch_size: int = 32,
    max_new_tokens: int = 64,
    progress: bool = False,
    allow_pickle: bool = False,
    repetition_penalty: float = 1.0,
) -> list[dict[str, Any]]:
    """One result per input, in order: `{"label", "score", "probabilities"}` for classification,
    `{"score"}` for regression, `{"generated_text"}` (greedy, with `repetition_penalty`) for causal LMs."""
    inputs = [_check_record(x, f"input {i}") for i, x in enumerate(inputs)]
    predictor = load_predictor(model_dir, allow_pickle=allow_pickle)
    predictor.model.eval()
    batches = _batches(inputs, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="predict", unit="batch")
    results: list[dict[str, Any]] = []
    for batch in batches:
        if predictor.kind == "causal_lm":
            results += _generate(predictor, batch, max_new_tokens, repetition_penalty)
        elif predictor.kind in ("seq_cls", "regression"):
            results += _classify(predictor, batch)
        else:
            raise ExportError(f"moc predict does not support task kind {predictor.kind!r} (multiple choice)")
    return results
