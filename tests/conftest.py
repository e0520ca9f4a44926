"""Suite-wide settings: offline Hugging Face stack, deterministic single-thread torch, shared data."""

from __future__ import annotations

import os
from pathlib import Path

# Before any test imports transformers/datasets: the Hub is never contacted by the test suite.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`../shared` next to the repository (real data and docs); overridable with MOC_SHARED_DIR."""
    return Path(os.environ.get("MOC_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = shared_dir() / "data"
    if not data.is_dir():
        pytest.skip(f"real benchmark data not found at {data} (set MOC_SHARED_DIR); it exists in CI")
    return data


def task_data_dir(shared_data: Path, task: str) -> Path:
    """`shared/data/<suite>/<task>` with its train and validation splits, else skip naming the folder."""
    folder = shared_data / task
    if not ((folder / "train.jsonl").is_file() and (folder / "validation.jsonl").is_file()):
        pytest.skip(f"{task} data not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def sst2_dir(shared_data: Path) -> Path:
    return task_data_dir(shared_data, "glue/sst2")


@pytest.fixture(scope="session")
def cola_dir(shared_data: Path) -> Path:
    return task_data_dir(shared_data, "glue/cola")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("MOC_TEST_THREADS", "1")))


# config.json of the Hub models the shipped recipes name (the real files' fields that pre-flight
# reads), for a Hub cache that holds them without the network.
HUB_CONFIGS: dict[str, dict] = {
    "FacebookAI/roberta-base": {
        "architectures": ["RobertaForMaskedLM"],
        "model_type": "roberta",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 514,
        "pad_token_id": 1,
        "type_vocab_size": 1,
        "vocab_size": 50265,
    },
    "meta-llama/Meta-Llama-3-8B": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
        "vocab_size": 128256,
    },
}


def write_hub_cache(root: Path, configs: dict[str, dict] | None = None) -> Path:
    """A Hugging Face Hub cache at `root` holding only config.json of each model (the cache layout)."""
    import json

    for repo_id, config in (configs or HUB_CONFIGS).items():
        repo = root / f"models--{repo_id.replace('/', '--')}"
        commit = "0" * 40
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture
def hub_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_CACHE points at a cache holding config.json of the recipes' Hub models (offline hits)."""
    root = write_hub_cache(tmp_path_factory.mktemp("hub-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root
