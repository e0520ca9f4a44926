"""`import moc_cli` and `moc --help` stay light; MoC still registers with peft in any import order."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_package_and_the_cli_app_import_without_torch_or_peft() -> None:
    out = _run(
        "import sys, moc_cli; from moc_cli.cli.app import app; "
        "print(sorted(m for m in ('torch', 'peft', 'transformers', 'datasets') if m in sys.modules))"
    )
    assert out == "[]"


@pytest.mark.parametrize(
    "imports",
    [
        "import moc_cli; import peft",  # peft later: the post-import hook registers
        "import peft; import moc_cli",  # peft first: registered at once
        "import moc_cli; from moc_cli import MocConfig",  # peft pulled in by the tuner's own import
        "import moc_cli; from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING",  # a peft submodule first
        # an availability check (transformers does this) looks peft up without loading it
        "import moc_cli, importlib.util; importlib.util.find_spec('peft'); import peft",
    ],
)
def test_moc_and_molex_are_registered_with_peft_whatever_the_import_order(imports: str) -> None:
    out = _run(
        f"{imports}\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m\n"
        "print(m['MOC'].__name__, m['MOLEX'].__name__)"
    )
    assert out == "MocConfig MolexConfig"
