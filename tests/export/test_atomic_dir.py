"""The one atomic directory swap, used by exports and by a run's final adapter and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc_cli.atomic_dir import atomic_directory, remove_stale_partials, replace_dir
from moc_cli.training import run_dir


def test_training_swaps_its_folders_with_the_same_function() -> None:
    assert run_dir.replace_dir is replace_dir


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
