"""`run_eval`: reload base + adapter from a run (or adapter) directory and score a split."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.training.errors import RunSetupError
from moc_cli.training.run_dir import write_json

if TYPE_CHECKING:
    from moc_cli.config import RunConfig


def locate(path: Path) -> tuple[Path, Path | None, Path]:
    """(adapter dir, saved config.yaml or None, folder that receives eval/results.json)."""
    path = Path(path)
    if (
        (path / "adapter_config.json").is_file()
        or (path / "config.json").is_file()
        and not (path / "config.yaml").is_file()
    ):
        # An adapter folder (or a full fine-tuned model folder); inside a run dir, the run owns eval/.
        parent_cfg = path.parent / "config.yaml"
        if parent_cfg.is_file() and path.name == "adapter":
            return path, parent_cfg, path.parent
        own_cfg = path / "config.yaml"
        return path, own_cfg if own_cfg.is_file() else None, path
    if (path / "config.yaml").is_file():
        adapter = path / "adapter"
        if not adapter.is_dir():
            raise RunSetupError(
                f"{path} has no adapter/ folder: the run did not finish; resume it with "
                f"`moc train ... --output-dir {path} --resume auto`"
            )
        return adapter, path / "config.yaml", path
    raise RunSetupError(
        f"{path} is neither a run directory (config.yaml + adapter/) nor an adapter directory "
        "(adapter_config.json); pass the folder `moc train` printed"
    )


def eval_target(path: Path, split: str | None, overrides: list[str]) -> str:
    """The split `run_eval` scores, after checking that `path` is a run or adapter folder.

    Reads config.yaml and the task registry only (no torch, no model, no data), so a folder that
    is not a run is reported at once instead of after the libraries have loaded.
    """
    adapter, config_path, _ = locate(Path(path))
    cfg = _load_config(config_path, adapter, list(overrides or []))
    if split:
        return split
    from moc_cli.tasks.registry import get_task

    splits = list(get_task(cfg.task.name).eval_splits or [])
    if not splits:
        raise RunSetupError(f"task {cfg.task.name} has no evaluation split; pass --split NAME", "--split")
    return splits[0]


def _load_config(config_path: Path | None, adapter: Path, overrides: list[str]) -> RunConfig:
    from moc_cli.config import load_run_config

    if config_path is not None:
        cfg, _ = load_run_config(recipe=None, config_file=str(config_path), overrides=overrides)
        return cfg
    # A bare adapter: the base model comes from adapter_config.json, the task from the overrides.
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = adapter_cfg.get("base_model_name_or_path")
    if not base:
        raise RunSetupError(
            f"{adapter}/adapter_config.json has no base_model_name_or_path; pass model.name_or_path=..."
        )
    if not any(item.startswith("task.name=") for item in overrides):
        raise RunSetupError(
            f"{adapter} has no config.yaml, so the task is unknown; pass it as an override, e.g. task.name=glue/sst2",
            key="task.name",
        )
    cfg, _ = load_run_config(
        recipe=None, config_file=None, overrides=[f"model.name_or_path={base}", *overrides]
    )
    return cfg


def _build_eval_model(cfg: RunConfig, task: Any, adapter: Path) -> tuple[Any, Any]:
    """(model, tokenizer): base + adapter for peft runs, the saved model itself for full fine-tuning."""
    import transformers

    from moc_cli.models import build_model, build_tokenizer, resolve_source

    transformers.set_seed(cfg.seed)
    # Trainer saved the run's tokenizer (pad token included) next to the adapter; prefer it.
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    if (adapter / "adapter_config.json").is_file():
        adapter_cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        name = cfg.model.name_or_path or adapter_cfg.get("base_model_name_or_path")
        source = resolve_source(str(name))
        tokenizer = build_tokenizer(str(adapter) if has_tokenizer else source, cfg.model)
        base = build_model(source, task, cfg.model, tokenizer)
        from peft import PeftModel

        from moc_cli.reliability.compat import AdapterMismatchError, check_adapter_compatible

        # Before peft injects anything: a wrong base fails with both models named, not with a
        # size-mismatch traceback (or, for equal shapes, silently wrong scores).
        try:
            check_adapter_compatible(adapter, base)
        except AdapterMismatchError as exc:
            raise RunSetupError(f"{exc} Or pass model.name_or_path=<that base>.") from exc
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=False)
    else:
        tokenizer = build_tokenizer(str(adapter), cfg.model)
        model = build_model(str(adapter), task, cfg.model, tokenizer)
    model.eval()
    return model, tokenizer


def run_eval(path: Path, split: str | None, overrides: list[str]) -> dict[str, float]:
    """Metrics of a trained run on `split` (default: the task's first eval split), as at train time.

    Writes them into `eval/results.json` under `metrics[split]` (other content is kept).
    """
    from transformers import PrinterCallback, Trainer

    from moc_cli.training.arguments import training_arguments
    from moc_cli.training.callbacks import should_show_bar
    from moc_cli.training.data import load_run_data, load_task
    from moc_cli.training.scoring import evaluate_split, generation_metrics, quiet_progress

    adapter, config_path, out_root = locate(Path(path))
    cfg = _load_config(config_path, adapter, list(overrides or []))
    progress = cfg.output.progress
    show_bar = progress != "none" and should_show_bar(None if progress == "auto" else progress == "bar")
    quiet_progress(show_bar)

    task = load_task(cfg.task)
    model, tokenizer = _build_eval_model(cfg, task, adapter)
    seed = cfg.seed
    data = load_run_data(task, cfg.data, cfg.task, seed, tokenizer, need_train=False)
    split = split or (task.eval_splits[0] if task.eval_splits else None)
    if split is None or split not in data.features:
        available = ", ".join(data.features) or "none"
        raise RunSetupError(
            f"split {split!r} is not in the data of task {task.name} (available: {available})"
        )
    if not data.scorable(split):
        raise RunSetupError(
            f"split {split!r} of task {task.name} has no labels to score; use `moc predict` for unlabelled data"
        )

    eval_dir = out_root / "eval"
    # Same eval batch size and precision as at train time, so the numbers reproduce exactly.
    training_cfg = cfg.training.model_copy(
        update={"report_to": ["none"], "load_best_model_at_end": False, "metric_for_best_model": None}
    )
    args = training_arguments(
        training_cfg,
        output_dir=eval_dir,
        seed=seed,
        task=task,
        has_eval=False,  # no periodic eval: this Trainer only runs evaluate()
        has_compute_metrics=False,
        show_bar=show_bar,
    )
    trainer = Trainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        data_collator=task.data_collator(tokenizer),
    )
    # PrinterCallback would print the raw metrics dict to stdout (the CLI prints them itself).
    trainer.remove_callback(PrinterCallback)
    metrics = evaluate_split(trainer, task, data, split)
    if task.kind == "causal_lm":
        metrics.update(generation_metrics(model, tokenizer, task, data, split, eval_dir))

    results_path = eval_dir / "results.json"
    results: dict[str, Any] = {}
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            print(f"warning: replacing unreadable {results_path}", file=sys.stderr)
    results.setdefault("task", task.name)
    results.setdefault("metrics", {})[split] = metrics
    results.setdefault("evaluations", []).append(
        {
            "split": split,
            "overrides": list(overrides or []),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    write_json(results_path, results)
    return metrics
