"""The end of a run: final evaluation, the adapter saved atomically with its card, plots, results.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.atomic_dir import replace_dir
from moc_cli.training.run_dir import RunDir, write_json

if TYPE_CHECKING:
    from transformers import Trainer

    from moc_cli.config import RunConfig
    from moc_cli.tasks.base import Task
    from moc_cli.training.run_context import RunContext, TrainingParts

# What `trainer.save_model` writes for an adapter, a full model, or a sharded full model.
_FINAL_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def wait_for_everyone() -> None:
    """Barrier across the processes of a launch (no-op in a single process)."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _fsdp_sharded_state_dict(trainer: Trainer) -> bool:
    """FSDP set to save sharded state dicts, for which `Trainer.save_model` writes no weights at all."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return False
    return "FULL_STATE_DICT" not in str(trainer.accelerator.state.fsdp_plugin.state_dict_type)


def save_final_adapter(trainer: Trainer, run: RunDir, card: str | None) -> None:
    """Write adapter + model card to a temp dir beside `adapter/`, then swap it in atomically.

    Every process calls this: `save_model` is a collective under FSDP/DeepSpeed, so all ranks save
    into the same fixed temporary folder; the main process (the only one given a `card`) then adds
    the README and swaps the folder in.
    """
    import shutil

    main = trainer.is_world_process_zero()
    tmp = run.root / f".{run.adapter.name}.saving"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
    wait_for_everyone()
    try:
        if _fsdp_sharded_state_dict(trainer):
            from moc_cli.training.sharded_save import save_adapter_from_sharded

            peft_model = trainer.accelerator.unwrap_model(trainer.model)
            save_adapter_from_sharded(trainer.model_wrapped, peft_model, tmp, main, trainer.processing_class)
        else:
            trainer.save_model(str(tmp))
        wait_for_everyone()  # every rank's part of the save is on disk
        if not main:
            return
        if not any((tmp / name).is_file() for name in _FINAL_WEIGHTS):
            # A distributed engine whose save_model wrote nothing (e.g. DeepSpeed without gathering).
            raise RuntimeError(
                f"the final save wrote no weights ({' or '.join(_FINAL_WEIGHTS)}) into {tmp}; with DeepSpeed "
                "ZeRO-3 set stage3_gather_16bit_weights_on_model_save: true"
            )
        # A pickle of TrainingArguments; config.yaml already records them, and loading needs no pickle.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        (tmp / "README.md").write_text(card or "", encoding="utf-8")
        replace_dir(tmp, run.adapter)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish(ctx: RunContext, parts: TrainingParts) -> Path:
    """Final evaluation of every eval split, the adapter and its card, plots and results.json."""
    from moc_cli.model_card import CardFacts, render_model_card
    from moc_cli.models import auto_class_name
    from moc_cli.training.callbacks import read_metrics
    from moc_cli.training.plots import plot_curves, plot_routing
    from moc_cli.training.scoring import evaluate_split, generation_metrics, last_step_evaluation
    from moc_cli.training.summary import format_summary, stable_metrics, summary_record

    trainer, task, data, run, routing = parts.trainer, parts.task, parts.data, ctx.run, parts.routing
    cfg = ctx.cfg

    # Evaluation is a collective (every rank scores its shard, Trainer gathers); everything written
    # to the run directory (samples, adapter card, plots, results) comes from the main process.
    main_process = trainer.is_world_process_zero()
    split_metrics: dict[str, dict[str, float]] = {}
    routing_record: dict[str, Any] | None = None
    for split in data.eval_splits:
        logged = last_step_evaluation(trainer, routing is not None) if split == data.eval_splits[0] else None
        if logged is not None:
            # Trainer evaluated this split on these very weights at the last step: reuse that
            # evaluation (and its routing counts) instead of running it twice; the log still gets
            # its final_eval record.
            metrics = stable_metrics(task.finalize_metrics(logged))
            parts.metrics_log.on_log(trainer.args, trainer.state, trainer.control, logs=dict(logged))
            if routing is not None:
                routing_record = routing.last_eval_stats
        else:
            if routing is not None and split == data.eval_splits[0]:
                routing.reset()
            metrics = evaluate_split(trainer, task, data, split)
            if routing is not None and split == data.eval_splits[0]:
                routing_record = routing.last_eval_stats
        if task.kind == "causal_lm":
            # On every rank, so that no rank waits at the next barrier for the whole generation
            # (it could outlast the process group timeout); only the main process writes samples.
            out_dir = run.eval if main_process else None
            metrics.update(
                generation_metrics(trainer.model, trainer.processing_class, task, data, split, out_dir)
            )
        split_metrics[split] = metrics

    main_split = data.eval_splits[0] if data.eval_splits else None
    main_key = f"eval_{task.main_metric}"
    if main_split and main_key not in split_metrics[main_split]:
        main_key = "eval_loss"
    main_value = split_metrics[main_split].get(main_key) if main_split else None

    if not main_process:
        save_final_adapter(trainer, run, None)
        return run.root

    facts = CardFacts(
        method=cfg.method.name,
        # As the user named it: the folder it resolved to may lie inside this machine's virtualenv.
        base_model=cfg.model.name_or_path or parts.source,
        task=task.name,
        auto_class=auto_class_name(task.kind),
        recipe=cfg.recipe or "custom config",
        dataset=_dataset_name(cfg, task),
        metrics=split_metrics.get(main_split, {}) if main_split else {},
        trainable_params=parts.trainable,
        total_params=parts.total,
    )
    card = render_model_card(facts)
    save_final_adapter(trainer, run, card)

    events = read_metrics(run.metrics)
    plot_curves(
        events, task.main_metric if main_key != "eval_loss" else None, run.plots / "training_curves.png"
    )
    if routing_record and routing_record.get("routing_matrix"):
        plot_routing(routing_record["routing_matrix"], run.plots / "routing_heatmap.png")

    summary = summary_record(
        main_metric=main_key if main_split else None,
        main_value=main_value,
        split=main_split,
        trainable=parts.trainable,
        total=parts.total,
        wall_time=time.perf_counter() - ctx.started,
        global_step=trainer.state.global_step,
    )
    results: dict[str, Any] = {
        "task": task.name,
        "main_metric": main_key if main_split else None,
        "greater_is_better": task.greater_is_better if main_key != "eval_loss" else False,
        "metrics": split_metrics,
        "summary": summary,
    }
    if routing_record:
        results["routing"] = routing_record
    write_json(run.results, results)
    print(format_summary(summary, str(run.root)), flush=True)
    return run.root


def _dataset_name(cfg: RunConfig, task: Task) -> str | None:
    data = cfg.data
    if data.files:
        return ", ".join(f"{split}: {Path(path).name}" for split, path in data.files.items())
    if data.path:
        return data.path + (f" ({data.name})" if data.name else "")
    if task.hub_path:
        return f"{task.hub_path}" + (f" ({task.hub_name})" if task.hub_name else "")
    return None
