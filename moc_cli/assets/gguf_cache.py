"""Convert a GGUF checkpoint once into a plain safetensors folder and reuse it afterwards.

transformers dequantises GGUF weights to float32 but keeps the model tagged as quantized, which makes
`save_pretrained` fail and Trainer refuse full fine-tuning. The conversion drops that tag and writes
an ordinary model + tokenizer folder, so later loads take well under a second instead of ~40 s.

Crash safety: the folder is written into a temporary sibling and moved into place with `os.replace`,
so the cache holds either a complete folder (with its marker file) or nothing. Leftover temporary
folders from an interrupted run are removed by the next conversion. A lock file serialises
concurrent conversions of the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# Bump when the conversion output changes, so that stale cache folders are not reused.
CONVERSION_FORMAT = 1
MARKER_FILE = "moc_gguf_source.json"


def default_cache_root() -> Path:
    """`$MOC_CACHE/models`, else `~/.cache/moc_cli/models`."""
    base = os.environ.get("MOC_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "moc_cli"
    return root / "models"


def converted_dir(gguf: Path, cache_root: Path | None = None) -> Path:
    """Cache folder for `gguf`: `<root>/<file stem>-<short hash of size, mtime, format>`."""
    st = gguf.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}:{CONVERSION_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (cache_root or default_cache_root()) / f"{gguf.stem}-{digest}"


def is_complete(folder: Path) -> bool:
    # The marker is written last, inside the temporary folder, before the atomic move.
    return (folder / MARKER_FILE).is_file()


def convert_gguf(gguf: Path, cache_root: Path | None = None) -> Path:
    """The converted safetensors folder for `gguf`, converting only if it is not cached yet."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    target = converted_dir(gguf, cache_root)
    if is_complete(target):
        logger.debug("reusing converted GGUF at %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _progress_visible(), _exclusive_lock(target.parent / f".{target.name}.lock", target):
        if is_complete(target):  # another process finished it while we waited
            return target
        _remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache may be shared
            _convert_into(gguf, tmp)
            os.replace(tmp, target)
        except BaseException:
            # KeyboardInterrupt included: never leave a half-written folder behind.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _remove_leftovers(target: Path) -> None:
    """Temporary folders of interrupted conversions, and a target folder without its marker."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        logger.info("removing leftover of an interrupted conversion: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        logger.info("removing incomplete conversion folder %s", target)
        shutil.rmtree(target, ignore_errors=True)


@contextlib.contextmanager
def _progress_visible() -> Iterator[None]:
    """Show the progress lines on stderr when the application configured no logging.

    A conversion takes about a minute and happens once; silence would look like a hang.
    """
    if logger.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[moc_cli] %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, target: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): the atomic move still prevents half-written caches
        yield
        return
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is converting to %s; waiting for it (lock %s)", target, lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_into(gguf: Path, out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    logger.info("converting %s once to safetensors in %s (about a minute on 2 CPU cores)", gguf, out.parent)
    logger.info("[1/3] loading tokenizer from %s", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    logger.info("[2/3] dequantising weights to float32 (%.0f s so far)", time.monotonic() - start)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already plain float32; drop the GGUF tag that blocks saving and fine-tuning.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    logger.info("[3/3] writing safetensors (%.0f s so far)", time.monotonic() - start)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    st = gguf.stat()
    marker = {
        "source": str(gguf.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "format": CONVERSION_FORMAT,
        "transformers": transformers.__version__,
        "seconds": round(time.monotonic() - start, 1),
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    logger.info("converted %s in %.0f s", gguf.name, time.monotonic() - start)
