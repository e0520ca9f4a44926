"""Resolve model and data references: Hub ids, local paths, `pkg://` URIs and GGUF files."""

from __future__ import annotations

from pathlib import Path

from moc_cli.assets.gguf_cache import convert_gguf
from moc_cli.assets.pkg_uri import is_pkg_uri, resolve_pkg_uri


def _is_gguf_file(path: Path) -> bool:
    return path.suffix.lower() == ".gguf" and path.is_file()


def resolve_model_source(name_or_path: str, cache_dir: str | None = None) -> str:
    """What to pass to `from_pretrained` for a model reference.

    - Hub ids and local folders are returned unchanged.
    - `pkg://<dist>/<path>` becomes the local path inside the installed distribution.
    - A `.gguf` file (local or `pkg://`) is converted once into a safetensors folder under
      `cache_dir` (default `$MOC_CACHE/models` or `~/.cache/moc_cli/models`); that folder is returned.

    Raises AssetNotInstalledError (with the pip command) or AssetPathError for `pkg://` problems, and
    FileNotFoundError for a `.gguf` path that does not exist.
    """
    if is_pkg_uri(name_or_path):
        local = resolve_pkg_uri(name_or_path)
    else:
        local = Path(name_or_path).expanduser()
        if not _is_gguf_file(local):
            if name_or_path.lower().endswith(".gguf") and not local.exists():
                raise FileNotFoundError(
                    f"model.name_or_path {name_or_path!r}: GGUF file not found; give an existing .gguf "
                    "file, a pkg:// URI, a local model folder or a Hub id"
                )
            return name_or_path
    if _is_gguf_file(local):
        return str(convert_gguf(local, Path(cache_dir).expanduser() if cache_dir else None))
    return str(local)


def resolve_data_path(uri_or_path: str) -> Path:
    """Local path of a data file or folder given as a `pkg://` URI or a path (it must exist)."""
    if is_pkg_uri(uri_or_path):
        return resolve_pkg_uri(uri_or_path)
    path = Path(uri_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data path {uri_or_path!r} does not exist; give an existing file or folder or a pkg:// URI"
        )
    return path
