"""The typed run-config schema: one pydantic model per section, strict at every depth.

Field names in `training` are `transformers.TrainingArguments` names so the runner can pass them
through unchanged. Every field carries a `description`; `moc schema` prints them. The `method`
section is derived from the methods' peft config dataclasses (`config/method_fields.py`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from moc_cli.config import choices as C
from moc_cli.config.method_fields import METHOD_MODELS, method_union
from moc_cli.config.section import Section


def _steps_or_ratio(name: str, value: float | int | None) -> float | int | None:
    """TrainingArguments accepts an integer count, or a float in [0, 1) as a ratio of total steps."""
    if value is None:
        return None
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (an integer count or a ratio in [0, 1))")
    if isinstance(value, float) and value >= 1:
        if not value.is_integer():
            raise ValueError(f"{name}={value}: a float must be a ratio in [0, 1); use an integer count")
        return int(value)
    return value


StepsOrRatio = Annotated[int | float, Field(union_mode="left_to_right")]


class ModelSection(Section):
    name_or_path: str = Field(
        description="Hub id, local directory, or pkg:// asset URI of the base model (required)."
    )
    dtype: Literal[C.DTYPES] = Field(
        "float32",
        description="Weights dtype passed as `dtype=` to from_pretrained; 'auto' uses the checkpoint's.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow custom modeling code from the model repository."
    )
    allow_pickle: bool = Field(
        False,
        description="Accept pickle weights (*.bin) when the model has no safetensors; pickle can run "
        "code when loaded, so only for files you trust.",
    )
    attn_implementation: Literal[C.ATTN_IMPLEMENTATIONS] | None = Field(
        None,
        description="Attention kernel; null keeps the transformers default (sdpa). 'eager' for attention maps.",
    )


class TaskSection(Section):
    name: str = Field(description="Registered task name, e.g. glue/sst2 (see `moc ls`).")
    max_length: int = Field(128, gt=0, description="Maximum tokenized sequence length.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Task-specific options passed to the task (DataSource.options)."
    )


class DataSection(Section):
    path: str | None = Field(
        None,
        description="Dataset source: Hub id, local folder of <split>.jsonl|json|csv|parquet, a file, "
        "or pkg:// URI; null uses the task's default.",
    )
    name: str | None = Field(
        None, description="Hub dataset config name (e.g. sst2); null uses the task's default."
    )
    files: dict[str, str] | None = Field(
        None, description="Map of split name to data file; overrides `path` for those splits."
    )
    max_train_samples: int | None = Field(
        None, gt=0, description="Truncate the train split (null: all rows)."
    )
    max_eval_samples: int | None = Field(None, gt=0, description="Truncate each eval split (null: all rows).")
    max_test_samples: int | None = Field(None, gt=0, description="Truncate the test split (null: all rows).")


MethodSection = method_union()


class TrainingSection(Section):
    """A subset of transformers.TrainingArguments, with the same names (seed lives at top level)."""

    learning_rate: float = Field(3e-4, gt=0.0, description="Peak learning rate (AdamW).")
    num_train_epochs: float = Field(3.0, gt=0.0, description="Epochs to train (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Total optimizer steps; -1 trains for num_train_epochs.")
    per_device_train_batch_size: int = Field(16, gt=0, description="Train batch size per device.")
    per_device_eval_batch_size: int = Field(64, gt=0, description="Eval batch size per device.")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Micro-batches accumulated per optimizer step."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    warmup_steps: StepsOrRatio = Field(
        0.06, description="Warm-up: an integer step count, or a float in [0, 1) as a ratio of total steps."
    )
    lr_scheduler_type: Literal[C.LR_SCHEDULER_TYPES] = Field(
        "linear", description="transformers SchedulerType name."
    )
    optim: Literal[C.OPTIMIZERS] = Field("adamw_torch", description="transformers OptimizerNames value.")
    eval_strategy: Literal[C.EVAL_STRATEGIES] = Field(
        "epoch", description="When to evaluate: no | steps | epoch."
    )
    eval_steps: StepsOrRatio | None = Field(
        None, description="Evaluate every N steps (eval_strategy=steps); a float in [0, 1) is a ratio."
    )
    save_strategy: Literal[C.SAVE_STRATEGIES] = Field(
        "epoch", description="When to checkpoint: no | steps | epoch | best."
    )
    save_steps: StepsOrRatio = Field(500, description="Checkpoint every N steps (save_strategy=steps).")
    save_total_limit: int | None = Field(
        2, gt=0, description="Keep at most this many checkpoints (null: all)."
    )
    logging_steps: StepsOrRatio = Field(
        50, description="Log loss/lr every N steps; a float in [0, 1) is a ratio."
    )
    bf16: bool = Field(False, description="bf16 mixed precision.")
    fp16: bool = Field(False, description="fp16 mixed precision (CUDA only).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    torch_compile: bool = Field(False, description="Compile the model with torch.compile.")
    report_to: list[Literal[C.REPORT_TO]] = Field(
        default_factory=lambda: ["none"],
        description="Logging integrations; 'tensorboard' is opt-in. logs/metrics.jsonl is always written.",
    )
    dataloader_num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 disables).")
    load_best_model_at_end: bool = Field(
        False, description="Reload the best checkpoint at the end (needs matching eval/save strategies)."
    )
    metric_for_best_model: str | None = Field(
        None,
        description="Metric for best-model selection and early stopping; null uses the task's main metric.",
    )
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without improvement (null: off)."
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, v: Any) -> Any:
        # TrainingArguments accepts a single string; keep that convenience.
        return [v] if isinstance(v, str) else v

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted `no` as False; `eval_strategy: no` means the strategy "no".
        return "no" if v is False else v

    @field_validator("warmup_steps", "eval_steps", "save_steps", "logging_steps")
    @classmethod
    def _check_steps(cls, v: float | int | None, info: Any) -> float | int | None:
        return _steps_or_ratio(info.field_name, v)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSection:
        problems = []
        if self.bf16 and self.fp16:
            problems.append("bf16 and fp16 are both true; pick one")
        if self.load_best_model_at_end:
            if self.eval_strategy == "no":
                problems.append("load_best_model_at_end=true needs eval_strategy steps or epoch")
            elif self.save_strategy not in (self.eval_strategy, "best"):
                problems.append(
                    f"load_best_model_at_end=true needs save_strategy ({self.save_strategy}) to equal "
                    f"eval_strategy ({self.eval_strategy})"
                )
        if self.early_stopping_patience is not None and not self.load_best_model_at_end:
            problems.append("early_stopping_patience needs load_best_model_at_end=true")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class OutputSection(Section):
    dir: str | None = Field(
        None, description="Run directory; null uses runs/<recipe>/<timestamp>. Shorthand: --output-dir."
    )
    overwrite: bool = Field(
        False, description="Allow writing into a non-empty run directory. Shorthand: --overwrite."
    )
    progress: Literal[C.PROGRESS_MODES] = Field(
        "auto", description="auto (bar on a TTY, plain lines otherwise) | bar | plain | none."
    )


class RunConfig(Section):
    """A fully resolved run: what `moc train` validates, prints and saves as config.yaml."""

    description: str = Field("", description="One line shown by `moc ls`.")
    recipe: str | None = Field(
        None, description="Recipe name or file this config was built from (set by the loader)."
    )
    seed: int = Field(
        42, ge=0, description="Seed for data order, adapter init and Trainer (set before model load)."
    )
    model: ModelSection = Field(description="Base model.")
    task: TaskSection = Field(description="Task (data format, metrics, labels).")
    data: DataSection = Field(default_factory=DataSection, description="Data source and sample limits.")
    method: MethodSection = Field(
        default_factory=lambda: METHOD_MODELS["moc"](name="moc"), description="Fine-tuning method."
    )
    training: TrainingSection = Field(
        default_factory=TrainingSection, description="TrainingArguments subset."
    )
    output: OutputSection = Field(
        default_factory=OutputSection, description="Run directory and console output."
    )
