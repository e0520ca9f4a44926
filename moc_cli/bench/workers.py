"""The accuracy study in worker subprocesses: `run_workers` starts N `python -m
moc_cli.bench.workers` processes (one torch thread each, no visible GPU for CPU cells) that share
one queue, reports finished cells as they land, and stops workers still training at deadline +
grace (their cells are not recorded).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

from moc_cli.bench.cell_queue import DEFAULT_GRACE_S, run_queue, utc_time
from moc_cli.bench.errors import AccuracyError
from moc_cli.bench.records import RESULTS_JSONL, load_finished
from moc_cli.bench.runner import CellRunner, Settings, run_cell
from moc_cli.bench.study import Budget, Cell


def _runner_spec(runner: CellRunner) -> str | None:
    """`file.py:function` for a runner other than `run_cell` (tests), loadable in a worker."""
    if runner is run_cell:
        return None
    module = sys.modules.get(runner.__module__)
    path = getattr(module, "__file__", None)
    if not path:
        raise AccuracyError("workers need a cell runner defined at the top level of a module file")
    return f"{path}:{runner.__name__}"


def load_runner(spec: str | None) -> CellRunner:
    if not spec:
        return run_cell
    import importlib.util

    path, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location(f"_accuracy_runner_{abs(hash(path))}", path)
    if module_spec is None or module_spec.loader is None:
        raise AccuracyError(f"--cell-runner {spec}: cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # so that workers started from here can find it again
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def worker_env(device: str, threads: int) -> dict[str, str]:
    """Environment of a worker process: its thread count pinned before torch loads, and no GPU
    visible when the cells run on the CPU (Trainer would otherwise pick CUDA by itself)."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    # The same moc_cli as the parent, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_workers(
    cells: Sequence[Cell],
    settings: Settings,
    output_dir: Path,
    scheduled_by: str,
    workers: int,
    runner: CellRunner = run_cell,
    log: Callable[[str], None] = print,
    deadline_at: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    log_dir: Path | None = None,
    poll_s: float = 2.0,
) -> dict[str, int]:
    """Run the queue in `workers` subprocesses (one torch thread each), reporting finished cells as
    they land; at deadline + grace, workers still training are stopped and their cells not recorded."""
    work_dir = Path(settings.work_dir)
    queues = work_dir / "queues"
    queues.mkdir(parents=True, exist_ok=True)
    queue_file = queues / f"queue-{os.getpid()}-{int(time.time() * 1000)}.json"
    queue_file.write_text(
        json.dumps(
            {
                "cells": [{**asdict(c), "budget": asdict(c.budget)} for c in cells],
                "settings": {
                    **asdict(settings),
                    "work_dir": str(work_dir),
                    "model_path": str(settings.model_path),
                },
                "output_dir": str(output_dir),
                "scheduled_by": scheduled_by,
                "deadline_at": deadline_at,
                "grace_s": grace_s,
                "runner": _runner_spec(runner),
            }
        )
    )
    log_dir = Path(log_dir) if log_dir else work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    store = Path(output_dir) / RESULTS_JSONL
    before = set(load_finished(store))
    wanted = {c.key for c in cells}
    env = worker_env(settings.device, settings.threads)
    procs: list[tuple[subprocess.Popen, Any]] = []
    for i in range(workers):
        handle = (log_dir / f"worker-{i}.log").open("a")
        cmd = [
            sys.executable,
            "-m",
            "moc_cli.bench.workers",
            "--worker-queue",
            str(queue_file),
            "--worker-id",
            str(i),
        ]
        # Own session: a stop reaches the worker's whole process group, never this process.
        procs.append(
            (
                subprocess.Popen(
                    cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
                ),
                handle,
            )
        )
    log(f"{workers} worker(s) started; logs in {log_dir}")
    reported: set[str] = set(before)
    killed = 0
    try:
        while True:
            alive = [p for p, _ in procs if p.poll() is None]
            for key, record in load_finished(store).items():
                if key in reported or key not in wanted:
                    continue
                reported.add(key)
                value = record.get("value")
                shown = "diverged" if value is None else f"{record.get('metric')} = {value:.4f}"
                done = len(wanted & reported)
                log(f"[{done}/{len(wanted)}] {key}: {shown} ({record.get('wall_s') or 0:.0f} s)")
            if not alive:
                break
            if deadline_at is not None and time.time() > deadline_at + grace_s:
                killed = len(alive)
                log(
                    f"deadline + {grace_s:g} s grace passed: stopping {killed} worker(s); their running cells are not recorded"
                )
                _stop(alive)
                continue
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop([p for p, _ in procs if p.poll() is None])
        raise
    finally:
        for _, handle in procs:
            handle.close()
        queue_file.unlink(missing_ok=True)
    ran = len(wanted & set(load_finished(store))) - len(wanted & before)
    failed = sum(1 for p, _ in procs if p.returncode not in (0, None)) if not killed else 0
    return {"ran": ran, "failed_workers": failed, "killed_workers": killed}


def _stop(procs: Sequence[subprocess.Popen], wait_s: float = 20.0) -> None:
    """SIGTERM each worker's process group, then SIGKILL what is left after `wait_s`."""
    for p in procs:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    end = time.time() + wait_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def worker_main(queue_file: Path, worker_id: int) -> int:
    """Entry of a worker process: run the shared queue until it is empty or the deadline passes."""
    spec = json.loads(Path(queue_file).read_text())
    s = spec["settings"]
    settings = Settings(
        work_dir=Path(s["work_dir"]),
        model_path=Path(s["model_path"]),
        device=s["device"],
        threads=s["threads"],
        keep_weights=s["keep_weights"],
        workers=s["workers"],
    )
    cells = [Cell(**{**c, "budget": Budget(**c["budget"])}) for c in spec["cells"]]
    runner = load_runner(spec.get("runner"))

    def log(message: str) -> None:
        print(f"{utc_time()} {message}", flush=True)

    counts = run_queue(
        cells,
        settings,
        Path(spec["output_dir"]),
        spec["scheduled_by"],
        runner=runner,
        log=log,
        deadline_at=spec.get("deadline_at"),
        grace_s=spec.get("grace_s", DEFAULT_GRACE_S),
        worker=worker_id,
    )
    log(f"worker {worker_id} finished: {counts}")
    return 0


def worker_entry(argv: Sequence[str]) -> int:
    """`python -m moc_cli.bench.workers --worker-queue FILE --worker-id N` (started by run_workers)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m moc_cli.bench.workers")
    parser.add_argument("--worker-queue", type=Path, required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    args = parser.parse_args(list(argv))
    return worker_main(args.worker_queue, args.worker_id)


if __name__ == "__main__":
    from moc_cli.bench.workers import worker_entry as _entry  # the importable copy, not __main__'s

    raise SystemExit(_entry(sys.argv[1:]))
