"""`run_training`: one fine-tuning run from a resolved RunConfig to a complete run directory."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from moc_cli.training._sections import as_dict
from moc_cli.training.errors import RunInterrupted, RunSetupError
from moc_cli.training.run_dir import (
    LOCK_NAME,
    RUN_NAME_FORMAT,
    RunDir,
    atomic_write_text,
    check_run_dir,
    clear_run_dir,
    environment_record,
    holds_only_a_failed_start,
    is_main_launch_process,
    latest_run_dir,
    new_run_dir,
    replace_dir,
    run_lock,
    version_of,
    write_json,
)

if TYPE_CHECKING:
    from transformers import Trainer

    from moc_cli.tasks.base import Task
    from moc_cli.training.data import RunData

ROUTED_METHODS = ("moc", "control")
# What `trainer.save_model` writes for an adapter, a full model, or a sharded full model.
_FINAL_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def config_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain YAML-able data."""
    return cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)


def default_output_base(cfg_data: dict[str, Any]) -> Path:
    """`runs/<recipe or task>`: the folder that holds a recipe's timestamped runs."""
    name = cfg_data.get("recipe") or cfg_data["task"]["name"]
    name = Path(str(name)).stem if str(name).endswith((".yaml", ".yml")) else str(name)
    return Path("runs") / name


def default_output_dir(cfg_data: dict[str, Any]) -> Path:
    """`runs/<recipe or task>/<timestamp>` when `output.dir` is not set (the name is not claimed)."""
    return default_output_base(cfg_data) / datetime.now().strftime(RUN_NAME_FORMAT)


def resolve_run_root(cfg_data: dict[str, Any], provenance: dict[str, str], resume: str | None) -> Path:
    """The run folder of this invocation.

    An `output.dir` the user gave (override, --output-dir, --config file, library call) is the run
    folder. A recipe's `output.dir` (e.g. `runs/glue/sst2`), like the default `runs/<recipe>`, is
    the parent of timestamped runs: each run gets a new folder, and `--resume auto` continues the
    newest one. `--resume PATH` without an output.dir continues the run that PATH belongs to.
    """
    output = as_dict(cfg_data.get("output"))
    from_recipe = str((provenance or {}).get("output.dir", "")).startswith("recipe:")
    if output.get("dir") and not from_recipe:
        return Path(output["dir"]).expanduser()
    if resume is not None and resume != "auto":
        # --resume continues that run's directory: RUN/checkpoints/checkpoint-N or RUN itself.
        path = Path(resume).expanduser().resolve()
        return path if (path / "checkpoints").is_dir() else path.parent.parent
    base = Path(output["dir"]).expanduser() if output.get("dir") else default_output_base(cfg_data)
    if resume == "auto":
        latest = latest_run_dir(base)
        if latest is not None:
            return latest
        if (base / "checkpoints").is_dir():  # a run written before runs had timestamped folders
            return base
    return new_run_dir(base)


