"""End-of-run summary: main metric, parameter counts, wall time, peak memory; and clean metric dicts."""

from __future__ import annotations

import sys
from typing import Any

# Timing keys differ between otherwise identical evaluations; results files keep only the metrics.
_VOLATILE_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_preparation_time")


def stable_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics without timing entries, as plain floats."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if not key.endswith(_VOLATILE_SUFFIXES) and isinstance(value, (int, float)) and key != "epoch"
    }


def peak_memory() -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated when a GPU is used, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "CUDA max allocated"
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is KiB on Linux, bytes on macOS.
        return int(peak if sys.platform == "darwin" else peak * 1024), "peak RSS"
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss)), "peak RSS"


def summary_record(
    *,
    main_metric: str | None,
    main_value: float | None,
    split: str | None,
    trainable: int,
    total: int,
    wall_time: float,
    global_step: int,
) -> dict[str, Any]:
    peak, peak_kind = peak_memory()
    return {
        "main_metric": main_metric,
        "main_metric_value": main_value,
        "eval_split": split,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100.0 * trainable / max(total, 1),
        "wall_time_seconds": wall_time,
        "global_step": global_step,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
    }


def format_summary(summary: dict[str, Any], run_dir: str) -> str:
    """A short fixed-width table for the console."""
    if summary.get("main_metric") and summary.get("main_metric_value") is not None:
        metric = f"{summary['main_metric']} = {summary['main_metric_value']:.4f} ({summary['eval_split']})"
    else:
        metric = "n/a (no eval split)"
    rows = [
        ("main metric", metric),
        (
            "trainable params",
            f"{summary['trainable_parameters']:,} / {summary['total_parameters']:,} "
            f"({summary['trainable_percent']:.3f} %)",
        ),
        ("steps", str(summary["global_step"])),
        ("wall time", f"{summary['wall_time_seconds']:.1f} s"),
        ("peak memory", f"{summary['peak_memory_bytes'] / 2**20:.1f} MiB ({summary['peak_memory_kind']})"),
        ("run dir", run_dir),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["Run summary", "-" * 11] + [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
