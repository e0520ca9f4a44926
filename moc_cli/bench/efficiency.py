"""Efficiency benchmark: trainable parameters, bytes saved for backward, peak memory and step time.

For one model, batch size and sequence length, every method is built through the runner's
`apply_method` and trained on the same random batch:

- **saved bytes**: distinct storages saved for backward during one training step
  (`saved_tensors_hooks`; deterministic, independent of machine load);
- **peak memory**: on CUDA the peak allocated bytes of a step; on CPU the peak RSS increase while
  training (model already built), measured per method in a fresh subprocess so that methods do not
  share an allocator (glibc is told to return large blocks to the OS so RSS tracks live memory);
- **step time**: median of forward + backward + optimizer step, after warm-up, with all methods
  interleaved round by round so that machine-load drift hits every method alike. Each MoC variant
  is timed right after its same-site Control and every other round runs in reverse order (ABBA),
  and time ratios are the median over rounds of the ratio within a round, so slow drift of a
  shared machine cancels out of the comparison instead of landing on whichever method ran later.

The jobs live in their own modules: `workload` (model, batch, step, saved bytes), `timing` (the
interleaved rounds), `rss` (the subprocess probe) and `store` (`efficiency.json`); this module runs
them for one benchmark invocation. What is written besides the store is the caller's choice:
`moc bench` writes the plain tables of `tables.py`, `benchmarks/efficiency.py` the study report.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from moc_cli.bench.errors import EfficiencyError
from moc_cli.bench.methods import METHOD_NAMES, REFERENCE_METHOD, method_sections
from moc_cli.bench.rss import measure_rss_subprocess
from moc_cli.bench.store import RESULTS_JSON, load_runs, store_run, stored_run
from moc_cli.bench.tables import write_efficiency_tables
from moc_cli.bench.timing import measure_in_process
from moc_cli.bench.workload import model_and_batch, resolve_benchmark_model, saved_bytes_of_step

ReportWriter = Callable[[list[dict[str, Any]], Path], Path]


def run_efficiency(
    model: str,
    methods: Sequence[str] | None,
    batch_size: int,
    seq_len: int,
    steps: int,
    warmup: int,
    rounds: int,
    threads: int,
    measure_rss: bool,
    rss_steps: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One benchmark run (one model, batch size, sequence length): a JSON-ready record."""
    import torch

    from moc_cli.environment import machine_info

    torch.set_num_threads(threads)
    bench_model = resolve_benchmark_model(model)
    available = method_sections(bench_model.model_type)
    chosen = list(methods) if methods else list(available)
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise EfficiencyError(f"--method {unknown[0]!r} is unknown; choose from {', '.join(available)}")
    if REFERENCE_METHOD not in chosen:
        chosen.insert(0, REFERENCE_METHOD)  # every figure is reported relative to Control
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = machine_info(threads)
    started = time.time()
    results = measure_in_process(
        bench_model, chosen, batch_size, seq_len, steps, warmup, rounds, device=device, log=log
    )
    # The load that matters for step times is the one while they were measured, before the RSS runs.
    meta["load_average_after_timing"] = list(os.getloadavg())
    meta["steps_interleaved"] = device == "cpu" and steps > 0  # see measure_in_process
    run = {
        "model": bench_model.label,
        "model_source": bench_model.source,
        "model_type": bench_model.model_type,
        "kind": bench_model.kind,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "device": device,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(started)),
        "machine": meta,
        "methods": [
            {**asdict(results[m]), "median_step_s": results[m].median_step_s, "description": ""}
            for m in chosen
        ],
    }
    if device == "cpu" and measure_rss:
        measure_peak_rss(run, chosen, threads, rss_steps, log=log)
    meta["load_average_end"] = list(os.getloadavg())
    run["wall_s"] = round(time.time() - started, 1)
    return run


def measure_peak_rss(
    run: dict[str, Any],
    methods: Sequence[str],
    threads: int,
    rss_steps: int = 2,
    log: Callable[[str], None] = print,
) -> None:
    """Fill in the peak RSS increase of `methods` in `run`, each in a fresh process."""
    rows = {r["method"]: r for r in run["methods"]}
    for method in methods:
        peak = measure_rss_subprocess(
            run["model"], method, run["batch_size"], run["seq_len"], rss_steps, threads
        )
        rows[method]["peak_bytes"] = peak
        rows[method]["peak_kind"] = f"peak RSS increase over {rss_steps} training steps (fresh process)"
        log(f"[{run['model']} seq={run['seq_len']}] {method}: peak RSS +{peak / 2**20:.1f} MiB")


def measure_saved_bytes(
    run: dict[str, Any], methods: Sequence[str], log: Callable[[str], None] = print
) -> None:
    """Re-measure the bytes saved for backward of `methods` in `run` (one forward each, no timing)."""
    import torch

    bench_model = resolve_benchmark_model(run["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = {r["method"]: r for r in run["methods"]}
    for method in methods:
        model, batch = model_and_batch(bench_model, method, run["batch_size"], run["seq_len"], device)
        rows[method]["saved_bytes"] = saved_bytes_of_step(model, batch)
        log(
            f"[{run['model']} seq={run['seq_len']}] {method}: saved {rows[method]['saved_bytes'] / 2**20:.1f} MiB"
        )
        del model, batch
        gc.collect()


def run_efficiency_benchmark(
    models: Sequence[str],
    methods: Sequence[str] | None,
    batch_size: int,
    seq_lens: Sequence[int],
    steps: int,
    warmup: int,
    rounds: int,
    threads: int,
    measure_rss: bool,
    output_dir: Path,
    command: str,
    log: Callable[[str], None] = print,
    rss_only: bool = False,
    saved_only: bool = False,
    write_report: ReportWriter = write_efficiency_tables,
) -> Path:
    """Run every (model, sequence length), merge into `efficiency.json`, then `write_report(runs,
    output_dir)` over every stored run (default: the plain tables) and return what it returns.

    With `rss_only` (peak RSS, fresh processes) and/or `saved_only` (bytes saved for backward), only
    that figure of the stored run of each (model, batch size, sequence length) is measured again and
    filled in, keeping its timings.
    """
    if methods:
        unknown = [m for m in methods if m not in METHOD_NAMES]
        if unknown:
            raise EfficiencyError(
                f"--method {unknown[0]!r} is unknown; choose from {', '.join(METHOD_NAMES)}"
            )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    store = output_dir / RESULTS_JSON
    flag = " ".join(f for f, on in (("--rss-only", rss_only), ("--saved-only", saved_only)) if on)
    for model in models:
        for seq_len in seq_lens:
            if flag:
                run = stored_run(store, model, batch_size, seq_len, flag)
                stored = [m["method"] for m in run["methods"]]
                missing = [m for m in methods or [] if m not in stored]
                if missing:
                    raise EfficiencyError(
                        f"{flag}: the stored run of --model {model} --batch-size {batch_size} "
                        f"--seq-len {seq_len} has no method {missing[0]!r}; it has {', '.join(stored)}"
                    )
                if saved_only:
                    measure_saved_bytes(run, methods or stored, log=log)
                    run["saved_command"] = command
                if rss_only:
                    measure_peak_rss(run, methods or stored, threads, log=log)
                    run["rss_command"] = command
            else:
                run = run_efficiency(
                    model, methods, batch_size, seq_len, steps, warmup, rounds, threads, measure_rss, log=log
                )
                run["command"] = command
            store_run(store, run)
    return write_report(load_runs(store), output_dir)
