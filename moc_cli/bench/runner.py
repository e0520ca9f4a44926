"""Running one cell of the accuracy study: the `moc train` overrides it resolves to, the run itself
through the project's runner (`load_run_config` + `run_training`), and the fields its record keeps,
MoC's routing diagnostics included (read from the run's own logs and adapter).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moc_cli.bench.data import task_data_dir, train_steps
from moc_cli.bench.errors import AccuracyError
from moc_cli.bench.study import Cell


@dataclass(frozen=True)
class Settings:
    """How cells run here (not part of their identity)."""

    work_dir: Path
    model_path: Path
    device: str  # cuda | cpu (resolved)
    threads: int = 1
    keep_weights: bool = False
    workers: int = 0  # cells running at once (0: in the calling process)


CellRunner = Callable[[Cell, Settings], dict[str, Any]]


def cell_overrides(cell: Cell, run_dir: Path, model_path: Path, data_dir: Path) -> list[str]:
    """The `key=value` overrides `load_run_config` resolves for the cell (what `moc train` takes)."""
    b = cell.budget
    steps = train_steps(cell, data_dir)
    overrides = [
        f"model.name_or_path={model_path}",
        "model.dtype=float32",
        f"task.name={cell.task}",
        f"task.max_length={b.max_length}",
        f"data.path={data_dir}",
        f"seed={cell.seed}",
        *cell.overrides,
        f"training.learning_rate={cell.learning_rate!r}",
        f"training.num_train_epochs={b.epochs!r}",
        f"training.max_steps={cell.max_steps or -1}",
        f"training.per_device_train_batch_size={b.batch_size}",
        f"training.per_device_eval_batch_size={b.eval_batch_size}",
        f"training.warmup_steps={b.warmup_ratio}",
        f"training.weight_decay={b.weight_decay}",
        "training.lr_scheduler_type=linear",
        'training.eval_strategy="no"',  # quoted: a bare no parses as false
        'training.save_strategy="no"',
        "training.report_to=[]",
        # About ten points of loss and routing statistics over training.
        f"training.logging_steps={max(1, steps // 10)}",
        f"training.bf16={'true' if cell.precision == 'bf16' else 'false'}",
        f"output.dir={run_dir}",
        "output.overwrite=true",
        "output.progress=none",
    ]
    if b.train_rows:
        overrides.insert(5, f"data.max_train_samples={b.train_rows}")
    return overrides


def _routing_diagnostics(results: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """MoC's routing at the end of training, read from the run's own records (not recomputed):
    the final evaluation's routing (eval/results.json), the training windows' entropy and expert
    utilisation (logs/metrics.jsonl), and where the router and a learnable α ended (adapter)."""
    routing = results.get("routing")
    trajectory = []
    metrics_file = run_dir / "logs" / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            event = json.loads(line) if line.strip() else {}
            if event.get("kind") == "train" and "moc_routing_entropy" in event:
                trajectory.append(
                    [
                        event["step"],
                        round(float(event["moc_routing_entropy"]), 4),
                        round(float(event.get("moc_expert_utilization", float("nan"))), 4),
                        round(float(event.get("moc_balance_loss", float("nan"))), 4),
                    ]
                )
    if not routing and not trajectory:
        return None
    out: dict[str, Any] = {"train_trajectory": trajectory}  # [step, entropy, utilisation, balance loss]
    if routing:
        matrices = routing.get("routing_matrix") or {}
        experts = max((len(rows[0]) for rows in matrices.values() if rows), default=0)
        out["experts"] = experts
        out["entropy"] = routing.get("routing_entropy")
        out["entropy_max"] = math.log(experts) if experts > 1 else None
        out["expert_utilization"] = routing.get("moc_expert_utilization")
        diagonal = [rows[i][i] for rows in matrices.values() for i in range(min(len(rows), len(rows[0])))]
        # Share of tokens whose top-1 expert is their own layer's control.
        out["self_share"] = sum(diagonal) / len(diagonal) if diagonal else None
        top = [max(row) for rows in matrices.values() for row in rows]
        out["top_expert_share"] = sum(top) / len(top) if top else None
    out.update(_adapter_state(run_dir / "adapter"))
    return out


def _adapter_state(adapter_dir: Path) -> dict[str, Any]:
    """Router weight spread (initialised N(0, 0.02)) and learnable α from the saved adapter."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return {}
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(str(weights), framework="pt") as fh:
        for name in fh.keys():  # noqa: SIM118  (safe_open is not a mapping)
            if ".router." in name or name.endswith("alpha_logit"):
                tensor = fh.get_tensor(name).float()
                if name.endswith("alpha_logit"):
                    alpha = tensor.sigmoid()
                    out["alpha"] = {
                        "mean": round(float(alpha.mean()), 4),
                        "min": round(float(alpha.min()), 4),
                        "max": round(float(alpha.max()), 4),
                    }
                else:
                    out.setdefault("router_std", {})[name.rsplit(".", 1)[-1]] = round(float(tensor.std()), 5)
    return out


