"""GPU efficiency benchmark: peak memory, step time and tokens/s of every method at LLaMA sizes.

    python benchmarks/gpu.py --out benchmarks/results/gpu.json          # on a CUDA machine
    python benchmarks/gpu.py --smoke --out /tmp/gpu.json                # the same pipeline, tiny, on CPU
    python benchmarks/gpu.py --report-only                              # gpu.md + README block from gpu.json

Models are built from their configs with random weights (no weights to carry): SmolLM2-135M, a
Llama-3.2-1B shape (16 layers, hidden 2048) and a Llama-3-8B shape cut to 4 layers (per-layer
figures). Each (model, batch x sequence, gradient checkpointing) group trains every method on the
same random batch in bf16 (base weights bf16; peft keeps adapter weights in float32; the forward
runs under bf16 autocast, as `training.bf16=true` does), one method at a time in a freshly built
model:

- peak memory: `torch.cuda.max_memory_allocated()` during the warm-up and timed steps, minus the
  memory allocated once the model was built, wrapped and moved (optimizer state, gradients and
  activations: what training adds to the loaded model);
- step time: median of CUDA-synchronised forward + backward + AdamW steps after warm-up;
- tokens/s: batch x sequence over the median step time.

Groups run in priority order and results are written after each group, so a run stopped at its
deadline (or killed) keeps every finished group. `scripts/device_check.sh` runs this on the GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # Run from a checkout without installing: the repository root holds the moc_cli package. It
    # replaces the script's own folder on the path, where kernels.py would shadow the `kernels`
    # package that transformers imports. (Imported by the tests, the path is left alone.)
    sys.path[0] = str(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
GPU_JSON = "gpu.json"
GPU_MD = "gpu.md"

# Llama-family shapes (transformers LlamaConfig fields), as published in each model's config.json.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
    },
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
    },
    "llama-3-8b-4layers": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 4,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
}
# --smoke: the same pipeline at a size a 2-core CPU runs in seconds.
SMOKE_SHAPES: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "tie_word_embeddings": True,
    }
}

METHODS = (
    "control",
    "moc-ffn",
    "control-attn",
    "moc-attn",
    "control-both",
    "moc-both-separate",
    "moc-both-shared",
    "lora-qv",
    "lora-all",
    "dora",
    "ia3",
    "molex",
    "full",
)


@dataclass(frozen=True)
class Group:
    """One table: a model shape at one batch x sequence, with or without gradient checkpointing."""

    model: str
    batch_size: int
    seq_len: int
    checkpointing: bool

    @property
    def label(self) -> str:
        gc_label = ", grad. checkpointing" if self.checkpointing else ""
        return f"{self.model}, {self.batch_size}x{self.seq_len}{gc_label}"


def default_groups(smoke: bool) -> list[Group]:
    """Groups in priority order: every model at 8x512 first, then long sequences, then
    gradient checkpointing, so a deadline cuts the least important ones."""
    if smoke:
        return [Group("tiny-llama", 2, 32, False), Group("tiny-llama", 2, 32, True)]
    models = list(MODEL_SHAPES)
    groups = [Group(m, 8, 512, False) for m in models]
    groups += [Group(m, 2, 2048, False) for m in models]
    groups += [Group(m, 8, 512, True) for m in models]
    groups += [Group(m, 2, 2048, True) for m in models]
    return groups


def build(group: Group, method: str, device: str, dtype: Any, shapes: dict[str, dict[str, Any]]) -> Any:
    """A randomly initialised Llama-shaped model in `dtype` on `device` with `method` applied as
    `moc train` applies it (moc_cli.training.apply_method)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from moc_cli.bench import method_sections
    from moc_cli.training import apply_method

    config = LlamaConfig(**shapes[group.model], use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model = apply_method(model, dict(method_sections("llama")[method]), "causal_lm")
    if group.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def setup(group: Group, method: str, device: str, shapes: dict[str, dict[str, Any]]) -> tuple[Any, Any, Any]:
    """The bf16 model with `method`, its fixed random batch (seed 0) and an AdamW over what trains."""
    import torch

    model = build(group, method, device, torch.bfloat16, shapes)
    vocab = shapes[group.model]["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (group.batch_size, group.seq_len), generator=gen).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, batch, optimizer


def train_step(model: Any, optimizer: Any, batch: dict[str, Any], device: str) -> Any:
    """One AdamW step under bf16 autocast; returns the loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return loss


def measure(
    group: Group,
    method: str,
    device: str,
    steps: int,
    warmup: int,
    shapes: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Parameters, peak memory above the loaded model, and step times of one method."""
    import torch

    model, batch, optimizer = setup(group, method, device, shapes)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        sync()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    times, losses = [], []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        loss = train_step(model, optimizer, batch, device)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    peak = torch.cuda.max_memory_allocated() - loaded if cuda else None
    median = statistics.median(times) if times else None
    row = {
        "method": method,
        "trainable_params": trainable,
        "total_params": total,
        "peak_bytes": peak,
        "step_times": [round(t, 6) for t in times],
        "median_step_s": median,
        "tokens_per_s": group.batch_size * group.seq_len / median if median else None,
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "error": None,
    }
    del model, optimizer, batch, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def profile(group: Group, method: str, device: str, shapes: dict[str, dict[str, Any]], rows: int = 25) -> str:
    """torch.profiler's table of the ops of two training steps (after two warm-up steps), by total
    self CPU time: where a launch-bound step spends its time."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, batch, optimizer = setup(group, method, device, shapes)
    for _ in range(2):
        train_step(model, optimizer, batch, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(2):
            train_step(model, optimizer, batch, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def machine() -> dict[str, Any]:
    import torch

    from moc_cli.environment import machine_info

    info = machine_info(torch.get_num_threads())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            cuda_version=torch.version.cuda,
            cuda_capability=f"{props.major}.{props.minor}",
            cuda_memory_gib=round(props.total_memory / 2**30, 1),
            cuda_driver=_driver_version(),
        )
    return info


def _driver_version() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Atomic replace: a run killed mid-write leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run(
    groups: Sequence[Group],
    methods: Sequence[str],
    device: str,
    steps: int,
    warmup: int,
    deadline_s: float | None,
    out: Path,
    command: str,
    shapes: dict[str, dict[str, Any]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.time()
    record: dict[str, Any] = {
        "command": command,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(started)),
        "device": device,
        "dtype": "bfloat16 weights, bf16 autocast; adapters float32",
        "steps": steps,
        "warmup": warmup,
        "machine": machine(),
        "groups": [],
        "skipped_groups": [],
    }
    for group in groups:
        if deadline_s is not None and time.time() - started > deadline_s:
            record["skipped_groups"].append(asdict(group))
            log(f"[{group.label}] skipped: past the {deadline_s:.0f} s deadline")
            continue
        rows = []
        for method in methods:
            t0 = time.time()
            try:
                row = measure(group, method, device, steps, warmup, shapes)
            except Exception as exc:  # one method's failure must not cost the others' figures
                row = {"method": method, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:400]}
                log(traceback.format_exc(limit=4))
                gc.collect()
                if device.startswith("cuda"):
                    import torch

                    torch.cuda.empty_cache()
            rows.append(row)
            peak = row.get("peak_bytes")
            log(
                f"[{group.label}] {method}: "
                + (
                    f"ERROR {row['error']}"
                    if row.get("error")
                    else f"step {row['median_step_s'] * 1e3:.1f} ms, "
                    + (f"peak +{peak / 2**20:.0f} MiB, " if peak is not None else "")
                    + f"{row['tokens_per_s']:.0f} tok/s"
                )
                + f" ({time.time() - t0:.1f} s)"
            )
        record["groups"].append({**asdict(group), "methods": rows})
        record["wall_s"] = round(time.time() - started, 1)
        write_json(out, record)
    record["wall_s"] = round(time.time() - started, 1)
    write_json(out, record)
    return record


# ----------------------------------------------------------------------------------- report

MIB = 2**20


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}"


def group_table(group: dict[str, Any]) -> list[str]:
    from moc_cli.bench import SAME_SITE_CONTROL

    rows = {r["method"]: r for r in group["methods"]}
    lines = [
        "| method | trainable params | peak above model (MiB) | × same-site Control | median step (ms) "
        "| × same-site Control | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in group["methods"]:
        if r.get("error"):
            lines.append(f"| {r['method']} | – | – | – | – | – | error: {r['error'][:80]} |")
            continue
        ref = rows.get(SAME_SITE_CONTROL.get(r["method"], ""))
        ok = ref is not None and not ref.get("error")
        peak = r["peak_bytes"]
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} "
            f"| {'–' if peak is None else f'{peak / MIB:,.0f}'} "
            f"| {_ratio(peak, ref['peak_bytes']) if ok else ''} "
            f"| {r['median_step_s'] * 1e3:.1f} "
            f"| {_ratio(r['median_step_s'], ref['median_step_s']) if ok else ''} "
            f"| {r['tokens_per_s']:,.0f} |"
        )
    return lines


def report(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [
        "# GPU efficiency benchmark",
        "",
        "Generated by `python benchmarks/gpu.py --report-only` from `gpu.json`; do not edit by hand.",
        "Random-weight models built from their configs, bf16 weights under bf16 autocast (adapters in",
        "float32), AdamW, one method at a time on the same random batch. Peak = CUDA",
        "`max_memory_allocated` during the steps minus what the loaded model held (optimizer state,",
        "gradients, activations). Step = median CUDA-synchronised training step after warm-up.",
        "",
        f"- command: `{record['command']}`",
        f"- date: {record['date_utc']}; wall time {record.get('wall_s', 0):.0f} s; "
        f"{record['warmup']} warm-up + {record['steps']} timed steps per method",
        f"- device: {m.get('cuda') or record['device']}"
        + (
            f" (compute capability {m['cuda_capability']}, {m['cuda_memory_gib']} GiB, CUDA {m['cuda_version']}, "
            f"driver {m.get('cuda_driver')})"
            if m.get("cuda_capability")
            else ""
        ),
        f"- versions: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}",
        "",
    ]
    for group in record["groups"]:
        gc_label = ", gradient checkpointing" if group["checkpointing"] else ""
        lines += [f"## {group['model']}, {group['batch_size']} × {group['seq_len']}{gc_label}", ""]
        lines += group_table(group)
        lines.append("")
    if record.get("skipped_groups"):
        skipped = ", ".join(
            f"{g['model']} {g['batch_size']}×{g['seq_len']}{' GC' if g['checkpointing'] else ''}"
            for g in record["skipped_groups"]
        )
        lines += [f"Not measured (past the run's deadline): {skipped}.", ""]
    return "\n".join(lines)


def readme_block(record: dict[str, Any]) -> str:
    """MoC both-shared against Control on the same sites, LoRA and MoLEx, for every measured group."""
    m = record["machine"]
    lines = [
        f"{m.get('cuda') or record['device']}, bf16, `{record['command']}` ({record['date_utc'][:10]}); "
        "`benchmarks/results/gpu.md` has every method. Peak memory above the loaded model and median "
        "step time, each as a ratio to per-block Control on the same sites (attention + FFN).",
        "",
        "| model | batch × tokens | grad. ckpt | Control peak (MiB) | MoC peak × | LoRA q,v × | LoRA all × "
        "| MoLEx × | full × | Control step (ms) | MoC step × | MoLEx step × |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group in record["groups"]:
        rows = {r["method"]: r for r in group["methods"] if not r.get("error")}
        ref = rows.get("control-both")
        if ref is None:
            continue

        def peak(name: str, rows: dict[str, Any] = rows, ref: dict[str, Any] = ref) -> str:
            r = rows.get(name)
            return "–" if r is None else _ratio(r["peak_bytes"], ref["peak_bytes"])

        def step(name: str, rows: dict[str, Any] = rows, ref: dict[str, Any] = ref) -> str:
            r = rows.get(name)
            return "–" if r is None else _ratio(r["median_step_s"], ref["median_step_s"])

        lines.append(
            f"| {group['model']} | {group['batch_size']} × {group['seq_len']} "
            f"| {'yes' if group['checkpointing'] else 'no'} "
            f"| {ref['peak_bytes'] / MIB:,.0f} | {peak('moc-both-shared')} | {peak('lora-qv')} "
            f"| {peak('lora-all')} | {peak('molex')} | {peak('full')} | {ref['median_step_s'] * 1e3:.1f} "
            f"| {step('moc-both-shared')} | {step('molex')} |"
        )
    return "\n".join(lines)


def write_report(results_dir: Path, readme: Path | None) -> Path:
    from benchmarks.readme import replace_block

    record = json.loads((results_dir / GPU_JSON).read_text(encoding="utf-8"))
    md = results_dir / GPU_MD
    md.write_text(report(record), encoding="utf-8")
    if readme is not None:
        text = readme.read_text(encoding="utf-8")
        updated = replace_block(text, "gpu", readme_block(record))
        if updated != text:
            readme.write_text(updated, encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=RESULTS / GPU_JSON, help="the JSON record to write")
    parser.add_argument("--method", action="append", choices=METHODS, help="restrict to these methods")
    parser.add_argument(
        "--model", action="append", help=f"restrict to these models ({', '.join(MODEL_SHAPES)})"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--deadline-s", type=float, default=None, help="start no new group after this")
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama on the CPU: checks the pipeline")
    parser.add_argument("--report-only", action="store_true", help="regenerate gpu.md and the README block")
    parser.add_argument(
        "--profile",
        metavar="METHOD",
        choices=METHODS,
        help="print the profiler's op table of METHOD's steps instead",
    )
    args = parser.parse_args(argv)

    if args.report_only:
        print(f"wrote {write_report(RESULTS, ROOT / 'README.md')}")
        return 0

    import torch

    import moc_cli  # noqa: F401  (registers MoC and MoLEx with peft)

    shapes = SMOKE_SHAPES if args.smoke else MODEL_SHAPES
    if args.model:
        unknown = [m for m in args.model if m not in shapes]
        if unknown:
            parser.error(f"--model {unknown[0]!r} is unknown; choose from {', '.join(shapes)}")
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        parser.error("no CUDA device: this benchmark measures GPU memory; use --smoke to check it on the CPU")
    groups = [g for g in default_groups(args.smoke) if not args.model or g.model in args.model]
    if args.profile:
        print(f"{args.profile} on {groups[0].label}:\n{profile(groups[0], args.profile, device, shapes)}")
        return 0
    run(
        groups,
        args.method or list(METHODS),
        device,
        1 if args.smoke else args.steps,
        1 if args.smoke else args.warmup,
        args.deadline_s,
        args.out,
        shlex.join(["python", "benchmarks/gpu.py", *argv]),
        shapes,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
