"""Expert-mixture kernel benchmark: the sparse function's strategies and the dense one per pool shape.

    python benchmarks/kernels.py
    python benchmarks/kernels.py --device cuda --dtype bfloat16    # on a GPU: kernels_cuda.{json,md}
    python benchmarks/kernels.py --smoke --output-dir /tmp/k       # two small shapes: checks the pipeline
    python benchmarks/kernels.py --report-only                     # kernels.md from the stored kernels.json

One MoC site in isolation (`moc_cli.tuner.sparse_mixture` and `dense_mixture`): N tokens of width d,
a pool of E experts of rank r, the local control plus a top-1 pick per token. For each shape the
strategies run interleaved, round by round, in one process, so their ratios share the machine's
state; before timing, every strategy's output and gradients are checked against a float64 dense
reference. A strategy of the sparse function is a `KernelPolicy` passed to it (the default policy,
or one that forces the all-rows or the per-expert formulation).

Writes benchmarks/results/kernels.json and kernels.md (kernels_cuda.* on a GPU; each run replaces
the previous one).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run from a checkout without installing: the repository root holds the moc_cli package. It
    # replaces the script's own folder on the path, where this kernels.py would shadow the `kernels`
    # package that transformers imports. (Imported by the tests, the path is left alone.)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

RESULTS_JSON = "kernels.json"
RESULTS_MD = "kernels.md"


@dataclass(frozen=True)
class Shape:
    label: str
    tokens: int
    width: int
    experts: int
    rank: int
    # routed picks: "uniform" over the E experts, "two experts", or "long tail" (expert j with
    # probability ~ 1/(j+1)^1.5, like SmolLM2's untrained routers: a few experts take most tokens)
    routing: str = "uniform"


# Widths and depths of the packaged models (MiniLM-L6: d 384, 6 layers; SmolLM2-135M: d 576,
# 30 layers), of BERT-base and of a 24-layer d=2048 decoder; N = batch 16 x 128 or 4 x 128 tokens.
DEFAULT_SHAPES = (
    Shape("MiniLM-L6, 16x128", 2048, 384, 6, 16),
    Shape("BERT-base, 16x128", 2048, 768, 12, 16),
    Shape("SmolLM2-135M, 16x128", 2048, 576, 30, 16),
    Shape("SmolLM2-135M, 4x128", 512, 576, 30, 16),
    Shape("SmolLM2-135M, 4x128, long-tail routing", 512, 576, 30, 16, routing="long tail"),
    Shape("SmolLM2-135M, 16x128, long-tail routing", 2048, 576, 30, 16, routing="long tail"),
    Shape("SmolLM2-135M, 16x128, two experts", 2048, 576, 30, 16, routing="two experts"),
    Shape("24 layers, d 2048, 8x128", 1024, 2048, 24, 16),
    Shape("SmolLM2-135M, decoding 8 sequences", 8, 576, 30, 16),
)

# On a GPU: the GPU benchmark's model shapes at batch 8 x 512 (SmolLM2-135M, a Llama-3.2-1B and a
# Llama-3-8B shape, with 4 and with all 32 layers), a short prefill and decoding.
CUDA_SHAPES = (
    Shape("SmolLM2-135M, 8x512", 4096, 576, 30, 16),
    Shape("SmolLM2-135M, 8x512, long-tail routing", 4096, 576, 30, 16, routing="long tail"),
    Shape("Llama-3.2-1B, 8x512", 4096, 2048, 16, 16),
    Shape("Llama-3-8B cut to 4 layers, 8x512", 4096, 4096, 4, 16),
    Shape("Llama-3-8B, 32 layers, 8x512", 4096, 4096, 32, 16),
    Shape("SmolLM2-135M, prefill 1x128", 128, 576, 30, 16),
    Shape("SmolLM2-135M, decoding 8 sequences", 8, 576, 30, 16),
    Shape("Llama-3.2-1B, decoding 8 sequences", 8, 2048, 16, 16),
)
# --smoke: two small shapes, one per way of computing routed columns, to check the pipeline.
SMOKE_SHAPES = (Shape("narrow pool", 64, 32, 4, 8), Shape("wide pool", 256, 32, 30, 16))

# Relative error ||x - ref|| / ||ref|| allowed against the float64 reference, per compute dtype.
AGREEMENT_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}

# name -> the `KernelPolicy` fields that differ from `DEFAULT_KERNEL_POLICY` for the sparse function
# (empty: the default policy), or "dense" for plain autograd, or "control" for the local column
# alone (the Control baseline's work at the same site: the reference of MoC's overhead)
STRATEGIES: dict[str, dict[str, Any] | str] = {
    "sparse (default rule)": {},
    "sparse, all rows": {"grouped_min_width": math.inf},
    "sparse, per expert": {"grouped_min_width": 0, "per_expert_device_types": ("cpu", "cuda")},
    "dense": "dense",
    "control": "control",
}


def _control(u: Any, a: Any, bt: Any, idx: Any, coef: Any, scale: float) -> Any:
    """Control's computation at the site: only the local column (expert `idx[0, 0]`, coefficient 1)."""
    import torch

    from moc_cli.tuner import sparse_mixture

    j = int(idx[0, 0])
    local = torch.zeros(1, 1, dtype=torch.long, device=u.device).expand(u.shape[0], 1)
    ones = torch.ones(1, 1, dtype=coef.dtype, device=u.device).expand(u.shape[0], 1)
    return sparse_mixture(u, a[j : j + 1], bt[j : j + 1], local, ones, scale)


