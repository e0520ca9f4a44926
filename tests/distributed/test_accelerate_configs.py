"""The shipped accelerate configs load with accelerate's own parser and carry the settings MoC needs.

GPU strategies cannot run on the CPU-only CI (accelerate refuses to build an FSDP plugin without a
device, DeepSpeed is not installed); the 2-process CPU config runs for real in test_ddp.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _load(name: str):
    return load_config_from_file(str(CONFIGS / name))


def test_every_config_parses_and_is_documented() -> None:
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == [
        "cpu_2proc.yaml",
        "ddp.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "fsdp.yaml",
    ]
    docs = (CONFIGS.parents[1] / "docs" / "distributed.md").read_text(encoding="utf-8")
    for name in names:
        config = _load(name)
        assert config.num_machines == 1 and config.num_processes == 2
        assert f"configs/accelerate/{name}" in (CONFIGS / name).read_text() or name == "cpu_2proc.yaml"
        assert f"`{name}`" in docs


def test_cpu_2proc_starts_two_local_cpu_processes() -> None:
    config = _load("cpu_2proc.yaml")
    # accelerate launch spawns several local processes only through its multi-GPU launcher (torchrun);
    # use_cpu then selects the gloo backend.
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.use_cpu is True
    assert config.mixed_precision == "no"


def test_fsdp_settings_for_mixed_frozen_and_trainable_params() -> None:
    fsdp = _load("fsdp.yaml")
    assert fsdp.distributed_type == DistributedType.FSDP
    cfg = fsdp.fsdp_config
    assert cfg["fsdp_use_orig_params"] is True
    assert cfg["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert cfg["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert cfg["fsdp_version"] == 1
    plugin_fields = {f.name for f in dataclasses.fields(FullyShardedDataParallelPlugin)}
    renamed = {"fsdp_offload_params": "cpu_offload", "fsdp_version": "fsdp_version"}
    for key in cfg:
        assert renamed.get(key, key.removeprefix("fsdp_")) in plugin_fields, key


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs(name: str, stage: int) -> None:
    config = _load(name)
    assert config.distributed_type == DistributedType.DEEPSPEED
    ds = config.deepspeed_config
    assert ds["zero_stage"] == stage
    plugin_fields = {f.name for f in dataclasses.fields(DeepSpeedPlugin)}
    assert set(ds) - {"deepspeed_multinode_launcher"} <= plugin_fields
    if stage == 3:
        assert ds["zero3_save_16bit_model"] is True  # otherwise ZeRO-3 saves placeholder adapter tensors


def test_fsdp_wraps_the_transformer_blocks_of_a_moc_model() -> None:
    """With no class list in fsdp.yaml, accelerate wraps the model's `_no_split_modules`: check MoC keeps them."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, BertConfig

    import moc_cli  # noqa: F401
    from moc_cli import MocConfig

    base = AutoModelForSequenceClassification.from_config(
        BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    )
    model = get_peft_model(base, MocConfig(task_type="SEQ_CLS", r=4))
    blocks = set(model._no_split_modules)
    assert "BertLayer" in blocks
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ in blocks]
    assert wrapped == [
        "base_model.model.bert.embeddings",
        "base_model.model.bert.encoder.layer.0",
        "base_model.model.bert.encoder.layer.1",
    ]
