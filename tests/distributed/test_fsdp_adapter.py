"""A model sharded by FSDP saves a plain adapter-only checkpoint that reloads without FSDP.

With `fsdp_state_dict_type: SHARDED_STATE_DICT` (configs/accelerate/fsdp.yaml), Trainer's own save
writes no weights; the runner gathers the model and writes the adapter itself
(`moc_cli.training.sharded_save`). Here 2 CPU processes (gloo) shard MoC on a tiny BERT with
FSDP1, train, and save; the adapter must hold exactly the adapter tensors and, loaded onto a fresh
base in one process, reproduce the sharded model's logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distributed_helpers import run
from fsdp_driver import build_base, build_peft_model, fixed_batch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("fsdp_driver.py")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    import sys

    out = tmp_path_factory.mktemp("fsdp")
    torchrun = Path(sys.executable).parent / "torchrun"
    done = run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29547", str(DRIVER), str(out)], timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_sharded_save_writes_exactly_the_adapter_tensors(fsdp_run) -> None:
    from peft import get_peft_model_state_dict

    import moc_cli  # noqa: F401

    saved = load_file(fsdp_run / "adapter" / "adapter_model.safetensors")
    untrained = get_peft_model_state_dict(build_peft_model())
    assert sorted(saved) == sorted(untrained)
    assert (fsdp_run / "adapter" / "adapter_config.json").is_file()
    changed = [k for k in saved if not torch.equal(saved[k], untrained[k])]
    assert changed, "training changed no adapter tensor; the test would prove nothing"


def test_sharded_save_reloads_to_the_sharded_models_logits(fsdp_run) -> None:
    from peft import PeftModel

    import moc_cli  # noqa: F401

    model = PeftModel.from_pretrained(build_base(), str(fsdp_run / "adapter")).eval()
    with torch.no_grad():
        logits = model(input_ids=fixed_batch()["input_ids"]).logits
    torch.testing.assert_close(logits, torch.load(fsdp_run / "logits.pt"), atol=1e-6, rtol=1e-5)
