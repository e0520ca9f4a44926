"""`scripts/device_check.sh`: the GPU check's --smoke pipeline runs here, and its results render
into the committed GPU report and README block."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def _gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_unknown_argument_exits_2_naming_the_choices() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert (
        done.stderr == "device_check.sh: unknown argument '--gpu' (expected --prepare, --smoke or nothing)\n"
    )


def test_smoke_runs_every_stage_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--smoke"], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stages = [line.split("\t") for line in (tmp_path / "stages.tsv").read_text().splitlines()[1:]]
    assert [(name, rc) for name, rc, _ in stages] == [
        ("cuda-tests", "0"),
        ("kernels", "0"),
        ("gpu-efficiency", "0"),
        ("profile", "0"),
    ]
    record = json.loads((tmp_path / "gpu.json").read_text())
    gpu = _gpu_module()
    assert [g["checkpointing"] for g in record["groups"]] == [False, True]
    for group in record["groups"]:
        assert [r["method"] for r in group["methods"]] == list(gpu.METHODS)
        assert all(r["error"] is None and r["median_step_s"] > 0 for r in group["methods"])
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    assert [row["shape"]["label"] for row in kernels["rows"]] == ["narrow pool", "wide pool"]
    # the CUDA tests ran on the CPU: all but the torch.compile check, which needs a GPU's time
    assert 'skipped="1"' in (tmp_path / "cuda-tests.xml").read_text()


def test_committed_gpu_report_and_readme_block_equal_what_gpu_json_produces() -> None:
    from benchmarks.readme import replace_block

    gpu = _gpu_module()
    record = json.loads((ROOT / "benchmarks" / "results" / "gpu.json").read_text(encoding="utf-8"))
    assert (ROOT / "benchmarks" / "results" / "gpu.md").read_text(encoding="utf-8") == gpu.report(record)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert replace_block(readme, "gpu", gpu.readme_block(record)) == readme, (
        "README.md's GPU table differs from benchmarks/results/gpu.json: run python benchmarks/gpu.py --report-only"
    )
    assert record["machine"]["cuda"] == "NVIDIA H200"


@pytest.mark.slow
def test_prepare_downloads_the_carried_wheels_within_the_size_limit() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--prepare"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wheels = sorted(p.name.split("-")[0].lower() for p in (ROOT / ".device" / "wheels").glob("*.whl"))
    assert wheels == sorted(
        [
            "annotated_types",
            "datasets",
            "dill",
            "moc_cli",
            "multiprocess",
            "peft",
            "pydantic",
            "pydantic_core",
            "typing_extensions",
            "typing_inspection",
        ]
    )
    assert "the tree that travels is" in done.stdout and "(limit 64)" in done.stdout
    if (ROOT.parent / "shared" / "data" / "glue").is_dir():  # the accuracy grid's model and data
        from safetensors.torch import load_file

        weights = load_file(ROOT / ".device" / "minilm" / "model.safetensors")
        assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
        import tarfile

        with tarfile.open(ROOT / ".device" / "accuracy-data.tgz") as archive:
            names = set(archive.getnames())
        for task in (
            "glue/cola",
            "glue/mrpc",
            "glue/rte",
            "glue/sst2",
            "superglue/cb",
            "superglue/copa",
            "superglue/wsc",
            "demo/sentiment",
        ):
            assert f"data/{task}/train.jsonl" in names and f"data/{task}/validation.jsonl" in names