def _strategy(name: str) -> Callable[..., Any]:
    """The function a strategy times: `(u, a, bt, idx, coef, scale) -> output`."""
    from moc_cli.tuner import DEFAULT_KERNEL_POLICY, dense_mixture, sparse_mixture

    setting = STRATEGIES[name]
    if setting == "dense":
        return dense_mixture
    if setting == "control":
        return _control
    assert isinstance(setting, dict)
    if not setting:
        return sparse_mixture  # the model's own default policy
    return functools.partial(sparse_mixture, policy=dataclasses.replace(DEFAULT_KERNEL_POLICY, **setting))


def _inputs(shape: Shape, seed: int = 0, device: str = "cpu", dtype: str = "float32") -> tuple[Any, ...]:
    """Random site inputs, drawn in float64 on the CPU (the same values for every device and dtype)
    and then cast and moved."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n, d, e, r = shape.tokens, shape.width, shape.experts, shape.rank
    f64 = torch.float64
    u = torch.randn(n, d, generator=gen, dtype=f64)
    a = torch.randn(e, r, d, generator=gen, dtype=f64) * d**-0.5
    bt = torch.randn(e, r, d, generator=gen, dtype=f64) * r**-0.5
    if shape.routing == "long tail":
        weights = torch.arange(1, e + 1, dtype=torch.float64) ** -1.5
        picks = torch.multinomial(weights, n, replacement=True, generator=gen).view(n, 1)
    else:
        picks = torch.randint(0, 2 if shape.routing == "two experts" else e, (n, 1), generator=gen)
    idx = torch.cat([torch.full((n, 1), e // 2), picks], dim=1)
    coef = torch.rand(n, 2, generator=gen, dtype=f64)
    cast = getattr(torch, dtype)
    leaves = [t.to(device=device, dtype=cast).requires_grad_() for t in (u, a, bt, coef)]
    return leaves[0], leaves[1], leaves[2], idx.to(device), leaves[3]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _run(fn: Callable[..., Any], inputs: tuple[Any, ...], backward: bool) -> tuple[Any, ...]:
    import torch

    u, a, bt, idx, coef = inputs
    if not backward:
        with torch.no_grad():
            return (fn(u, a, bt, idx, coef, 2.0),)
    out = fn(u, a, bt, idx, coef, 2.0)
    grads = torch.autograd.grad(out, (u, a, bt, coef), torch.ones_like(out), allow_unused=True)
    return (out.detach(), *grads)


class KernelAgreementError(AssertionError):
    """A strategy's output or gradient is off the float64 reference by more than the dtype allows."""


