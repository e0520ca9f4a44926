"""Shared data loading and validation for tasks.

Local data mirrors the Hub schema, so a folder of `<split>.jsonl|json|csv|parquet` files drops in
for the Hub dataset. Every error names the task, the file (or Hub id), the split and the fix.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.tasks.base import DataSource, TaskDataError

if TYPE_CHECKING:
    import datasets

EXTENSIONS = ("jsonl", "json", "csv", "parquet")
# Original benchmark folders name their dev split differently from the Hub.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "validation": ("val", "dev"),
    "validation_matched": ("dev_matched",),
    "validation_mismatched": ("dev_mismatched",),
}


class Origin(str):
    """Where a split came from, printed as the file (or Hub id), and how to name one of its rows.

    JSON Lines files know the line of every record, so errors can say "line 10" rather than a row index.
    """

    lines: list[int] | None = None
    unit: str = "row"

    def where(self, row: int) -> str:
        return f"line {self.lines[row]}" if self.lines is not None else f"{self.unit} {row}"


def where(origin: str, row: int) -> str:
    """ "line N" for JSON Lines sources, else "row N" / "record N"."""
    return origin.where(row) if isinstance(origin, Origin) else f"row {row}"


def read_json_records(path: Path, task: str) -> list[dict[str, Any]]:
    """Records of a JSON Lines file or a JSON array file; bad JSON names the file and line."""
    return read_json_records_with_lines(path, task)[0]


def read_utf8_text(path: Path, task: str) -> str:
    """The file's text; bytes that are not UTF-8 raise TaskDataError naming the line and the fix.

    A UTF-8 byte-order mark (which Windows tools write) is dropped; it carries no content.
    """
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise TaskDataError(
            f"task {task}: {path}: the file is UTF-16 text (it starts with a UTF-16 byte-order mark); "
            "save it as UTF-8"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TaskDataError(_not_utf8_message(task, path, data, err.start)) from None


def _not_utf8_message(task: str, path: Path | str, data: bytes, offset: int) -> str:
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return (
        f"task {task}: {path}: line {line}: byte 0x{data[offset]:02x} at character {column} is not UTF-8 "
        "text; the file is probably in another encoding (such as Latin-1 or Windows-1252): save it as UTF-8"
    )


def read_json_records_with_lines(path: Path, task: str) -> tuple[list[dict[str, Any]], list[int] | None]:
    """Records and, for JSON Lines, the 1-based line number of each (None for a JSON array)."""
    text = read_utf8_text(path, task)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskDataError(
                f"task {task}: {path}: line {err.lineno}: invalid JSON ({err.msg}, column {err.colno}); "
                "expected a JSON array of objects or one JSON object per line"
            ) from None
        bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
        if bad is not None:
            raise TaskDataError(
                f"task {task}: {path}: array element {bad} is {type(records[bad]).__name__}, expected an object"
            )
        return records, None
    records = []
    lines: list[int] = []
    # split on "\n" only: str.splitlines() also breaks on U+0085/U+2028 found inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskDataError(
                f"task {task}: {path}: line {lineno}: invalid JSON ({err.msg}, column {err.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise TaskDataError(
                f"task {task}: {path}: line {lineno}: got a JSON {type(record).__name__}, "
                "each line must be one JSON object"
            )
        records.append(record)
        lines.append(lineno)
    return records, lines


def load_file(path: Path, task: str, split: str) -> tuple[datasets.Dataset, Origin]:
    """One split from one local file, and its Origin (the path, with line numbers for JSON Lines)."""
    import datasets

    origin = Origin(str(path))
    if not path.is_file():
        raise TaskDataError(f"task {task}: data file for split {split!r} not found: {path}")
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json"):
        records, origin.lines = read_json_records_with_lines(path, task)
        if origin.lines is None:
            origin.unit = "record"
        try:
            ds = datasets.Dataset.from_list(records) if records else None
        except (TypeError, ValueError) as err:  # pyarrow: one field holding different types
            raise TaskDataError(
                _mixed_type_message(task, origin, records) or f"task {task}: {path}: {err}"
            ) from err
    elif suffix in ("csv", "parquet"):
        if suffix == "csv":
            # pandas would read a byte-order mark into the first column's name, and report other
            # encodings by byte offset: check the text first (the file is read once more, cheaply).
            read_utf8_text(path, task)
        try:
            ds = datasets.load_dataset(suffix, data_files={split: str(path)}, split=split)
        except Exception as err:  # the builders raise many types; the file name is what matters
            raise TaskDataError(f"task {task}: {path}: could not read {suffix.upper()} file: {err}") from err
        if ds.column_names and ds.column_names[0].startswith("\ufeff"):
            ds = ds.rename_column(ds.column_names[0], ds.column_names[0].lstrip("\ufeff"))
        ds = ds if len(ds) else None
    else:
        raise TaskDataError(
            f"task {task}: {path}: unsupported file type '.{suffix}'; use one of "
            + ", ".join(f".{e}" for e in EXTENSIONS)
        )
    if ds is None:
        raise TaskDataError(f"task {task}: split {split!r} is empty: {path} has no records")
    return ds, origin


def column_values(ds: datasets.Dataset, name: str) -> list[Any]:
    """A column as a Python list, converted in one arrow call (iterating `ds[name]` decodes row by row)."""
    return ds.select_columns([name]).to_dict()[name]


def _mixed_type_message(task: str, origin: Origin, records: list[dict[str, Any]]) -> str | None:
    """Name the first record whose field has another JSON type than the same field in earlier records."""
    first_type: dict[str, type] = {}
    for i, record in enumerate(records):
        for key, value in record.items():
            if value is None:
                continue
            kind = float if isinstance(value, int) and not isinstance(value, bool) else type(value)
            seen = first_type.setdefault(key, kind)
            if kind is not seen and not (seen is float and kind is float):
                return (
                    f"task {task}: {origin}: {origin.where(i)}: field {key!r} has {type(value).__name__} "
                    f"{value!r} where earlier records have {seen.__name__}; every record needs the same type per field"
                )
    return None


def find_split_file(folder: Path, split: str) -> Path | None:
    for stem in (split, *SPLIT_ALIASES.get(split, ())):
        for ext in EXTENSIONS:
            candidate = folder / f"{stem}.{ext}"
            if candidate.is_file():
                return candidate
    return None


def _resolve_local(path: str) -> Path | None:
    if path.startswith("pkg://"):
        from moc_cli.assets import resolve_data_path

        return Path(resolve_data_path(path))
    p = Path(path).expanduser()
    return p if p.exists() else None


def _split_dict(
    loaded: dict[str, tuple[datasets.Dataset, Origin]],
) -> tuple[datasets.DatasetDict, dict[str, str]]:
    import datasets

    return datasets.DatasetDict({s: d for s, (d, _) in loaded.items()}), {
        s: o for s, (_, o) in loaded.items()
    }


def load_raw(
    task: str,
    source: DataSource,
    splits: Sequence[str],
    hub_path: str | None,
    hub_name: str | None,
    single_file_split: str = "train",
) -> tuple[datasets.DatasetDict, dict[str, str]]:
    """Load the task's splits that exist; returns the splits and where each came from.

    Precedence: `source.files`, then a local folder/file/`pkg://` path, then a Hub id
    (`source.path`, or the task's default `hub_path` when `source.path` is None).
    """
    import datasets

    if source.files:
        unknown = sorted(set(source.files) - set(splits))
        if unknown:
            raise TaskDataError(
                f"task {task}: data.files has unknown split(s) {unknown}; expected split names: {list(splits)}"
            )
        return _split_dict({s: load_file(Path(f).expanduser(), task, s) for s, f in source.files.items()})

    local = _resolve_local(source.path) if source.path else None
    if local is not None and local.is_file():
        return _split_dict({single_file_split: load_file(local, task, single_file_split)})
    if local is not None and local.is_dir():
        found = {s: f for s in splits if (f := find_split_file(local, s)) is not None}
        if not found:
            raise TaskDataError(
                f"task {task}: no data files in {local}; expected files named <split>.<ext> with split in "
                f"{list(splits)} and ext in {list(EXTENSIONS)}"
            )
        return _split_dict({s: load_file(f, task, s) for s, f in found.items()})

    hub_id = source.path or hub_path
    if hub_id is None:
        raise TaskDataError(
            f"task {task}: no default Hub dataset; set data.path to a local folder or file (or data.files)"
        )
    if source.path and ("/" not in source.path or source.path.startswith((".", "/", "~"))):
        raise TaskDataError(f"task {task}: data.path {source.path!r} does not exist")
    # the task's config name applies to its own Hub dataset; another dataset id needs data.name
    config = source.name if source.name is not None else (hub_name if hub_id == hub_path else None)
    try:
        loaded = datasets.load_dataset(hub_id, config)
    except Exception as err:  # offline mode, missing dataset, network: all end the same way
        raise TaskDataError(
            f"task {task}: could not load Hub dataset {hub_id!r} (config {config!r}): "
            f"{type(err).__name__}: {err}. Without Hub access set data.path to a local folder of "
            "<split>.jsonl files with the same columns (e.g. ../shared/data/glue/sst2)"
        ) from err
    out = {s: loaded[s] for s in splits if s in loaded}
    if not out:
        raise TaskDataError(
            f"task {task}: Hub dataset {hub_id!r} has splits {list(loaded)}, none of {list(splits)}"
        )
    where = f"hub:{hub_id}" + (f"/{config}" if config else "")
    return datasets.DatasetDict(out), {s: f"{where}[{s}]" for s in out}


def check_columns(
    task: str,
    ds: datasets.Dataset,
    origin: str,
    split: str,
    required: Iterable[str],
    optional: Iterable[str] = (),
) -> None:
    """Raise TaskDataError when required columns are missing (listing unexpected ones too)."""
    required = list(required)
    optional = list(optional)
    have = list(ds.column_names)
    missing = [c for c in required if c not in have]
    if not missing:
        return
    unexpected = [c for c in have if c not in required and c not in optional]
    expected = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
    msg = f"task {task}: {origin} (split {split!r}): missing column(s) {missing}"
    if unexpected:
        msg += f", unexpected column(s) {unexpected}"
    raise TaskDataError(f"{msg}; expected columns: {expected}")


def check_texts(task: str, ds: datasets.Dataset, origin: str, split: str, columns: Iterable[str]) -> None:
    """Text columns must hold strings (a null would crash the tokenizer far from its cause)."""
    for name in columns:
        values = column_values(ds, name)
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is None:
            continue
        problem = (
            "has no value" if values[bad] is None else f"has {type(values[bad]).__name__} {values[bad]!r}"
        )
        raise TaskDataError(
            f"task {task}: {origin} (split {split!r}): {where(origin, bad)}: field {name!r} {problem}; "
            "expected a string in every record"
        )


def check_labels(
    task: str,
    ds: datasets.Dataset,
    origin: str,
    split: str,
    label_names: Sequence[str] | None,
    is_test: bool,
    column: str = "label",
) -> None:
    """Labels must be class indices (or floats for regression); -1 only in test splits.

    The error names the bad values and where the first one is (its line for JSON Lines files).
    """
    if label_names is None:  # regression: any finite float, -1 placeholder in test

        def ok(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    else:
        allowed = set(range(len(label_names))) | ({-1} if is_test else set())

        def ok(v: Any) -> bool:
            return not isinstance(v, bool) and v in allowed

    bad = sorted({v for v in ds.unique(column) if not ok(v)}, key=repr)  # unique() stays in arrow: fast
    if not bad:
        return
    first = where(origin, next(i for i, v in enumerate(column_values(ds, column)) if not ok(v)))
    prefix = f"task {task}: {origin} (split {split!r}):"
    if label_names is None:
        raise TaskDataError(
            f"{prefix} column {column!r} has non-numeric value(s) {[repr(v) for v in bad][:5]} "
            f"(first at {first}); expected float scores"
        )
    expected = ", ".join(f"{i}={n}" for i, n in enumerate(label_names))
    hint = "; -1 (unlabelled) is allowed only in test splits" if -1 in bad and not is_test else ""
    raise TaskDataError(
        f"{prefix} unexpected label value(s) {bad[:10]} in column {column!r} (first at {first}); "
        f"expected {expected} (label names or class indices){hint}"
    )


def normalize_labels(
    ds: datasets.Dataset, label_names: Sequence[str], column: str = "label"
) -> datasets.Dataset:
    """Map string labels ("positive", "True") and JSON booleans to class indices, as the Hub stores them."""
    import datasets

    if column not in ds.column_names:
        return ds
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return ds
    dtype = getattr(feature, "dtype", None)
    if dtype not in ("string", "large_string", "bool"):
        return ds
    lookup = {n.lower(): i for i, n in enumerate(label_names)}

    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            key = str(value).lower()
        elif isinstance(value, str):
            key = value.strip().lower()
        else:
            return value
        if key in lookup:
            return lookup[key]
        return int(key) if key.lstrip("-").isdigit() else value

    converted = [convert(v) for v in column_values(ds, column)]
    if any(isinstance(v, str) for v in converted):
        # leave unmapped strings in place for check_labels to report
        return ds.remove_columns(column).add_column(column, [str(v) for v in converted])
    return ds.remove_columns(column).add_column(column, converted)


def limit_samples(
    dd: datasets.DatasetDict,
    source: DataSource,
    train_split: str,
    eval_splits: Sequence[str],
    test_split: str | None,
) -> datasets.DatasetDict:
    """Apply max_*_samples by taking the first N rows (deterministic, as run_glue does)."""
    limits = {train_split: source.max_train_samples, test_split: source.max_test_samples}
    limits.update(dict.fromkeys(eval_splits, source.max_eval_samples))
    for split, limit in limits.items():
        if split in dd and limit is not None and limit < len(dd[split]):
            dd[split] = dd[split].select(range(limit))
    return dd