def device_name() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    from moc_cli.environment import cpu_model

    return f"cpu ({cpu_model()})"


def run_cell(cell: Cell, settings: Settings) -> dict[str, Any]:
    """Train and evaluate one cell with the project's runner; returns its result fields."""
    import torch

    import moc_cli  # noqa: F401  (registers MoC with peft)
    from moc_cli.config import load_run_config
    from moc_cli.reliability import NonFiniteLossError
    from moc_cli.training import run_training

    torch.set_num_threads(settings.threads)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise AccuracyError("--device cuda: torch sees no CUDA device in this process")
    if settings.device == "cpu" and torch.cuda.is_available():
        raise AccuracyError(
            "--device cpu: this process already sees a GPU, which Trainer would pick; use --workers 1 "
            "(workers hide the GPU) or set CUDA_VISIBLE_DEVICES= before starting"
        )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run_dir = Path(settings.work_dir) / cell.slug
    data_dir = task_data_dir(cell.task, settings.work_dir)
    cfg, provenance = load_run_config(
        None, None, cell_overrides(cell, run_dir, settings.model_path, data_dir)
    )
    started = time.perf_counter()
    try:
        root = Path(run_training(cfg, provenance))
    except NonFiniteLossError as exc:
        return {
            "status": "diverged",
            "value": None,
            "diverged_at_step": exc.step,
            "wall_s": round(time.perf_counter() - started, 1),
            "run_dir": str(run_dir),
        }
    wall = time.perf_counter() - started
    gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    if settings.device == "cuda" and gpu_peak == 0:
        # Trainer picks CUDA by itself when it sees one; a run that never allocated there trained on the CPU.
        raise AccuracyError("--device cuda: the cell allocated no GPU memory, so it trained on the CPU")
    results = json.loads((root / "eval" / "results.json").read_text())
    main_key = results["main_metric"]
    summary = results["summary"]
    split = summary.get("eval_split") or next(iter(results["metrics"]))
    metrics = results["metrics"][split]
    train_end = {}
    metrics_file = root / "logs" / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            event = json.loads(line) if line.strip() else {}
            if event.get("kind") == "train_end":
                train_end = event
    out = {
        "status": "ok",
        "metric": main_key.removeprefix("eval_"),
        "value": float(metrics[main_key]),
        "split": split,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "trainable_params": summary.get("trainable_parameters"),
        "global_step": train_end.get("step"),
        "train_runtime_s": train_end.get("train_runtime"),
        "wall_s": round(wall, 1),
        "gpu_peak_mib": round(gpu_peak / 2**20, 1) if gpu_peak else None,
        "diagnostics": _routing_diagnostics(results, root),
        "run_dir": str(root),
    }
    if not settings.keep_weights:
        # The study needs the scores; a full fine-tuning cell alone would leave 90 MB behind.
        import shutil

        shutil.rmtree(root / "adapter", ignore_errors=True)
    return out
