"""One train run for tests/train/test_processes.py, as a process of its own (or one of a group, started by
lawshift/train/launch.py): train_sft on the tiny model, fp32 LoRA, no dropout, no clipping. It writes, on rank 0,
the LoRA gradients of the first optimizer step (grads.pt) and, on every rank, the weight of each answer it trained
on (weights-<rank>.json, read off the real collator's batches).

    python tests/train/processes_worker.py BASE SFT OUT PROCESSES MAX_STEPS
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from lawshift.core.params import TrainParams
from lawshift.train import sftdata
from lawshift.train.training import train_sft

SEED = 0


class FirstGradients(TrainerCallback):
    """The gradients the optimizer is about to apply at step 1: after the processes averaged them."""

    def __init__(self, path: Path):
        self.path = path

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and args.process_index == 0:
            torch.save({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
                       self.path)


def record_weights(path: Path) -> None:
    """Note every answer the collator batches on this process (its token ids and weight), then collate as ever."""
    seen: list = []
    collate = sftdata.Collator.__call__

    def call(self, features):
        seen.extend([list(f["input_ids"]), f["weight"]] for f in features)
        path.write_text(json.dumps(seen), encoding="utf-8")
        return collate(self, features)

    sftdata.Collator.__call__ = call


def main(base: str, sft: str, out: str, processes: str, max_steps: str) -> None:
    out_dir, rank = Path(out), os.environ.get("RANK", "0")
    tp = TrainParams(load_in_4bit=False, lora_r=4, lora_alpha=8, lora_dropout=0.0, num_train_epochs=1,
                     max_steps=int(max_steps), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                     warmup_steps=0, max_grad_norm=0.0, logging_steps=1, save_steps=100, max_length=1024,
                     device="cpu", num_processes=int(processes))
    record_weights(out_dir / f"weights-{rank}.json")
    train_sft(base, sft, out_dir / "adapter", tp, seed=SEED, ckpt_dir=out_dir / "checkpoints",
              live_dir=out_dir / "live", tb_dir=out_dir / "logs", callbacks=[FirstGradients(out_dir / "grads.pt")])


if __name__ == "__main__":
    main(*sys.argv[1:])