def quiet_progress(show_bar: bool) -> None:
    """Without a terminal, silence the per-item bars of datasets and model loading (log-file spam)."""
    if show_bar:
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def with_schema_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml with the defaults of keys added to the schema since it was written (so
    `model.allow_pickle: None -> False` is no change); as saved if it no longer validates."""
    from pydantic import ValidationError

    from moc_cli.config.schema import RunConfig

    try:
        return config_dict(RunConfig.model_validate(saved))
    except ValidationError:
        return saved


def check_resume_config(run: RunDir, current: dict[str, Any]) -> list[str]:
    """Compare a resumed run's config with the run's config.yaml; return the changes it applies.

    Changes to the model, method, task, data, seed, optimizer or schedule are refused (RunSetupError,
    exit code 2) before anything loads: the checkpoint was made for the saved values.
    """
    from moc_cli.training.checkpointing import split_drift

    if not run.config.is_file():
        return []
    saved = with_schema_defaults(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {})
    refused, applied = split_drift(saved, current)
    if refused:
        lines = "".join(f"\n      {change}" for change in refused)
        raise RunSetupError(
            f"the config differs from {run.config} in settings a resumed run cannot change (its "
            f"checkpoints were made with the saved values):{lines}\n"
            "    restore them to resume, or start a new run with another --output-dir",
            "--resume",
        )
    return applied


def evaluate_split(trainer: Trainer, task: Task, data: RunData, split: str) -> dict[str, float]:
    from moc_cli.training.summary import stable_metrics

    features = data.eval(split)
    trainer.compute_metrics = task.make_compute_metrics(features)
    metrics = trainer.evaluate(eval_dataset=features, metric_key_prefix="eval")
    return stable_metrics(task.finalize_metrics(metrics))


def generation_metrics(
    model: Any, tokenizer: Any, task: Task, data: RunData, split: str, out_dir: Path | None
) -> dict:
    """Causal LM tasks: generative scores, with the generated samples under `out_dir` (if given)."""
    raw = data.raw.get(split)
    if raw is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        scores = task.evaluate_generation(
            model, tokenizer, raw, output_dir=str(out_dir / split) if out_dir is not None else None
        )
    finally:
        model.train(was_training)
    return {k if k.startswith("eval_") else f"eval_{k}": float(v) for k, v in (scores or {}).items()}


def _wait_for_everyone() -> None:
    """Barrier across the processes of a launch (no-op in a single process)."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _fsdp_sharded_state_dict(trainer: Trainer) -> bool:
    """FSDP set to save sharded state dicts, for which `Trainer.save_model` writes no weights at all."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return False
    return "FULL_STATE_DICT" not in str(trainer.accelerator.state.fsdp_plugin.state_dict_type)


def _save_final_adapter(trainer: Trainer, run: RunDir, card: str | None) -> None:
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
    _wait_for_everyone()
    try:
        if _fsdp_sharded_state_dict(trainer):
            from moc_cli.training.sharded_save import save_adapter_from_sharded

            peft_model = trainer.accelerator.unwrap_model(trainer.model)
            save_adapter_from_sharded(trainer.model_wrapped, peft_model, tmp, main, trainer.processing_class)
        else:
            trainer.save_model(str(tmp))
        _wait_for_everyone()  # every rank's part of the save is on disk
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


def _config_yaml(cfg: Any, cfg_data: dict[str, Any], provenance: dict[str, str]) -> str:
    """The resolved config, with a `# from <source>` comment per value when it is a RunConfig."""
    if hasattr(cfg, "model_copy"):
        from moc_cli.config import render_config

        resolved = cfg.model_copy(deep=True)
        resolved.output.dir = cfg_data["output"]["dir"]
        prov = dict(provenance or {})
        if str(cfg.output.dir) != str(cfg_data["output"]["dir"]):  # a new timestamped run folder
            prov["output.dir"] = "runner (default run directory)"
        return render_config(resolved, prov)
    return yaml.safe_dump(cfg_data, sort_keys=False, allow_unicode=True)


class RunTerminated(RunInterrupted):
    """Training stopped on SIGTERM (after saving a resumable checkpoint when a step had completed).

    SIGTERM is what `timeout`, Docker, Kubernetes and SLURM send before killing a job; it gets the
    Ctrl-C treatment, and the CLI exits with 143 (128 + SIGTERM), the code a shell reports for it.
    """

    exit_code = 143

    def __init__(self, checkpoint: str | None, hint: str = "") -> None:
        super().__init__(checkpoint)
        saved = f"; checkpoint saved at {checkpoint}" if checkpoint else "; no step had completed"
        self.cli_message = f"training stopped by SIGTERM{saved}{hint}"


class _SigtermHandler:
    """SIGTERM handling for one run: a graceful stop while the training loop runs, else an exit.

    While `interrupt` (the run's InterruptCallback) is set, the first SIGTERM marks a stop as
    pending exactly like Ctrl-C: the step finishes, a checkpoint is saved, training stops. Outside
    the loop (loading, final evaluation), or on a second signal, it raises KeyboardInterrupt, which
    the runner turns into RunTerminated.
    """

    def __init__(self) -> None:
        self.received = False
        self.interrupt: Any = None
        self._previous: Any = None
        self._installed = False

    def __call__(self, signum: int, frame: Any) -> None:
        first = not self.received
        self.received = True
        if first and self.interrupt is not None and not self.interrupt.pending:
            self.interrupt.request_stop()
            print("\nSIGTERM: saving a checkpoint at the end of this step, then exiting", file=sys.stderr)
            return
        raise KeyboardInterrupt

    def install(self) -> None:
        import signal
        import threading

        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self)
            self._installed = True

    def uninstall(self) -> None:
        import signal

        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def _note(message: str) -> None:
    if is_main_launch_process():
        print(message, file=sys.stderr, flush=True)


def run_training(
    cfg: Any, provenance: dict[str, str], resume: str | None = None, callbacks: list[Any] | None = None
) -> Path:
    """Train as configured and return the run directory (see docs/ARCHITECTURE.md for its layout).

    `callbacks` are extra TrainerCallbacks (library use, tests); they run before the runner's
    Ctrl-C handling in every event.

    Raises RunSetupError for unusable settings (before anything heavy runs where possible),
    RunInterrupted (a KeyboardInterrupt) after saving a resumable checkpoint on Ctrl-C, RunTerminated
    (a RunInterrupted) likewise on SIGTERM, and SaveFailed when a save hits a full disk.
    """
    started = time.perf_counter()
    cfg_data = config_dict(cfg)
    output = as_dict(cfg_data.get("output"))
    sigterm = _SigtermHandler()
    sigterm.install()
    try:
        root = resolve_run_root(cfg_data, provenance, resume)
        cfg_data.setdefault("output", {})["dir"] = str(root)
        if root.exists() and not root.is_dir():
            check_run_dir(root, overwrite=False, resuming=False)  # raises: names the file
        # Before anything else looks at the folder: a second run into it stops here.
        with run_lock(root):
            return _run_locked(cfg, cfg_data, provenance, root, output, resume, started, callbacks, sigterm)
    except KeyboardInterrupt as exc:
        if sigterm.received and not isinstance(exc, RunTerminated):
            raise RunTerminated(getattr(exc, "checkpoint", None)) from None
        raise
    finally:
        sigterm.uninstall()


def _run_locked(
    cfg: Any,
    cfg_data: dict[str, Any],
    provenance: dict[str, str],
    root: Path,
    output: dict[str, Any],
    resume: str | None,
    started: float,
    callbacks: list[Any] | None,
    sigterm: _SigtermHandler,
) -> Path:
    from moc_cli.reliability.checkpoints import list_checkpoints

    overwrite = bool(output.get("overwrite"))
    run = check_run_dir(root, overwrite=overwrite, resuming=resume is not None)
    restart = holds_only_a_failed_start(run)
    if resume == "auto" and not list_checkpoints(run.checkpoints) and (restart or not _has_entries(run)):
        # Nothing was ever saved here: `--resume auto` starts the run (the same command works for
        # the first attempt and every retry, as in a requeued batch job).
        _note(f"no checkpoint in {run.checkpoints} yet: starting from the beginning")
        resume = None
    elif resume is None and restart:
        _note(f"{run.root} holds a run that stopped before its first checkpoint: starting it again")
    resume_from = resume_checkpoint(resume, run)
    applied: list[str] = []
    if resume_from is not None:
        applied = check_resume_config(run, cfg_data)
        from moc_cli.reliability.checkpoints import checkpoint_step

        _note(f"resuming from {resume_from} (step {checkpoint_step(resume_from)})")
        for change in applied:
            _note(f"resuming with a changed setting (applied): {change}")

    def write_records() -> None:
        atomic_write_text(run.config, _config_yaml(cfg, cfg_data, provenance))
        write_json(run.env, environment_record(cfg_data.get("seed"), provenance))

    def record_run() -> None:
        """Main process only: clear an overwritten run, set up the folders, record config and env."""
        if (overwrite or restart) and resume_from is None:
            clear_run_dir(run)
        run.make()
        if resume_from is not None:
            from moc_cli.reliability.checkpoints import checkpoint_step
            from moc_cli.training.callbacks import truncate_metrics

            truncate_metrics(run.metrics, checkpoint_step(resume_from) or 0)
        else:
            write_records()

    # A resumed run records its config only once it has saved something: a run that is refused,
    # or fails to load its checkpoint, leaves config.yaml describing the checkpoints that exist.
    deferred = _Once(write_records if resume_from is not None else None)
    return _train(cfg_data, run, resume_from, started, record_run, list(callbacks or []), sigterm, deferred)


def _has_entries(run: RunDir) -> bool:
    return run.root.is_dir() and any(p.name != LOCK_NAME for p in run.root.iterdir())


class _Once:
    """Calls `action` the first time it is called (no-op when `action` is None)."""

    def __init__(self, action: Any) -> None:
        self.action = action

    def __call__(self) -> None:
        if self.action is not None:
            action, self.action = self.action, None
            action()


def resume_checkpoint(resume: str | None, run: RunDir) -> Path | None:
    """The checkpoint to resume from for `--resume` (None: start fresh).

    `auto` takes the latest checkpoint of the run that validates (damaged ones are skipped with a
    warning naming the file); a path must be a valid `checkpoint-N` (or a run directory).
    """
    if resume is None:
        return None
    from moc_cli.reliability.checkpoints import CheckpointError, resolve_resume

    try:
        found = resolve_resume(resume, run.checkpoints)
    except CheckpointError as exc:
        raise RunSetupError(str(exc)) from exc
    if found is None:
        raise RunSetupError(
            f"--resume auto found no usable checkpoint in {run.checkpoints}; start without --resume, "
            "or pass --resume PATH to a checkpoint-N folder"
        )
    return found


def _train(
    cfg_data: dict[str, Any],
    run: RunDir,
    resume_from: Path | None,
    started: float,
    record_run: Any,
    extra_callbacks: list[Any],
    sigterm: _SigtermHandler,
    record_config: _Once,
) -> Path:
    import transformers
    from transformers import PrinterCallback, Trainer, TrainerCallback

    from moc_cli.training.arguments import training_arguments
    from moc_cli.training.callbacks import (
        InterruptCallback,
        MetricsJsonlCallback,
        ProgressLinesCallback,
        RoutingStatsCallback,
        should_show_bar,
    )
    from moc_cli.training.checkpointing import save_resumable_checkpoint
    from moc_cli.training.data import load_run_data, load_task
    from moc_cli.training.methods import apply_method, count_parameters
    from moc_cli.training.model_factory import build_model_and_tokenizer

    seed = int(cfg_data.get("seed", 42))
    output = cfg_data.get("output") or {}
    progress = output.get("progress", "auto")
    show_bar = progress != "none" and should_show_bar(None if progress == "auto" else progress == "bar")
    quiet_progress(show_bar)

    task = load_task(cfg_data["task"])
    # Seed before the model and the adapter exist: head and adapter init depend on it.
    transformers.set_seed(seed)
    model, tokenizer, source = build_model_and_tokenizer(cfg_data["model"], task)
    method = cfg_data["method"]["name"]
    model = apply_method(model, cfg_data["method"], task.kind)
    trainable, total = count_parameters(model)

    data = load_run_data(task, cfg_data.get("data"), cfg_data["task"], seed, tokenizer, need_train=True)
    main_split = data.eval_splits[0] if data.eval_splits else None
    compute_metrics = task.make_compute_metrics(data.eval(main_split)) if main_split else None
    training_cfg = dict(cfg_data.get("training") or {})
    args = training_arguments(
        training_cfg,
        output_dir=run.checkpoints,
        seed=seed,
        task=task,
        has_eval=main_split is not None,
        has_compute_metrics=compute_metrics is not None,
        show_bar=show_bar,
    )

    # TrainingArguments set up the process group: from here on, ranks are known. Only the main
    # process writes the run directory; the others wait so that no rank trains (or saves) into
    # a directory that is still being cleared.
    main_process = args.process_index == 0
    if main_process:
        record_run()
    _wait_for_everyone()
    interrupt = InterruptCallback()
    routing = RoutingStatsCallback(model) if method in ROUTED_METHODS else None
    metrics_log = MetricsJsonlCallback(run.metrics)
    callbacks: list[Any] = [cb for cb in (routing, metrics_log) if cb is not None]
    if "tensorboard" in (training_cfg.get("report_to") or []):
        from transformers.integrations import TensorBoardCallback

        # After the routing callback, so the routing metrics reach TensorBoard too. Its writer is
        # reopened for the final evaluation after training ends, hence the directory, not a writer.
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(run.logs / "tensorboard")
        callbacks.append(tensorboard)
    if training_cfg.get("early_stopping_patience"):
        from transformers import EarlyStoppingCallback

        callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=training_cfg["early_stopping_patience"])
        )
    # Completion markers on every checkpoint and the NaN guard; a caller passing its own
    # instance (library use) replaces the default one rather than running it twice.
    from moc_cli.reliability import default_callbacks

    given = {type(cb) for cb in extra_callbacks}
    callbacks.extend(cb for cb in default_callbacks() if type(cb) not in given)
    callbacks.extend(extra_callbacks)
    callbacks.append(interrupt)

    class RecordConfigOnSave(TrainerCallback):
        """A resumed run records its (changed) config with its first checkpoint."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                record_config()

    callbacks.append(RecordConfigOnSave())

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval(main_split) if main_split else None,
        processing_class=tokenizer,
        data_collator=task.data_collator(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
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

    from moc_cli.reliability.nan_guard import NonFiniteLossError

    interrupt.install()
    sigterm.interrupt = interrupt  # SIGTERM now stops like Ctrl-C: finish the step, save, stop
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
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
                record_config()
            _report_interrupt(checkpoint, run, sigterm.received)
        raise _stopped(str(checkpoint) if checkpoint else None, sigterm) from None
    except NonFiniteLossError as exc:
        if main_process:
            _report_divergence(exc, run)
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
            _report_interrupt(checkpoint, run, sigterm.received)
        raise _stopped(str(checkpoint), sigterm)

    metrics_log.eval_kind = "final_eval"
    try:
        root = _finish(
            trainer,
            task,
            data,
            run,
            cfg_data,
            source,
            method,
            trainable,
            total,
            routing,
            started,
            metrics_log,
        )
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
        record_config()
    return root


def _stopped(checkpoint: str | None, sigterm: _SigtermHandler) -> RunInterrupted:
    return RunTerminated(checkpoint) if sigterm.received else RunInterrupted(checkpoint)


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


def _report_interrupt(checkpoint: Path | None, run: RunDir, sigterm: bool = False) -> None:
    what = "Stopped by SIGTERM" if sigterm else "Interrupted"
    if checkpoint is None:
        print(f"{what} before the first step completed; nothing to resume.", file=sys.stderr)
    else:
        print(
            f"{what}: saved a resumable checkpoint at {checkpoint}\n"
            f"Continue with: moc train ... --output-dir {run.root} --resume auto",
            file=sys.stderr,
        )


def _report_divergence(exc: Exception, run: RunDir) -> None:
    """Name the checkpoint a diverged run can restart from (the guard stopped before saving its step)."""
    from moc_cli.reliability.checkpoints import find_resume_checkpoint

    last_good = find_resume_checkpoint(run.checkpoints)
    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
    print(f"Training diverged at step {getattr(exc, 'step', '?')}; {where}.", file=sys.stderr, flush=True)


def _finish(
    trainer: Trainer,
    task: Task,
    data: RunData,
    run: RunDir,
    cfg_data: dict[str, Any],
    source: str,
    method: str,
    trainable: int,
    total: int,
    routing: Any,
    started: float,
    metrics_log: Any,
) -> Path:
    from moc_cli.training.callbacks import read_metrics
    from moc_cli.training.model_card import render_model_card
    from moc_cli.training.plots import plot_curves, plot_routing
    from moc_cli.training.summary import format_summary, stable_metrics, summary_record

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
            metrics_log.on_log(trainer.args, trainer.state, trainer.control, logs=dict(logged))
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
        _save_final_adapter(trainer, run, None)
        return run.root

    versions = {dist: version_of(dist) for dist in ("moc_cli", "peft", "transformers", "torch")}
    card = render_model_card(
        base_model=source,
        base_model_name=str(cfg_data["model"]["name_or_path"]),
        method=method,
        recipe=cfg_data.get("recipe"),
        task=task.name,
        dataset=_dataset_name(cfg_data, task),
        metrics=split_metrics.get(main_split, {}) if main_split else {},
        trainable_params=trainable,
        total_params=total,
        versions=versions,
        auto_class=_auto_class_name(task),
    )
    _save_final_adapter(trainer, run, card)

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
        trainable=trainable,
        total=total,
        wall_time=time.perf_counter() - started,
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


def last_step_evaluation(trainer: Trainer, routed: bool) -> dict[str, Any] | None:
    """The `eval_*` metrics Trainer logged for the main split at the final step, if they can stand
    for the final evaluation: the weights are still those it evaluated (no best-model reload) and,
    for routed methods, a training log event reset the routing counts just before it (so they count
    evaluation tokens only)."""
    from moc_cli.training.callbacks import event_kind

    if trainer.args.load_best_model_at_end:
        return None
    history = trainer.state.log_history
    evals = [i for i, entry in enumerate(history) if event_kind(entry) == "eval"]
    if not evals or history[evals[-1]].get("step") != trainer.state.global_step:
        return None
    last = evals[-1]
    if routed:
        before = history[last - 1] if last > 0 else {}
        if event_kind(before) != "train" or before.get("step") != trainer.state.global_step:
            return None
    return {key: value for key, value in history[last].items() if key.startswith("eval_")}


def _dataset_name(cfg_data: dict[str, Any], task: Task) -> str | None:
    data = cfg_data.get("data") or {}
    if data.get("files"):
        return ", ".join(f"{split}: {Path(path).name}" for split, path in data["files"].items())
    if data.get("path"):
        return f"{data['path']}" + (f" ({data['name']})" if data.get("name") else "")
    if task.hub_path:
        return f"{task.hub_path}" + (f" ({task.hub_name})" if task.hub_name else "")
    return None


def _auto_class_name(task: Task) -> str:
    return {
        "seq_cls": "AutoModelForSequenceClassification",
        "regression": "AutoModelForSequenceClassification",
        "multiple_choice": "AutoModelForMultipleChoice",
        "causal_lm": "AutoModelForCausalLM",
    }[task.kind]
