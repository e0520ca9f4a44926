"""The one atomic directory swap, used by exports and by a run's final adapter and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc_cli.atomic_dir import atomic_directory, remove_stale_partials, replace_dir, temp_dir_beside

PACKAGE = Path(__file__).resolve().parents[2] / "moc_cli"


def test_training_swaps_its_folders_with_the_same_function() -> None:
    from moc_cli.training import checkpointing, finish

    assert checkpointing.replace_dir is replace_dir and finish.replace_dir is replace_dir
    assert checkpointing.temp_dir_beside is temp_dir_beside
    # no second implementation anywhere in the package
    defined = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in PACKAGE.rglob("*.py")
        for name in ("replace_dir", "temp_dir_beside", "atomic_directory")
        if f"def {name}(" in path.read_text(encoding="utf-8")
    ]
    assert sorted(defined) == [
        "atomic_dir.py: atomic_directory",
        "atomic_dir.py: replace_dir",
        "atomic_dir.py: temp_dir_beside",
    ]


def test_a_completed_work_dir_replaces_the_target_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as work:
        assert work.parent == tmp_path and work.name.startswith(".bundle.partial-")
        assert sorted(p.name for p in target.iterdir()) == ["old.txt"]  # untouched while writing
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed halfway"), atomic_directory(target) as work:
        (work / "half.txt").write_text("half")
        raise RuntimeError("killed halfway")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_replace_dir_into_a_new_place_and_stale_partials_removed(tmp_path: Path) -> None:
    tmp = tmp_path / ".adapter.saving"
    tmp.mkdir()
    (tmp / "weights").write_text("w")
    replace_dir(tmp, tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    for leftover in (".adapter.partial-abc", ".adapter.partial-def"):
        (tmp_path / leftover).mkdir()
    (tmp_path / ".other.partial-abc").mkdir()
    remove_stale_partials(tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-abc", "adapter"]
