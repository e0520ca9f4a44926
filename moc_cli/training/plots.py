"""PNG plots of a run: loss/metric curves and the MoC routing heat map (layer x borrowed expert).

Uses matplotlib's Agg canvas directly (no pyplot), so plotting never needs a display and never
changes the backend of the process that called us.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(events: list[dict[str, Any]], main_metric: str | None, path: Path) -> Path | None:
    """Training loss, eval loss and the eval main metric against the step; None if nothing was logged."""
    train = [
        (e["step"], e["loss"])
        for e in events
        if e.get("kind") == "train" and isinstance(e.get("loss"), float)
    ]
    evals = [e for e in events if e.get("kind") == "eval"]
    eval_loss = [(e["step"], e["eval_loss"]) for e in evals if isinstance(e.get("eval_loss"), float)]
    metric_key = f"eval_{main_metric}" if main_metric else None
    metric = [
        (e["step"], e[metric_key])
        for e in evals
        if metric_key and isinstance(e.get(metric_key), (int, float))
    ]
    if not (train or eval_loss or metric):
        return None

    fig = _figure(10 if metric else 6, 4)
    axes = fig.subplots(1, 2 if metric else 1, squeeze=False)[0]
    ax = axes[0]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if eval_loss:
        ax.plot(*zip(*eval_loss, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if metric:
        ax = axes[1]
        ax.plot(*zip(*metric, strict=True), marker="o", color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel(main_metric)
        ax.set_title(f"eval {main_metric}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_routing(routing_matrix: dict[str, list[list[float]]], path: Path) -> Path | None:
    """One heat map per control site: row = layer, column = expert (the layer whose control is borrowed)."""
    sites = {site: matrix for site, matrix in (routing_matrix or {}).items() if matrix and matrix[0]}
    if not sites:
        return None
    import numpy as np

    fig = _figure(4.5 * len(sites), 4)
    axes = fig.subplots(1, len(sites), squeeze=False)[0]
    for ax, (site, matrix) in zip(axes, sites.items(), strict=False):
        data = np.asarray(matrix, dtype=float)
        image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_title(f"routing: {site}")
        ax.set_xlabel("borrowed expert (layer index)")
        ax.set_ylabel("layer")
        ax.set_xticks(range(data.shape[1]))
        ax.set_yticks(range(data.shape[0]))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
