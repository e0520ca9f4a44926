"""`run_training`: one fine-tuning run from a resolved RunConfig to a complete run directory.

Three steps share one `RunContext`: `_set_up` (the run folder, its lock, the resume point),
`_train` (model, data, Trainer and the training loop, stopped cleanly by Ctrl-C or SIGTERM) and
`finish.finish` (final evaluation, adapter, card, plots, results).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.training.finish import finish, wait_for_everyone
from moc_cli.training.run_context import Once, RunContext, TrainingParts
from moc_cli.training.run_dir import (
    LOCK_NAME,
    RunDir,
    atomic_write_text,
    check_run_dir,
    clear_run_dir,
    environment_record,
    holds_only_a_failed_start,
    is_main_launch_process,
    run_lock,
    write_json,
)
from moc_cli.training.run_root import check_resume_config, resolve_run_root, resume_checkpoint
from moc_cli.training.stop_signals import (
    RunTerminated,
    SigtermHandler,
    report_divergence,
    report_interrupt,
    stopped,
)

if TYPE_CHECKING:
    from transformers import Trainer

    from moc_cli.config import RunConfig


def _note(message: str) -> None:
    if is_main_launch_process():
        print(message, file=sys.stderr, flush=True)


def run_training(
    cfg: RunConfig, provenance: dict[str, str], resume: str | None = None, callbacks: list[Any] | None = None
) -> Path:
    """Train as configured and return the run directory (see docs/ARCHITECTURE.md for its layout).

    `callbacks` are extra TrainerCallbacks (library use, tests); they run before the runner's
    Ctrl-C handling in every event.

    Raises RunSetupError for unusable settings (before anything heavy runs where possible),
    RunInterrupted (a KeyboardInterrupt) after saving a resumable checkpoint on Ctrl-C, RunTerminated
    (a RunInterrupted) likewise on SIGTERM, and SaveFailed when a save hits a full disk.
    """
    started = time.perf_counter()
    sigterm = SigtermHandler()
    sigterm.install()
    try:
        root = resolve_run_root(cfg, provenance, resume)
        if root.exists() and not root.is_dir():
            check_run_dir(root, overwrite=False, resuming=False)  # raises: names the file
        # Before anything else looks at the folder: a second run into it stops here.
        with run_lock(root):
            ctx = _set_up(cfg, provenance, root, resume, started, sigterm, list(callbacks or []))
            return _train(ctx)
    except KeyboardInterrupt as exc:
        if sigterm.received and not isinstance(exc, RunTerminated):
            raise RunTerminated(getattr(exc, "checkpoint", None)) from None
        raise
    finally:
        sigterm.uninstall()


def _set_up(
    cfg: RunConfig,
    provenance: dict[str, str],
    root: Path,
    resume: str | None,
    started: float,
    sigterm: SigtermHandler,
    extra_callbacks: list[Any],
) -> RunContext:
    """Check the run folder, pick the resume point and refuse frozen changes; nothing heavy loads."""
    from moc_cli.reliability.checkpoints import checkpoint_step, list_checkpoints

    resolved = cfg.model_copy(deep=True)
    resolved.output.dir = str(root)
    run = check_run_dir(root, overwrite=cfg.output.overwrite, resuming=resume is not None)
    restart = holds_only_a_failed_start(run)
    if resume == "auto" and not list_checkpoints(run.checkpoints) and (restart or not _has_entries(run)):
        # Nothing was ever saved here: `--resume auto` starts the run (the same command works for
        # the first attempt and every retry, as in a requeued batch job).
        _note(f"no checkpoint in {run.checkpoints} yet: starting from the beginning")
        resume = None
    elif resume is None and restart:
        _note(f"{run.root} holds a run that stopped before its first checkpoint: starting it again")
    resume_from = resume_checkpoint(resume, run)
    if resume_from is not None:
        applied = check_resume_config(run, resolved)
        _note(f"resuming from {resume_from} (step {checkpoint_step(resume_from)})")
        for change in applied:
            _note(f"resuming with a changed setting (applied): {change}")

    prov = dict(provenance or {})
    if str(cfg.output.dir) != str(root):  # a new timestamped run folder
        prov["output.dir"] = "runner (default run directory)"

    def write_records() -> None:
        from moc_cli.config import render_config

        atomic_write_text(run.config, render_config(resolved, prov))
        write_json(run.env, environment_record(resolved.seed, provenance))

    def prepare_dir() -> None:
        if (cfg.output.overwrite or restart) and resume_from is None:
            clear_run_dir(run)
        run.make()
        if resume_from is not None:
            from moc_cli.training.callbacks import truncate_metrics

            truncate_metrics(run.metrics, checkpoint_step(resume_from) or 0)
        else:
            write_records()

    return RunContext(
        cfg=resolved,
        provenance=prov,
        run=run,
        resume_from=resume_from,
        started=started,
        sigterm=sigterm,
        prepare_dir=prepare_dir,
        # A resumed run records its config only once it has saved something: a run that is
        # refused, or fails to load its checkpoint, leaves config.yaml describing the checkpoints.
        record_config=Once(write_records if resume_from is not None else None),
        extra_callbacks=extra_callbacks,
    )


def _has_entries(run: RunDir) -> bool:
    return run.root.is_dir() and any(p.name != LOCK_NAME for p in run.root.iterdir())


def _build(ctx: RunContext) -> TrainingParts:
    """Task, model with its method, data and the Trainer with the run's callbacks."""
    import transformers
    from transformers import PrinterCallback, Trainer

    from moc_cli.methods import get_method
    from moc_cli.models import build_model_and_tokenizer
    from moc_cli.training.arguments import training_arguments
    from moc_cli.training.callbacks import (
        MetricsJsonlCallback,
        ProgressLinesCallback,
        RoutingStatsCallback,
        should_show_bar,
    )
    from moc_cli.training.data import load_run_data, load_task
    from moc_cli.training.methods import apply_method, count_parameters
    from moc_cli.training.scoring import quiet_progress

    cfg, run = ctx.cfg, ctx.run
    progress = cfg.output.progress
    show_bar = progress != "none" and should_show_bar(None if progress == "auto" else progress == "bar")
    quiet_progress(show_bar)

    task = load_task(cfg.task)
    # Seed before the model and the adapter exist: head and adapter init depend on it.
    transformers.set_seed(cfg.seed)
    model, tokenizer, source = build_model_and_tokenizer(cfg.model, task)
    model = apply_method(model, cfg.method, task.kind)
    trainable, total = count_parameters(model)

    data = load_run_data(task, cfg.data, cfg.task, cfg.seed, tokenizer, need_train=True)
    main_split = data.eval_splits[0] if data.eval_splits else None
    compute_metrics = task.make_compute_metrics(data.eval(main_split)) if main_split else None
    args = training_arguments(
        cfg.training,
        output_dir=run.checkpoints,
        seed=cfg.seed,
        task=task,
        has_eval=main_split is not None,
        has_compute_metrics=compute_metrics is not None,
        show_bar=show_bar,
    )

    # TrainingArguments set up the process group: from here on, ranks are known. Only the main
    # process writes the run directory; the others wait so that no rank trains (or saves) into
    # a directory that is still being cleared.
    if args.process_index == 0:
        ctx.prepare_dir()
    wait_for_everyone()
    routing = RoutingStatsCallback(model) if get_method(cfg.method.name).moc_family else None
    metrics_log = MetricsJsonlCallback(run.metrics)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval(main_split) if main_split else None,
        processing_class=tokenizer,
        data_collator=task.data_collator(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=_callbacks(ctx, routing, metrics_log),
    )
    if task.kind != "causal_lm":
        # Trainer passes `num_items_in_batch` to any model whose forward takes **kwargs and then does
        # not divide the loss by the accumulation steps; classification heads ignore it and return a
        # per-batch mean, so their loss (and gradient) would grow with gradient accumulation.
        trainer.model_accepts_loss_kwargs = False
    if routing is not None:
        # First of all callbacks: report_to integrations (added by Trainer before ours) log the
        # dict on_log receives, so the moc_* routing metrics must be in it before they run.
        trainer.callback_handler.callbacks.remove(routing)
        trainer.callback_handler.callbacks.insert(0, routing)
    if not show_bar:
        # PrinterCallback dumps raw dicts; plain progress lines replace it (or nothing for progress=none).
        trainer.remove_callback(PrinterCallback)
        if progress != "none":
            trainer.add_callback(ProgressLinesCallback())
    return TrainingParts(trainer, task, data, source, trainable, total, routing, metrics_log)


