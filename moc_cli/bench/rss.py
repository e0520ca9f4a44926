"""Peak resident memory of training one method, measured in a fresh subprocess per method.

The parent starts `python -m moc_cli.bench.rss --probe-rss SPEC`; the child builds the model, batch
and optimizer, resets the RSS high-water mark (`/proc/self/clear_refs`), trains a few steps and
prints the increase. A fresh process per method keeps methods from sharing an allocator, and glibc
is told to return large blocks to the OS so that RSS tracks live memory. Linux only.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from moc_cli.bench.errors import EfficiencyError
from moc_cli.bench.workload import make_optimizer, model_and_batch, resolve_benchmark_model, train_step


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise EfficiencyError(f"/proc/self/status has no {key}; peak RSS needs Linux")


def probe_peak_rss(
    model_label: str, method: str, batch_size: int, seq_len: int, steps: int, threads: int
) -> int:
    """Runs inside the subprocess: peak RSS increase (bytes) over `steps` training steps.

    The baseline is the resident size with the model built, the batch made and the optimizer
    created; the peak is the high-water mark (reset through /proc/self/clear_refs) during the steps,
    so it covers activations, gradients and optimizer state.
    """
    import torch

    torch.set_num_threads(threads)
    bench_model = resolve_benchmark_model(model_label)
    model, batch = model_and_batch(bench_model, method, batch_size, seq_len)
    optimizer = make_optimizer(model)
    gc.collect()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    for _ in range(steps):
        train_step(model, optimizer, batch)
    return (_status_kib("VmHWM") - baseline) * 1024


def measure_rss_subprocess(
    model_label: str, method: str, batch_size: int, seq_len: int, steps: int, threads: int
) -> int:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        # A fixed mmap threshold disables glibc's dynamic one: large tensors are mmapped and handed
        # back to the OS when freed, so RSS follows live memory instead of the allocator's cache.
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "moc_cli.bench.rss",
        "--probe-rss",
        json.dumps(
            {
                "model": model_label,
                "method": method,
                "batch_size": batch_size,
                "seq_len": seq_len,
                "steps": steps,
                "threads": threads,
            }
        ),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-RSS probe for {method} failed:\n{proc.stderr[-2000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("PEAK_RSS_BYTES="):
            return int(line.split("=", 1)[1])
    raise RuntimeError(f"peak-RSS probe for {method} printed no result:\n{proc.stdout[-2000:]}")


def _probe_main(argv: list[str]) -> int:
    spec = json.loads(argv[argv.index("--probe-rss") + 1])
    peak = probe_peak_rss(
        spec["model"], spec["method"], spec["batch_size"], spec["seq_len"], spec["steps"], spec["threads"]
    )
    print(f"PEAK_RSS_BYTES={peak}")
    return 0


if __name__ == "__main__":
    if "--probe-rss" in sys.argv:
        import moc_cli  # noqa: F401  (registers MoC and MoLEx with peft)

        raise SystemExit(_probe_main(sys.argv))
    raise SystemExit("use `moc bench efficiency` or benchmarks/efficiency.py")
