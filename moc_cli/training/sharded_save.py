"""Adapter-only saves from a model sharded by FSDP.

With `fsdp_state_dict_type: SHARDED_STATE_DICT`, transformers' `Trainer.save_model` writes no
weights at all; checkpoints hold per-rank shards that only FSDP on the same world size can read.
The final `adapter/` must load anywhere, so the runner gathers the model here and writes the
adapter part exactly as a single-process save would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def gather_full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of an FSDP1- or FSDP2-wrapped model (a collective: call on every rank).

    Keys are those of the unwrapped module (FSDP's wrapper prefixes removed). On GPUs the tensors
    are gathered to rank 0's host memory only (other ranks get an empty dict); on CPU every rank
    gets the full dict, because torch's CPU offload of a gathered state dict needs a GPU.
    """
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    on_gpu = any(p.device.type != "cpu" for p in model.parameters())
    if isinstance(model, FSDP):
        config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=on_gpu)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
            return model.state_dict()
    # FSDP2 (fully_shard) keeps DTensor parameters on the original module.
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=on_gpu))


def save_adapter_from_sharded(
    sharded: torch.nn.Module, peft_model: Any, target: str | Path, is_main: bool, tokenizer: Any = None
) -> None:
    """Gather `sharded` (every rank) and let the main process write `peft_model`'s adapter to `target`.

    `peft_model` is the unwrapped PeftModel (or any model with `save_pretrained(dir, state_dict=)`);
    peft keeps only the adapter's tensors from the full state dict, so the file is what
    `save_pretrained` writes without FSDP.
    """
    state_dict = gather_full_state_dict(sharded)
    if not is_main:
        return
    peft_model.save_pretrained(str(target), state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(target))
