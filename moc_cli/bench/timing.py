"""Interleaved step timing (ABBA): parameters, saved bytes and step times of the benchmarked methods.

All methods run round by round in one process so that machine-load drift hits every method alike.
Each MoC variant is timed right after its same-site Control, every other round runs in reverse
order, and time ratios are the median over rounds of the ratio within a round (`paired_time_ratio`),
so slow drift of a shared machine cancels out of the comparison instead of landing on whichever
method ran later.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moc_cli.bench.methods import SAME_SITE_CONTROL
from moc_cli.bench.workload import (
    BenchModel,
    make_optimizer,
    model_and_batch,
    saved_bytes_of_step,
    train_step,
)


@dataclass
class MethodResult:
    method: str
    trainable_params: int = 0
    total_params: int = 0
    saved_bytes: int = 0
    peak_bytes: int | None = None
    peak_kind: str = ""
    step_times: list[float] = field(default_factory=list)

    @property
    def median_step_s(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None


def timing_groups(methods: Sequence[str]) -> list[list[str]]:
    """`methods` in timing order, grouped: each Control with the MoC variants on its sites (when
    both are timed), every other method on its own."""
    groups: list[list[str]] = []
    placed: set[str] = set()
    for method in methods:
        if method in placed:
            continue
        control = SAME_SITE_CONTROL.get(method, method)
        group = [method]
        if control in methods:
            group = [control, *(m for m in methods if SAME_SITE_CONTROL.get(m) == control)]
        groups.append(group)
        placed.update(group)
    return groups


def timing_order(methods: Sequence[str]) -> list[str]:
    """`methods` with every MoC variant moved right after its same-site Control."""
    return [m for group in timing_groups(methods) for m in group]


def round_medians(step_times: Sequence[float], rounds: int) -> list[float]:
    """Median step time of each round (the timed steps of one round are stored contiguously)."""
    per_round = len(step_times) // rounds
    return [statistics.median(step_times[i * per_round : (i + 1) * per_round]) for i in range(rounds)]


def paired_time_ratio(row: dict[str, Any], reference: dict[str, Any], rounds: int) -> float | None:
    """Median over rounds of (row's round median / reference's round median): both were timed in
    the same round, so machine drift between rounds divides out."""
    if not row["step_times"] or not reference["step_times"]:
        return None
    pairs = zip(
        round_medians(row["step_times"], rounds), round_medians(reference["step_times"], rounds), strict=True
    )
    ratios = [a / b for a, b in pairs]
    return statistics.median(ratios)


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


def measure_in_process(
    bench_model: BenchModel,
    methods: Sequence[str],
    batch_size: int,
    seq_len: int,
    steps: int,
    warmup: int,
    rounds: int,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, MethodResult]:
    """Parameters and saved bytes (round 0), step times (every round).

    Rounds run the methods in alternating order (ABBA). On CPU, a Control and the MoC variants on
    its sites are built together and their timed steps alternate one by one, so that they see the
    same machine speed: a shared machine's speed drifts over seconds, faster than a block of steps.
    (On a GPU each method is timed alone, because the CUDA peak memory is read per method.)
    """
    import torch

    results = {m: MethodResult(m) for m in methods}
    if steps == 0:
        rounds, warmup = 1, 0  # no timing: only parameters and saved bytes
    interleave = device == "cpu"
    groups = timing_groups(methods) if interleave else [[m] for m in timing_order(methods)]
    for round_index in range(rounds):
        forward = round_index % 2 == 0
        for group in groups if forward else groups[::-1]:
            members = group if forward else group[::-1]
            live = {}
            for method in members:
                model, batch = model_and_batch(bench_model, method, batch_size, seq_len, device)
                optimizer = make_optimizer(model)
                res = results[method]
                if round_index == 0:
                    res.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                    res.total_params = sum(p.numel() for p in model.parameters())
                    res.saved_bytes = saved_bytes_of_step(model, batch)
                for _ in range(warmup):
                    train_step(model, optimizer, batch)
                live[method] = (model, optimizer, batch)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base_alloc = torch.cuda.memory_allocated()
            for step in range(steps):
                for method in members if step % 2 == 0 else members[::-1]:
                    model, optimizer, batch = live[method]
                    _sync(device)
                    start = time.perf_counter()
                    train_step(model, optimizer, batch)
                    _sync(device)
                    results[method].step_times.append(time.perf_counter() - start)
            for method in members:
                res = results[method]
                if device == "cuda" and steps > 0:
                    peak = torch.cuda.max_memory_allocated() - base_alloc
                    res.peak_bytes = max(res.peak_bytes or 0, peak)
                    res.peak_kind = "CUDA peak allocated above the idle model"
                timing = f"median {statistics.median(res.step_times[-steps:]):.3f}s, " if steps > 0 else ""
                log(
                    f"[{bench_model.label} seq={seq_len}] round {round_index + 1}/{rounds} {method}: "
                    f"{timing}saved {res.saved_bytes / 2**20:.1f} MiB"
                )
            del live
            gc.collect()
    return results
