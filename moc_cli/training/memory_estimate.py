"""Pre-flight memory estimate of a training run, without loading weights or data.

The model is built from its config on the meta device (shapes only, no memory), wrapped with the
configured method, and one training forward runs on a batch of the configured size. The bytes
autograd saves for backward are then counted exactly as on a real device (`saved_tensor_bytes`).
Weights, gradients and optimizer state follow from the parameter counts and dtypes. What is not
modelled: allocator fragmentation, the framework itself (CUDA context, Python), temporary buffers
inside one op, and autocast (activations are counted in `model.dtype`). Fused attention kernels
save their own intermediates per device; the meta device follows SDPA's math path, which lands
within about 1% of the CPU kernel at short lengths (eager attention matches exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moc_cli.training.errors import RunSetupError

if TYPE_CHECKING:
    from moc_cli.config import RunConfig

GIB = 2**30
MIB = 2**20

# Optimizer states kept per trainable parameter, in the parameter's dtype (transformers' names).
_STATES_PER_PARAM = {"adafactor": 1, "sgd": 0, "adagrad": 1, "rmsprop": 1, "lion": 1}
_LOW_BIT_STATE_BYTES = {"8bit": 1.0, "4bit": 0.5}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training process needs for the configured per-device batch."""

    total_params: int
    trainable_params: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    batch_shape: tuple[int, ...]
    optimizer: str
    gradient_checkpointing: bool

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes

    def lines(self) -> list[str]:
        """The estimate as aligned text lines, for `moc validate --estimate-memory`."""
        shape = " x ".join(str(n) for n in self.batch_shape)

        def row(name: str, value: int, note: str) -> str:
            return f"  {name:<16}{_human(value):>11}  {note}"

        activations_note = f"saved for backward by one training step, input {shape}"
        if self.gradient_checkpointing:
            activations_note += " (gradient checkpointing: layer boundaries only)"
        return [
            row("weights", self.weight_bytes, f"{self.total_params:,} parameters"),
            row("gradients", self.gradient_bytes, f"{self.trainable_params:,} trainable parameters"),
            row("optimizer", self.optimizer_bytes, self.optimizer),
            row("activations", self.activation_bytes, activations_note),
            row("total", self.total_bytes, "per process, before framework overhead"),
        ]


def _human(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def optimizer_state_bytes(optim: str, trainable: list[Any]) -> tuple[int, str]:
    """(bytes, description) of the optimizer state for these trainable parameters."""
    for suffix, per_value in _LOW_BIT_STATE_BYTES.items():
        if optim.endswith(suffix):
            total = int(sum(2 * p.numel() * per_value for p in trainable))
            return total, f"{optim}: 2 states per trainable parameter at {per_value:g} byte"
    states = next((n for key, n in _STATES_PER_PARAM.items() if key in optim), 2)
    total = sum(states * p.numel() * p.element_size() for p in trainable)
    return total, f"{optim}: {states} state{'s' if states != 1 else ''} per trainable parameter"


def meta_batch(task_kind: str, batch_size: int, seq_len: int) -> dict[str, Any]:
    """A training batch of the right shapes on the meta device (no attention mask: every token real)."""
    import torch

    meta = torch.device("meta")
    if task_kind == "multiple_choice":
        # Every shipped multiple-choice task (COPA) has two choices.
        shape: tuple[int, ...] = (batch_size, 2, seq_len)
        labels = torch.empty(batch_size, dtype=torch.long, device=meta)
    elif task_kind == "causal_lm":
        shape = (batch_size, seq_len)
        labels = torch.empty(shape, dtype=torch.long, device=meta)
    else:
        shape = (batch_size, seq_len)
        dtype = torch.float if task_kind == "regression" else torch.long
        labels = torch.empty(batch_size, dtype=dtype, device=meta)
    return {"input_ids": torch.empty(shape, dtype=torch.long, device=meta), "labels": labels}


def estimate_memory(cfg: RunConfig) -> MemoryEstimate:
    """Estimate for a resolved run config; raises RunSetupError."""
    import torch
    from transformers import AutoConfig

    from moc_cli.models import auto_model_class, head_config_kwargs, model_kwargs, resolve_source
    from moc_cli.profiling import saved_tensor_bytes
    from moc_cli.training.data import load_task
    from moc_cli.training.methods import apply_method

    task = load_task(cfg.task)
    model_cfg, training = cfg.model, cfg.training
    name = model_cfg.name_or_path
    if not name:
        raise RunSetupError("model.name_or_path is not set; the estimate needs the model's config")
    source = resolve_source(str(name))
    kwargs = model_kwargs(model_cfg)
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=kwargs["trust_remote_code"], **head_config_kwargs(task)
        )
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunSetupError(
            f"no model config found for {name} ({reason}); pass a local folder written by "
            "save_pretrained, or a Hub id while online",
            key="model.name_or_path",
        ) from exc
    if getattr(config, "pad_token_id", None) is None:
        # As at training time, where the tokenizer supplies it: decoder classifiers need one.
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    with torch.device("meta"):
        model = auto_model_class(task).from_config(config, **kwargs)
    model = apply_method(model, cfg.method, task.kind)
    if training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    batch_size = training.per_device_train_batch_size
    seq_len = cfg.task.max_length
    batch = meta_batch(task.kind, batch_size, seq_len)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    saved = saved_tensor_bytes(lambda: model(**batch).loss, exclude=[*params, *model.buffers()])
    optim = training.optim
    optimizer_bytes, optimizer_note = optimizer_state_bytes(optim, trainable)
    return MemoryEstimate(
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in trainable),
        weight_bytes=sum(p.numel() * p.element_size() for p in params)
        + sum(b.numel() * b.element_size() for b in model.buffers()),
        gradient_bytes=sum(p.numel() * p.element_size() for p in trainable),
        optimizer_bytes=optimizer_bytes,
        activation_bytes=saved.total_bytes,
        batch_shape=tuple(batch["input_ids"].shape),
        optimizer=optimizer_note,
        gradient_checkpointing=training.gradient_checkpointing,
    )
