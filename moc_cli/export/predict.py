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


PAIR_FIELDS = ("sentence1", "sentence2")


def read_inputs(texts: list[str], file: Path | None, fields: tuple[str, ...] = ()) -> list[Input]:
    """Texts from the command line, then the records of a JSON Lines file.

    A record is `{"text": ...}`, the task's own text fields (`fields`, e.g. `sentence` for CoLA,
    `question1`/`question2` for QQP: the files a run trained on work as they are), `{"sentence": ...}`
    or a `sentence1`/`sentence2` pair. Empty or blank texts are errors, not silent predictions.
    """
    inputs: list[Input] = []
    for number, text in enumerate(texts, start=1):
        inputs.append(_check_record(text, f"TEXT argument {number}", fields))
    if file is not None:
        if not file.is_file():
            raise ExportError(f"--file {file} does not exist")
        from moc_cli.tasks.io import read_utf8_text

        try:
            content = read_utf8_text(file, "predict")
        except ValueError as err:  # TaskDataError: names the line of the first bytes that are not UTF-8
            raise ExportError(str(err).removeprefix("task predict: ")) from None
        for number, line in enumerate(content.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ExportError(f"{file} line {number} is not valid JSON ({err})") from None
            inputs.append(_check_record(record, f"{file} line {number}", fields))
    if not inputs:
        raise ExportError("no inputs: pass texts as arguments or --file inputs.jsonl")
    return inputs


def _nonblank(value: str, where: str, field: str | None) -> str:
    if not value.strip():
        what = f"field {field!r}" if field else "the text"
        raise ExportError(f"{where}: {what} is empty; give the text to predict on")
    return value


def _check_record(record: Any, where: str, fields: tuple[str, ...] = ()) -> Input:
    if isinstance(record, str):
        return _nonblank(record, where, None)
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return {"text": _nonblank(record["text"], where, "text")}
        names = fields if 1 <= len(fields) <= 2 and isinstance(record.get(fields[0]), str) else None
        if names is None and isinstance(record.get("sentence"), str):
            names = ("sentence",)
        if names is None and isinstance(record.get("sentence1"), str):
            names = PAIR_FIELDS
        if names is not None:
            first = _nonblank(record[names[0]], where, names[0])
            if len(names) == 1:
                return first
            second = record.get(names[1])
            pair = {"sentence1": first}
            if second is not None:
                pair["sentence2"] = _nonblank(str(second), where, names[1])
            return pair
    accepted = ["'text'"]
    if fields and len(fields) <= 2 and fields[0] not in ("text", "sentence", "sentence1"):
        accepted.append(" and ".join(f"'{f}'" for f in fields) + " (the task's own fields)")
    accepted += ["'sentence'", "'sentence1' (and optional 'sentence2')"]
    raise ExportError(f"{where}: expected an object with field {' or '.join(accepted)}")


def task_text_fields(model_dir: str | Path) -> tuple[str, ...]:
    """The text fields of the task an export or run was trained on (empty when it cannot be told).

    Reads the manifest or the run's config only: nothing is loaded.
    """
    path = Path(model_dir).expanduser()
    name: str | None = None
    try:
        if (path / MANIFEST).is_file():
            from moc_cli.export.bundle import read_manifest

            name = (read_manifest(path).get("task") or {}).get("name")
        else:
            from moc_cli.export.source import resolve_source

            name = resolve_source(path).task_name
    except ExportError:
        return ()
    if not name:
        return ()
    try:
        from moc_cli.tasks.registry import get_task

        return tuple(getattr(get_task(name), "text_columns", ()) or ())
    except (KeyError, ValueError, ImportError):
        return ()


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
    from moc_cli.export.bundle import check_adapter_files
    from moc_cli.export.source import resolve_source

    source = resolve_source(path)
    source.refuse_pickles(allow_pickle)
    check_adapter_files(source.adapter_dir)
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
