"""One optimizer step of a real `transformers.Trainer` on a tiny MoC Llama, in-process or per rank.

The dataset is 4 identical rows (row 1 of the testkit batch: 3 label items after the causal shift),
so every micro-batch and every process routes alike and the balance loss of any slice equals that
of the whole batch: a correct weighting then gives the same step at any split.

Script use (one copy per rank): `torchrun --nproc_per_node P balance_step_driver.py OUT.pt
PER_DEVICE ACCUMULATION COEF AVERAGE_TOKENS`; rank 0 saves the router after the step to OUT.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from moc_tuner_testkit import tiny
from peft import get_peft_model

from moc_cli import MocConfig
from moc_cli.tuner import routing_stats


def one_step(
    out_dir: Path, per_device: int, accumulation: int, coef: float, average_tokens: bool = True
) -> tuple[float, torch.Tensor, float]:
    """The sum of the micro-batch losses Trainer backpropagates on this process, the router after
    SGD(lr=1), and the balance loss of the last micro-batch."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    class Recording(Trainer):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.losses.append(loss.item())
            return loss

    t = tiny("llama")
    model = get_peft_model(t.build(), MocConfig(r=4, task_type="CAUSAL_LM", aux_loss_coef=coef))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".moc_state." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    row = {k: v[1].tolist() for k, v in t.batch().items()}
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        average_tokens_across_devices=average_tokens,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Recording(model=model, args=args, train_dataset=Dataset.from_list([row] * 4))
    trainer.losses = []
    trainer.train()
    router = model.base_model.moc_state["default"].router["block"].detach().clone()
    return sum(trainer.losses), router, routing_stats(model)["balance_loss"]


def main(argv: list[str]) -> None:
    out, per_device, accumulation, coef, average = argv
    _, router, _ = one_step(
        Path(out).parent / "trainer", int(per_device), int(accumulation), float(coef), average == "1"
    )
    if torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()  # a clean gloo teardown before exit
    else:
        world, rank = 1, 0
    if rank == 0:
        torch.save({"router": router, "world_size": world}, out)


if __name__ == "__main__":
    main(sys.argv[1:])
