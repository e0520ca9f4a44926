"""`moc` in a subprocess, optionally with the stand-in runner: `python sweep_driver.py [--fake SECONDS] ARGS`."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--fake"]:
        from sweep_helpers import FakeRunner

        import moc_cli.training

        moc_cli.training.run_training = FakeRunner(sleep=float(args[1]))
        args = args[2:]
    from moc_cli.cli.app import main

    sys.argv = ["moc", *args]
    main()
