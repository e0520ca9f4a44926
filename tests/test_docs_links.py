"""Documentation citations point at files in the repository.

Code comments, docstrings and docs once cited design notes that lived outside the repository
(`docs/moc-method.md` before it existed, `cli-conventions.md`, `offline-assets.md`,
`peft-and-hf-notes.md`). Every `*.md` a file under `moc_cli/`, `docs/` or `README.md` names must now
exist: a path (`docs/moc-method.md`, `benchmarks/results/kernels.md`, a relative Markdown link) at
that path, from the repository root or from the citing file's folder; a bare file name
(`kernels.md`) as some file of the repository. docs/ARCHITECTURE.md carries no "issue N" tags.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Folders that are not the project's own files.
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "runs", "build", "dist", "device-out"}
_SCANNED_SUFFIXES = (".py", ".md")
# A `*.md` path or file name not glued to a longer path, URL or identifier on its left.
_MD_CITATION = re.compile(r"(?<![\w/.\-])((?:\.{1,2}/)*(?:[\w.\-]+/)*[\w.\-]+\.md)(?![\w])")
# Names cited before from outside the repository: each must resolve to a repository file.
_FORMERLY_EXTERNAL = ("moc-method.md", "cli-conventions.md", "offline-assets.md", "peft-and-hf-notes.md")
_ISSUE_TAG = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)


def _repo_files() -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        files += [Path(folder) / name for name in names]
    return files


def _scanned_files() -> list[Path]:
    found = [REPO_ROOT / "README.md"]
    for folder in ("moc_cli", "docs"):
        found += sorted(
            p
            for p in (REPO_ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in _SCANNED_SUFFIXES and "__pycache__" not in p.parts
        )
    return found


def md_citations(text: str) -> list[tuple[int, str]]:
    """(line number, cited path or name) for every `*.md` the text names."""
    return [
        (number, match.group(1))
        for number, line in enumerate(text.splitlines(), start=1)
        for match in _MD_CITATION.finditer(line)
    ]


def _resolves(cited: str, citing: Path, basenames: set[str]) -> bool:
    if "/" not in cited:
        return cited in basenames
    for base in (REPO_ROOT, citing.parent):
        target = (base / cited).resolve()
        if target.is_relative_to(REPO_ROOT) and target.is_file():
            return True
    # A placeholder prefix (`root/README.md`, `<run>/README.md` style) is no repository path: the
    # file name must still exist. Paths into the repository's folders or out of it (`../`) must not.
    first = cited.split("/", 1)[0]
    return (
        not first.startswith(".")
        and not (REPO_ROOT / first).is_dir()
        and cited.rsplit("/", 1)[1] in basenames
    )


def test_citation_pattern_finds_paths_names_and_links() -> None:
    text = (
        "see docs/moc-method.md, marked [choice] there\n"
        "# Exit codes (docs: cli-conventions.md)\n"
        "[the method](moc-method.md) and ../shared/docs/offline-assets.md.\n"
        "https://example.org/a/b.md is a URL; REPORT_MD = 'efficiency.md'\n"
    )
    assert md_citations(text) == [
        (1, "docs/moc-method.md"),
        (2, "cli-conventions.md"),
        (3, "moc-method.md"),
        (3, "../shared/docs/offline-assets.md"),
        (4, "efficiency.md"),
    ]


def test_every_cited_markdown_file_exists_in_the_repository() -> None:
    basenames = {p.name for p in _repo_files()}
    broken = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8")
        for number, cited in md_citations(text):
            if not _resolves(cited, path, basenames):
                broken.append(f"{path.relative_to(REPO_ROOT)}:{number}: {cited}")
    assert not broken, (
        "these files cite Markdown files that are not in the repository; point them at a repository "
        "file (docs/moc-method.md, docs/ARCHITECTURE.md, docs/distributed.md, README.md) or drop "
        "the citation:\n" + "\n".join(broken)
    )


@pytest.mark.parametrize("name", _FORMERLY_EXTERNAL)
def test_formerly_external_names_resolve_when_cited(name: str) -> None:
    # A bare name resolves to any file of that name; for these, the one under docs/ must exist.
    citing = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in _scanned_files()
        for number, cited in md_citations(path.read_text(encoding="utf-8"))
        if cited.rsplit("/", 1)[-1] == name
    ]
    if citing:
        assert (REPO_ROOT / "docs" / name).is_file(), f"docs/{name} is cited at {citing} but does not exist"


def test_architecture_doc_carries_no_issue_tags() -> None:
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    tags = [
        f"line {number}: {match.group(0)}"
        for number, line in enumerate(text.splitlines(), start=1)
        for match in _ISSUE_TAG.finditer(line)
    ]
    assert not tags, "docs/ARCHITECTURE.md still carries issue tags: " + "; ".join(tags)
