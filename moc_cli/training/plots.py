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
    fig = curves_figure(events, main_metric)
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def curves_figure(events: list[dict[str, Any]], main_metric: str | None) -> Any:
    """The matplotlib Figure `plot_curves` saves (None when nothing was logged)."""
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

    from matplotlib.ticker import MaxNLocator

    fig = _figure(10 if metric else 6, 4)
    axes = fig.subplots(1, 2 if metric else 1, squeeze=False)[0]
    ax = axes[0]
    if train:
        # Markers while the points are few: a single logged loss is otherwise an invisible line.
        ax.plot(*zip(*train, strict=True), marker="o" if len(train) <= 30 else None, label="train loss")
    if eval_loss:
        ax.plot(*zip(*eval_loss, strict=True), marker="s", label="eval loss")
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
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    fig.tight_layout()
    return fig


# What a cell of the routing matrix holds (moc_cli.tuner.state: top-1 counts over the row's total).
ROUTING_COLORBAR_LABEL = "share of the layer's tokens whose top-1 pick is this expert"


def plot_routing(routing_matrix: dict[str, list[list[float]]], path: Path) -> Path | None:
    """One heat map per control site: row = layer, column = expert (the layer whose control is borrowed)."""
    fig = routing_figure(routing_matrix)
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def routing_figure(routing_matrix: dict[str, list[list[float]]]) -> Any:
    """The matplotlib Figure `plot_routing` saves (None without routing counts)."""
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
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(ROUTING_COLORBAR_LABEL)
    fig.tight_layout()
    return fig
