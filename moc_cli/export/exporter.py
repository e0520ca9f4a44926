"""`export()`: one entry point for the three formats, idempotent and atomic."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moc_cli.atomic_dir import atomic_directory, remove_stale_partials
from moc_cli.export.bundle import MANIFEST
from moc_cli.export.errors import ExportError
from moc_cli.export.source import ADAPTER_SUBDIRS, ExportSource, resolve_source
from moc_cli.methods import METHODS
from moc_cli.model_card import merge_refusal

FORMATS = ("bundle", "merged", "onnx")


@dataclass
class ExportResult:
    path: Path
    format: str
    existed: bool
    manifest: dict[str, Any]
    # Why an existing export was rebuilt without --force (its adapter changed), else None.
    rebuilt: str | None = None


# Files of an adapter folder that do not change what the export computes.
_NOT_DIGESTED = ("README.md",)


def adapter_digest(adapter_dir: Path) -> str:
    """sha256 over the adapter folder's files (names and contents; the model card excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(adapter_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(adapter_dir).as_posix()
        if rel in _NOT_DIGESTED:
            continue
        digest.update(rel.encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def adapter_step(source: ExportSource) -> int | None:
    """The training step the adapter is from: a checkpoint's N, else the run's final global step."""
    match = re.fullmatch(r"checkpoint-(\d+)", source.adapter_dir.name)
    if match:
        return int(match.group(1))
    summary = (source.eval_results or {}).get("summary") or {}
    step = summary.get("global_step")
    return int(step) if isinstance(step, int) else None


def built_from(source: ExportSource) -> dict[str, Any]:
    """What an export is built from; recorded in its manifest and compared on the next export."""
    return {"adapter_sha256": adapter_digest(source.adapter_dir), "step": adapter_step(source)}


def _describe(origin: dict[str, Any]) -> str:
    step = origin.get("step")
    digest = str(origin.get("adapter_sha256") or "")[:12]
    return f"step {step if step is not None else '?'}, adapter sha256 {digest or '?'}"


def staleness(manifest: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why an export whose manifest is `manifest` no longer matches the adapter (None: up to date)."""
    recorded = manifest.get("built_from")
    if not isinstance(recorded, dict) or not recorded.get("adapter_sha256"):
        return "it does not record which adapter it was built from"
    if recorded["adapter_sha256"] != current["adapter_sha256"]:
        return f"it was built from an older adapter ({_describe(recorded)}; now {_describe(current)})"
    return None


def default_format(source: ExportSource) -> str:
    """`merged` where the update folds into the weights (or full fine-tuning), `bundle` otherwise."""
    method = METHODS.get(source.method)
    return "merged" if method is not None and method.mergeable else "bundle"


def default_output(source: ExportSource, fmt: str) -> Path:
    """`<run>/export/<format>`; an intermediate checkpoint gets `<run>/export/<checkpoint>/<format>`."""
    canonical = {source.root / sub for sub in ADAPTER_SUBDIRS} | {source.root}
    if source.adapter_dir in canonical:
        return source.root / "export" / fmt
    return source.root / "export" / source.adapter_dir.name / fmt


def _check_existing(target: Path, fmt: str, force: bool, adapter_dir: Path) -> dict[str, Any] | None:
    """The existing manifest when an identical-format export is already there and --force is off."""
    if not target.exists():
        return None
    manifest_file = target / MANIFEST
    if not manifest_file.is_file():
        if target.is_dir() and not any(target.iterdir()):
            return None
        # Never delete a folder we did not write, even with --force.
        raise ExportError(f"{target} exists and is not a moc_cli export; choose another --output")
    manifest = json.loads(manifest_file.read_text())
    if force:
        return None
    if manifest.get("adapter") not in (None, str(adapter_dir)):
        raise ExportError(
            f"{target} holds an export of {manifest['adapter']}, not of {adapter_dir}; pass --force to "
            "replace it or choose another --output"
        )
    if manifest.get("format") != fmt:
        raise ExportError(
            f"{target} holds a {manifest.get('format')!r} export, not {fmt!r}; pass --force to replace it "
            "or choose another --output"
        )
    return manifest


def export(
    run_or_adapter_dir: str | Path,
    fmt: str | None = None,
    output: str | Path | None = None,
    allow_pickle: bool = False,
    force: bool = False,
    max_shard_bytes: int | None = None,
) -> ExportResult:
    """Export a run (or adapter dir) as `bundle`, `merged` or `onnx`; see `moc merge-export --help`."""
    source = resolve_source(run_or_adapter_dir)
    from moc_cli.export.bundle import check_adapter_files

    check_adapter_files(source.adapter_dir)  # one line naming a damaged file, before peft reads it
    fmt = (fmt or default_format(source)).lower()
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    refusal = merge_refusal(source.method) if fmt == "merged" else None
    if refusal is not None:
        raise ExportError(refusal)
    if fmt == "onnx":
        from moc_cli.export.onnx_export import require_onnx

        require_onnx()
    source.refuse_pickles(allow_pickle)
    target = Path(output).expanduser().resolve() if output else default_output(source, fmt)
    existing = _check_existing(target, fmt, force, source.adapter_dir)
    origin = built_from(source)
    rebuilt = None
    if existing is not None:
        # "Already exported" only if it is an export of this very adapter: a run resumed to more
        # steps keeps its folder and adapter path but not its weights.
        rebuilt = staleness(existing, origin)
        if rebuilt is None:
            return ExportResult(target, fmt, True, existing)
    remove_stale_partials(target)
    with atomic_directory(target) as work:
        manifest = _build(source, fmt, work, target, allow_pickle, max_shard_bytes)
        manifest["built_from"] = origin
        # Written last: its presence marks a complete export.
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(target, fmt, False, manifest, rebuilt)


def _build(
    source: ExportSource, fmt: str, work: Path, target: Path, allow_pickle: bool, max_shard_bytes: int | None
) -> dict[str, Any]:
    from moc_cli.export.build import load_peft_model, unwrap
    from moc_cli.export.weights import DEFAULT_MAX_SHARD_BYTES
    from moc_cli.models import auto_class_name

    # onnxruntime's CPU kernels are float32: upcast a bf16/fp16 backbone (lossless; controls are fp32).
    dtype = "float32" if fmt == "onnx" else None
    peft_model, tokenizer, info = load_peft_model(source, allow_pickle=allow_pickle, dtype=dtype)
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    auto_class = auto_class_name(info.kind)
    meta: dict[str, Any] = {
        "auto_class": auto_class,
        "task": {"name": info.name, "kind": info.kind},
        "method": source.method,
        "base_model": source.base_model,
        "dtype": str(base.dtype).replace("torch.", ""),
        "attn_implementation": source.model_section.get("attn_implementation"),
        "max_length": (source.run_config.get("task") or {}).get("max_length"),
    }
    manifest: dict[str, Any] = {
        "format": fmt,
        **meta,
        "source": str(source.root),
        "adapter": str(source.adapter_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if fmt == "merged" and source.is_full:
        base.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
    elif fmt == "merged":
        try:
            merged = peft_model.merge_and_unload()
        except (NotImplementedError, ValueError, TypeError) as err:
            raise ExportError(
                f"{source.peft_type} adapter cannot be merged ({err}); use --format bundle"
            ) from None
        merged.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
    else:
        module = unwrap(peft_model)
        if fmt == "bundle":
            from moc_cli.export.bundle import write_bundle

            write_bundle(
                module,
                base.config,
                tokenizer,
                work,
                {**meta, "peft_config": source.adapter_config or None},
                max_shard_bytes or DEFAULT_MAX_SHARD_BYTES,
            )
        else:
            from moc_cli.export.onnx_export import export_onnx

            manifest["onnx"] = export_onnx(module, tokenizer, info.kind == "causal_lm", work)
            base.config.save_pretrained(str(work))
            tokenizer.save_pretrained(str(work))
    (work / "README.md").write_text(_card(source, fmt, auto_class, target, info.name))
    return manifest


def _card(source: ExportSource, fmt: str, auto_class: str, target: Path, task_name: str) -> str:
    from moc_cli.model_card import CardFacts, render_model_card

    data = source.run_config.get("data") or {}
    dataset = data.get("path") or data.get("name")
    results = source.eval_results or {}
    facts = CardFacts(
        method=source.method,
        base_model=source.base_model,
        task=task_name,
        auto_class=auto_class,
        recipe=source.run_config.get("recipe"),
        dataset=str(dataset) if dataset else None,
        dtype=source.model_section.get("dtype"),
        # The runner keeps per-split metrics under "metrics"; other layouts are shown whole.
        metrics=results.get("metrics", results),
        trainable_params=saved_parameter_count(source.adapter_dir),
        run=str(source.root),
    )
    return render_model_card(facts, export_format=fmt, path=str(target))


def saved_parameter_count(adapter_dir: Path) -> int | None:
    """Parameters saved in the adapter folder (controls, routers and trained heads)."""
    from safetensors import safe_open

    adapter = adapter_dir / "adapter_model.safetensors"
    # Full fine-tuning saves the whole model in the adapter folder: every parameter was trained.
    files = [adapter] if adapter.is_file() else sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for weights in files:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= int(dim)
                total += count
    return total