def check_agreement(shape: Shape, device: str = "cpu", dtype: str = "float32") -> None:
    """Every strategy gives the float64 dense reference's output and gradients, within the relative
    error `dtype` allows (raises KernelAgreementError otherwise)."""
    want = _run(_strategy("dense"), _inputs(shape, dtype="float64"), backward=True)
    inputs = _inputs(shape, device=device, dtype=dtype)
    for name in STRATEGIES:
        if name == "control":  # another computation: its own tests cover it
            continue
        got = _run(_strategy(name), inputs, backward=True)
        for what, g, w in zip(("output", "dL/du", "dL/dA", "dL/dBt", "dL/dcoef"), got, want, strict=True):
            err = float((g.double().cpu() - w).norm() / w.norm())
            if not err < AGREEMENT_TOLERANCE[dtype]:  # also catches NaN
                raise KernelAgreementError(
                    f"{shape.label}, {name}, {dtype} on {device}: {what} relative error {err:.2e} "
                    f"> {AGREEMENT_TOLERANCE[dtype]:.0e}"
                )


def time_shape(
    shape: Shape, repeats: int, rounds: int, device: str = "cpu", dtype: str = "float32"
) -> dict[str, dict[str, float]]:
    """Median ms of forward+backward (`train`) and no-grad forward (`infer`) per strategy (on a GPU
    each call is timed from a synchronised start to a synchronised end)."""
    inputs = _inputs(shape, device=device, dtype=dtype)
    samples: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": []} for n in STRATEGIES}
    for _ in range(rounds):
        for name in STRATEGIES:
            fn = _strategy(name)
            for kind, backward in (("train", True), ("infer", False)):
                _run(fn, inputs, backward)  # warm-up
                for _ in range(repeats):
                    _sync(device)
                    start = time.perf_counter()
                    _run(fn, inputs, backward)
                    _sync(device)
                    samples[name][kind].append((time.perf_counter() - start) * 1e3)
    return {
        name: {kind: sorted(v)[len(v) // 2] for kind, v in kinds.items()} for name, kinds in samples.items()
    }


def run_kernel_benchmark(
    shapes: Sequence[Shape],
    repeats: int,
    rounds: int,
    threads: int,
    output_dir: Path,
    command: str,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    dtype: str = "float32",
) -> Path:
    """Check, time, and write `kernels.json` and `kernels.md` (`kernels_cuda.*` for a GPU),
    replacing earlier results."""
    import torch

    from moc_cli.environment import machine_info

    torch.set_num_threads(threads)
    machine = machine_info(threads)
    started = time.time()
    rows = []
    for shape in shapes:
        check_agreement(shape, device, dtype)
        medians = time_shape(shape, repeats, rounds, device, dtype)
        rows.append({"shape": asdict(shape), "ms": medians})
        log(
            f"{shape.label}: "
            + ", ".join(f"{n} {m['train']:.1f}/{m['infer']:.1f} ms" for n, m in medians.items())
        )
    machine["load_average_end"] = list(os.getloadavg())
    record = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(started)),
        "wall_time_s": round(time.time() - started, 1),
        "repeats": repeats,
        "rounds": rounds,
        "device": device,
        "dtype": dtype,
        "machine": machine,
        "rows": rows,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    json_name, _ = result_names(device)
    (output_dir / json_name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return rewrite_kernel_report(output_dir, device)


def result_names(device: str) -> tuple[str, str]:
    """(JSON, Markdown) file names of the kernel results measured on `device` (CPU or a GPU)."""
    if device.startswith("cuda"):
        return "kernels_cuda.json", "kernels_cuda.md"
    return RESULTS_JSON, RESULTS_MD


def rewrite_kernel_report(output_dir: Path, device: str = "cpu") -> Path:
    """Regenerate the Markdown report from the stored JSON of the CPU (or the GPU) run."""
    json_name, md_name = result_names(device)
    record = json.loads((output_dir / json_name).read_text(encoding="utf-8"))
    md = output_dir / md_name
    md.write_text(kernel_report(record), encoding="utf-8")
    return md


def kernel_report(record: dict[str, Any]) -> str:
    from moc_cli.tuner import DEFAULT_KERNEL_POLICY as policy

    m = record["machine"]
    device = record.get("device", "cpu")
    on_gpu = device.startswith("cuda")
    where = (
        f"- machine: {m.get('cuda')}; {record.get('dtype', 'float32')} operands, each call timed between "
        "CUDA synchronisations"
        if on_gpu
        else f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; torch threads {m['torch_threads']}"
    )
    lines = [
        "# Expert-mixture kernel benchmark" + (" on a GPU" if on_gpu else ""),
        "",
        f"Generated by `benchmarks/kernels.py` from `{result_names(device)[0]}`;",
        "do not edit by hand. One MoC site: N tokens of width d, E experts of rank r, the local control",
        "plus a top-1 pick per token (uniform; long-tailed, expert j with probability ~ 1/(j+1)^1.5, as",
        "SmolLM2's untrained routers pick; or among 2 experts). Median milliseconds of forward + backward",
        "/ no-grad forward; × = ratio to `sparse, all rows` in the same run;",
        "`control` is the local column alone (the Control baseline's work at the site), and the last",
        "column the default rule's time over it: MoC's overhead at the site.",
        f"The default rule computes routed columns per expert when E·r ≥ {policy.grouped_min_width} on "
        f"{' and '.join(policy.per_expert_device_types)}, else through",
        'all E·r rows at once. Under no grad, `expert_compute="auto"` runs the strategy in the',
        "`auto` column: the sparse function (default rule) for wide pools with a few tokens per expert, else dense.",
        (
            "The CPU results, which set the rules for CPUs, are in `kernels.md`."
            if on_gpu
            else "The same benchmark on a GPU (`kernels_cuda.md`) set the GPU rules: all rows at once for every"
            " pool, and dense without grad."
        ),
        "",
        f"- command: `{record['command']}`",
        f"- date: {record['date']}; wall time {record['wall_time_s']:.0f} s",
        where,
        f"- versions: Python {m['python']}, torch {m['torch']}",
        f"- {record['repeats']} timed repeats per strategy and round, {record['rounds']} rounds; load average "
        f"(1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in m['load_average_start'])}, at end "
        f"{'/'.join(f'{x:.2f}' for x in m['load_average_end'])}",
        "",
    ]
    lines += ["Forward + backward:", "", *_table(record["rows"], "train"), ""]
    lines += ["No-grad forward:", "", *_table(record["rows"], "infer", device.split(":")[0])]
    return "\n".join(lines) + "\n"


def auto_choice_without_grad(shape: dict[str, Any], device_type: str = "cpu") -> str:
    """What `expert_compute="auto"` runs for a no-grad forward of this shape on this device type."""
    from moc_cli.tuner import DEFAULT_KERNEL_POLICY

    chosen = DEFAULT_KERNEL_POLICY.sparse_without_grad(
        device_type, shape["tokens"], shape["experts"], shape["rank"]
    )
    return "sparse" if chosen else "dense"


def _table(rows: list[dict[str, Any]], kind: str, device_type: str = "cpu") -> list[str]:
    names = list(STRATEGIES)
    auto = kind == "infer"  # only the no-grad forward has a choice to make
    out = [
        "| shape | N | d | E | r | "
        + " | ".join(f"{n} (ms) | ×" for n in names)
        + " | default ÷ control |"
        + (" `auto` uses |" if auto else ""),
        "|---|---:|---:|---:|---:|" + "---:|---:|" * len(names) + "---:|" + ("---|" if auto else ""),
    ]
    for row in rows:
        s, ms = row["shape"], row["ms"]
        base = ms["sparse, all rows"][kind]
        cells = " | ".join(f"{ms[n][kind]:.1f} | {ms[n][kind] / base:.2f}" for n in names)
        overhead = ms["sparse (default rule)"][kind] / ms["control"][kind]
        out.append(
            f"| {s['label']} | {s['tokens']} | {s['width']} | {s['experts']} | {s['rank']} | {cells} | {overhead:.2f} |"
            + (f" {auto_choice_without_grad(s, device_type)} |" if auto else "")
        )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per strategy and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the strategies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU shapes, synchronised timing)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--smoke", action="store_true", help="two small shapes, one repeat: checks the pipeline"
    )
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate kernels.md from the stored kernels.json"
    )
    args = parser.parse_args(argv)

    if args.report_only:
        print(f"wrote {rewrite_kernel_report(args.output_dir, args.device)}")
        return 0

    command = "python benchmarks/kernels.py" + "".join(f" {shlex.quote(a)}" for a in argv)
    shapes = SMOKE_SHAPES if args.smoke else CUDA_SHAPES if args.device.startswith("cuda") else DEFAULT_SHAPES
    repeats, rounds = (1, 1) if args.smoke else (args.repeats, args.rounds)
    report = run_kernel_benchmark(
        shapes, repeats, rounds, args.threads, args.output_dir, command, device=args.device, dtype=args.dtype
    )
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
