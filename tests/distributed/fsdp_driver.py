"""FSDP driver for tests/distributed/test_fsdp_adapter.py (launched by torchrun, one copy per rank).

MoC (both sites, shared router) on a tiny BERT, sharded with FSDP1 (FULL_SHARD, one unit per
BertLayer, use_orig_params as in configs/accelerate/fsdp.yaml) on CPU with gloo, trained a few SGD
steps on each rank's half of a fixed batch; then the adapter is saved through the runner's sharded
save path. accelerate refuses FSDP without a GPU, so this drives torch's FSDP directly.

Writes OUT_DIR/adapter/ (rank 0) and OUT_DIR/logits.pt (the sharded model's eval logits).
Usage: torchrun --nproc_per_node 2 fsdp_driver.py OUT_DIR
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch

STEPS = 3


def build_base() -> torch.nn.Module:
    from transformers import BertForSequenceClassification

    from moc_cli.testing import tiny_bert_config

    torch.manual_seed(0)
    return BertForSequenceClassification(
        tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )


def build_peft_model() -> Any:
    from peft import get_peft_model

    from moc_cli.tuner import MocConfig

    return get_peft_model(build_base(), MocConfig(r=4, variant="both-shared", task_type="SEQ_CLS"))


def fixed_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(1000, 2000, (4, 12), generator=generator),
        "labels": torch.tensor([0, 1, 1, 0]),
    }


def main(out_dir: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.bert.modeling_bert import BertLayer

    import moc_cli  # noqa: F401  (registers MoC with peft)
    from moc_cli.training.sharded_save import save_adapter_from_sharded

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_peft_model()
    sharded = FSDP(
        model,
        auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={BertLayer}),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    optimizer = torch.optim.SGD([p for p in sharded.parameters() if p.requires_grad], lr=0.5)
    batch = fixed_batch()
    mine = {k: v.chunk(world)[rank] for k, v in batch.items()}
    sharded.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        sharded(**mine).loss.backward()
        optimizer.step()
    sharded.eval()
    with torch.no_grad():
        logits = sharded(input_ids=batch["input_ids"]).logits
    save_adapter_from_sharded(sharded, model, out_dir / "adapter", is_main=rank == 0)
    if rank == 0:
        torch.save(logits, out_dir / "logits.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
