"""How a run stops early: Ctrl-C and SIGTERM (a checkpoint, then an exit), and what it tells the user."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from moc_cli.training.errors import RunInterrupted
from moc_cli.training.run_dir import RunDir


class RunTerminated(RunInterrupted):
    """Training stopped on SIGTERM (after saving a resumable checkpoint when a step had completed).

    SIGTERM is what `timeout`, Docker, Kubernetes and SLURM send before killing a job; it gets the
    Ctrl-C treatment, and the CLI exits with 143 (128 + SIGTERM), the code a shell reports for it.
    """

    exit_code = 143

    def __init__(self, checkpoint: str | None, hint: str = "") -> None:
        super().__init__(checkpoint)
        saved = f"; checkpoint saved at {checkpoint}" if checkpoint else "; no step had completed"
        self.cli_message = f"training stopped by SIGTERM{saved}{hint}"


class SigtermHandler:
    """SIGTERM handling for one run: a graceful stop while the training loop runs, else an exit.

    While `interrupt` (the run's InterruptCallback) is set, the first SIGTERM marks a stop as
    pending exactly like Ctrl-C: the step finishes, a checkpoint is saved, training stops. Outside
    the loop (loading, final evaluation), or on a second signal, it raises KeyboardInterrupt, which
    the runner turns into RunTerminated.
    """

    def __init__(self) -> None:
        self.received = False
        self.interrupt: Any = None
        self._previous: Any = None
        self._installed = False

    def __call__(self, signum: int, frame: Any) -> None:
        first = not self.received
        self.received = True
        if first and self.interrupt is not None and not self.interrupt.pending:
            self.interrupt.request_stop()
            print("\nSIGTERM: saving a checkpoint at the end of this step, then exiting", file=sys.stderr)
            return
        raise KeyboardInterrupt

    def install(self) -> None:
        import signal
        import threading

        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self)
            self._installed = True

    def uninstall(self) -> None:
        import signal

        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def stopped(checkpoint: str | None, sigterm: SigtermHandler) -> RunInterrupted:
    return RunTerminated(checkpoint) if sigterm.received else RunInterrupted(checkpoint)


def report_interrupt(checkpoint: Path | None, run: RunDir, sigterm: bool = False) -> None:
    what = "Stopped by SIGTERM" if sigterm else "Interrupted"
    if checkpoint is None:
        print(f"{what} before the first step completed; nothing to resume.", file=sys.stderr)
    else:
        print(
            f"{what}: saved a resumable checkpoint at {checkpoint}\n"
            f"Continue with: moc train ... --output-dir {run.root} --resume auto",
            file=sys.stderr,
        )


def report_divergence(exc: Exception, run: RunDir) -> None:
    """Name the checkpoint a diverged run can restart from (the guard stopped before saving its step)."""
    from moc_cli.reliability.checkpoints import find_resume_checkpoint

    last_good = find_resume_checkpoint(run.checkpoints)
    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
    print(f"Training diverged at step {getattr(exc, 'step', '?')}; {where}.", file=sys.stderr, flush=True)
