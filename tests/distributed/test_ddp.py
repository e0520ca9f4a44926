"""Data-parallel training on CPU (gloo): 2 processes equal 1 process at the same global batch.

Equivalence needs an objective that decomposes over examples: dropout is off in the tiny BERT and
MoC's load-balancing loss (a product of per-batch means, so not additive over shards) is disabled
with `method.aux_loss_coef=0`. What remains is float summation order: measured differences are
below 1e-6, the tolerance is atol=1e-5 plus rtol=1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distributed_helpers import REPO_ROOT, moc_command, results, run, run_overrides
from safetensors.torch import load_file

from moc_cli.reliability.checkpoints import validate_checkpoint

pytestmark = pytest.mark.slow

STEPS = 20
CPU_2PROC = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
# No ACCELERATE_USE_CPU in the environment: the runner sets use_cpu=True when CUDA is absent and
# WORLD_SIZE > 1, which selects the gloo backend for torchrun as well as for accelerate launch.


def _ddp_overrides(model_dir: Path, data: dict[str, Path], out: Path, per_device: int) -> list[str]:
    return [
        *run_overrides(model_dir, data),
        "method.aux_loss_coef=0",
        f"training.max_steps={STEPS}",
        f"training.per_device_train_batch_size={per_device}",
        f"output.dir={out}",
    ]


def _assert_close(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.fixture(scope="module")
def cli_runs(tiny_bert_no_dropout, sst2_small, tmp_path_factory) -> dict[str, Path]:
    """`accelerate launch ... -m moc_cli train` on 2 processes x 4 rows, and `moc train` on 1 x 8 rows."""
    root = tmp_path_factory.mktemp("ddp-cli")
    single, double = root / "one-process", root / "two-processes"
    done = run(
        moc_command(
            "train",
            "--recipe",
            "demo/sentiment",
            *_ddp_overrides(tiny_bert_no_dropout, sst2_small, single, 8),
        ),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    launched = run(
        [
            str(Path(moc_command()[0]).parent / "accelerate"),
            "launch",
            "--config_file",
            str(CPU_2PROC),
            "-m",
            "moc_cli",
            "train",
            "--recipe",
            "demo/sentiment",
            *_ddp_overrides(tiny_bert_no_dropout, sst2_small, double, 4),
        ],
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-5000:]
    return {"single": single, "double": double, "stdout": launched.stdout}


def test_two_process_run_completes(cli_runs) -> None:
    double = cli_runs["double"]
    for step in (10, 20):
        ckpt = double / "checkpoints" / f"checkpoint-{step}"
        assert validate_checkpoint(ckpt) == []
        # Trainer keeps one RNG file per rank so that a resumed DDP run continues every rank's stream.
        assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    state = json.loads((double / "checkpoints" / "checkpoint-20" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS


def test_two_process_checkpoint_matches_one_process(cli_runs) -> None:
    """Needs the loss unscaled by the process count (average_tokens_across_devices=False for seq_cls)."""
    for step in (10, 20):
        name = f"checkpoints/checkpoint-{step}/adapter_model.safetensors"
        _assert_close(load_file(cli_runs["single"] / name), load_file(cli_runs["double"] / name))


def test_two_process_final_adapter_and_metrics_match_one_process(cli_runs) -> None:
    name = "adapter/adapter_model.safetensors"
    _assert_close(load_file(cli_runs["single"] / name), load_file(cli_runs["double"] / name))
    want, got = results(cli_runs["single"])["metrics"], results(cli_runs["double"])["metrics"]
    assert want.keys() == got.keys()
    for split in want:
        for key, value in want[split].items():
            assert got[split][key] == pytest.approx(value, abs=1e-4), (split, key)


@pytest.fixture(scope="module")
def driver_run(tiny_bert_no_dropout, sst2_small, tmp_path_factory) -> dict[str, Path]:
    """`torchrun --nproc_per_node 2` of run_training with the sync probe and the rank > 0 write audit."""
    root = tmp_path_factory.mktemp("ddp-driver")
    probe = root / "probe"
    probe.mkdir()
    overrides = root / "overrides.json"
    overrides.write_text(json.dumps(_ddp_overrides(tiny_bert_no_dropout, sst2_small, root / "run", 4)))
    launched = run(
        [
            str(Path(moc_command()[0]).parent / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29512",
            str(Path(__file__).with_name("ddp_driver.py")),
            str(overrides),
            str(probe),
        ],
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-5000:]
    return {"run": root / "run", "probe": probe}


def test_moc_router_stays_synchronised_across_ranks(driver_run) -> None:
    records = json.loads((driver_run["probe"] / "sync.json").read_text())
    assert [(r["event"], r["step"]) for r in records] == [("save", 10), ("save", 20), ("train_end", 20)]
    for record in records:
        assert record["world_size"] == 2
        assert record["router_params"] and record["router_numel"] > 0
        assert record["max_abs_diff_per_rank"] == [0.0, 0.0]  # bit-identical on both ranks


def test_only_rank0_writes_the_run_directory(driver_run) -> None:
    writes = json.loads((driver_run["probe"] / "writes-rank1.json").read_text())
    assert writes == []
    # ... while rank 0 wrote the complete run directory, with no temporary folder left behind.
    run_dir = driver_run["run"]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "adapter",
        "checkpoints",
        "config.yaml",
        "env.json",
        "eval",
        "logs",
        "plots",
    ]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "adapter" / "README.md").is_file()
    assert results(run_dir)["summary"]["global_step"] == STEPS