def _callbacks(ctx: RunContext, routing: Any, metrics_log: Any) -> list[Any]:
    """The run's TrainerCallbacks, in the order they must run (the interrupt handler last)."""
    from transformers import TrainerCallback

    from moc_cli.reliability import default_callbacks
    from moc_cli.training.callbacks import InterruptCallback

    training = ctx.cfg.training
    callbacks: list[Any] = [cb for cb in (routing, metrics_log) if cb is not None]
    if "tensorboard" in training.report_to:
        from transformers.integrations import TensorBoardCallback

        # After the routing callback, so the routing metrics reach TensorBoard too. Its writer is
        # reopened for the final evaluation after training ends, hence the directory, not a writer.
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(ctx.run.logs / "tensorboard")
        callbacks.append(tensorboard)
    if training.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    # Completion markers on every checkpoint and the NaN guard; a caller passing its own
    # instance (library use) replaces the default one rather than running it twice.
    given = {type(cb) for cb in ctx.extra_callbacks}
    callbacks.extend(cb for cb in default_callbacks() if type(cb) not in given)
    callbacks.extend(ctx.extra_callbacks)
    callbacks.append(InterruptCallback())
    record_config = ctx.record_config

    class RecordConfigOnSave(TrainerCallback):
        """A resumed run records its (changed) config with its first checkpoint."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                record_config()

    callbacks.append(RecordConfigOnSave())
    return callbacks


def _train(ctx: RunContext) -> Path:
    """Build, train (a checkpoint on Ctrl-C, SIGTERM or a full disk), then finish the run."""
    from moc_cli.reliability.nan_guard import NonFiniteLossError
    from moc_cli.training.callbacks import InterruptCallback
    from moc_cli.training.checkpointing import save_resumable_checkpoint

    parts = _build(ctx)
    trainer, run, sigterm = parts.trainer, ctx.run, ctx.sigterm
    interrupt = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, InterruptCallback))
    main_process = trainer.is_world_process_zero()
    interrupt.install()
    sigterm.interrupt = interrupt  # SIGTERM now stops like Ctrl-C: finish the step, save, stop
    try:
        trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    except KeyboardInterrupt:
        sigterm.interrupt = None
        try:
            checkpoint = save_resumable_checkpoint(trainer, run.checkpoints)
        except Exception as exc:
            failure = _save_failed(exc, trainer, run)
            if failure is not None:
                raise failure from exc
            raise
        if main_process:
            if checkpoint is not None:
                ctx.record_config()
            report_interrupt(checkpoint, run, sigterm.received)
        raise stopped(str(checkpoint) if checkpoint else None, sigterm) from None
    except NonFiniteLossError as exc:
        if main_process:
            report_divergence(exc, run)
        raise
    except Exception as exc:
        failure = _save_failed(exc, trainer, run)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        sigterm.interrupt = None
        interrupt.uninstall()
    if interrupt.requested:
        checkpoint = run.checkpoints / f"checkpoint-{trainer.state.global_step}"
        if main_process:
            report_interrupt(checkpoint, run, sigterm.received)
        raise stopped(str(checkpoint), sigterm)

    parts.metrics_log.eval_kind = "final_eval"
    try:
        root = finish(ctx, parts)
    except Exception as exc:
        from moc_cli.reliability.checkpoints import find_resume_checkpoint
        from moc_cli.training.checkpointing import save_failure

        failure = save_failure(
            exc, "the final adapter and results", run.root, None, find_resume_checkpoint(run.checkpoints)
        )
        if failure is not None:
            raise failure from exc
        raise
    if main_process:
        ctx.record_config()
    return root


def _save_failed(exc: BaseException, trainer: Trainer, run: RunDir) -> Exception | None:
    """A SaveFailed for a checkpoint save that hit a full disk (its incomplete folder removed)."""
    import shutil

    from moc_cli.reliability.checkpoints import MARKER_NAME, find_resume_checkpoint
    from moc_cli.training.checkpointing import save_failure, write_failure_reason

    if write_failure_reason(exc) is None:
        return None
    partial = run.checkpoints / f"checkpoint-{trainer.state.global_step}"
    removed = None
    if trainer.is_world_process_zero() and partial.is_dir() and not (partial / MARKER_NAME).is_file():
        # Never a resume candidate (no completion marker); removing it gives the space back.
        shutil.rmtree(partial, ignore_errors=True)
        removed = partial
    return save_failure(exc, partial.name, run.checkpoints, removed, find_resume_checkpoint(run.checkpoints))
