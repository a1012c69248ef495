"""The objective of the SFT step (lawshift/train/objective.py): each answer's mean token loss times its weight over one
fixed normaliser.

The weighting is checked twice: by hand on the loss function, and end to end on the real Trainer loop, where the
gradients of the optimizer steps (micro-batches, accumulation, length grouping and all) must equal the gradient of
the objective computed in one go.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_sftdata import make_records, write_jsonl
from test_training import SEED, TINY_TRAIN, run_dirs
from transformers import Trainer, TrainerCallback

from lawshift.train.examples import collate, per_sequence_loss
from lawshift.train.objective import loss_normaliser, trainer_class, weighted_loss
from lawshift.train.sftdata import build_examples, read_sft
from lawshift.train.training import train_sft

# ---- the objective, by hand ------------------------------------------------------------------------------------

# (answers per optimizer step B, processes P, Z = (W/N) * min(B, N) / P) for weights 8 x 1/8 + 1 x 1: W = 2, N = 9
NORMALISERS = [(16, 1, 2.0), (9, 1, 2.0), (4, 1, 8 / 9), (1, 1, 2 / 9), (8, 2, 8 / 9)]


@pytest.mark.parametrize("per_step,processes,expected", NORMALISERS)
def test_loss_normaliser(per_step, processes, expected):
    assert loss_normaliser([1 / 8] * 8 + [1.0], per_step, processes) == pytest.approx(expected)


def test_weighted_loss_by_hand_case_with_8_answers_weighs_like_case_with_1():
    # mean token losses: case A's 8 answers 1..8 (mean 4.5), case B's single answer 3
    per_seq = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 3], requires_grad=True)
    weights = torch.tensor([1 / 8] * 8 + [1.0])
    z = loss_normaliser(weights.tolist(), per_step=16)
    loss = weighted_loss(per_seq, weights, z)
    # by hand: (sum_i w_i l_i) / W = (4.5 + 3) / 2 = 3.75: the mean over cases of each case's mean answer loss
    assert z == 2.0
    assert loss.item() == pytest.approx(3.75)
    loss.backward()
    # each case's total weight in the objective: 8 * (1/8) / 2 for A, 1 / 2 for B
    assert per_seq.grad[:8].sum().item() == pytest.approx(0.5)
    assert per_seq.grad[8].item() == pytest.approx(0.5)


def test_weighted_loss_split_over_steps_sums_to_the_objective():
    per_seq = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 3])
    weights = torch.tensor([1 / 8] * 8 + [1.0])
    z = loss_normaliser(weights.tolist(), per_step=4)  # 3 steps: 4 + 4 + 1 answers
    steps = [slice(0, 4), slice(4, 8), slice(8, 9)]
    total = sum(weighted_loss(per_seq[s], weights[s], z) for s in steps)
    # the epoch's steps sum to N / min(B, N) times the objective, whatever the split
    assert total.item() == pytest.approx(9 / 4 * 3.75)


def test_weighted_loss_keeps_the_loss_dtype():
    per_seq = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    loss = weighted_loss(per_seq, torch.tensor([0.5, 0.5]), 1.0)
    assert loss.dtype == torch.bfloat16 and loss.item() == pytest.approx(2.0)


def test_trainer_class_does_not_rescale_for_accumulation():
    cls = trainer_class()
    assert issubclass(cls, Trainer)
    assert cls.loss_is_scaled_for_ga is True  # the Trainer must not divide the step's loss by the accumulation


# ---- the real Trainer loop -------------------------------------------------------------------------------------


@pytest.fixture
def sft_8_1(tiny, tmp_path) -> Path:
    """One case with 8 accepted answers (weight 1/8 each) and one with a single answer (weight 1)."""
    return write_jsonl(tmp_path / "outputs" / "sft.jsonl", make_records(tiny.tokenizer, [8, 1]))


class GradientProbe(TrainerCallback):
    """Sums the gradients each optimizer step is about to apply (after accumulation, before the update)."""

    def __init__(self):
        self.grads, self.steps, self.model = {}, 0, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.model, self.steps = model, self.steps + 1
        for name, p in model.named_parameters():
            if p.grad is not None:
                self.grads[name] = self.grads.get(name, 0) + p.grad.detach().clone()


# (load_in_4bit, per-device batch, accumulation, steps): 9 answers in 1 step of 5 micro-batches, or in 2 steps (6 + 3)
STEP_LAYOUTS = [(True, 2, 5, 1), (True, 3, 2, 2), (False, 3, 2, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("load_in_4bit,batch,accum,n_steps", STEP_LAYOUTS)
def test_trainer_gradients_equal_the_weighted_objective(tmp_path, tiny, sft_8_1, load_in_4bit, batch, accum,
                                                        n_steps):
    tokenizer = tiny.tokenizer
    # lr 0 keeps the weights fixed, so the steps' gradients can be summed and compared with one backward pass
    tp = replace(TINY_TRAIN, load_in_4bit=load_in_4bit, per_device_train_batch_size=batch,
                 gradient_accumulation_steps=accum, learning_rate=0.0)
    probe = GradientProbe()
    metrics, info = train_sft(str(tiny.path), sft_8_1, tmp_path / "sft", tp, seed=SEED, callbacks=[probe],
                              **run_dirs(tmp_path))
    assert probe.steps == metrics["steps"] == n_steps
    assert info["resumed_from"] is None and info["device"] == "cpu"
    model = probe.model

    # QLoRA really runs: the targeted layers are bitsandbytes 4-bit, and only LoRA parameters got gradients
    import bitsandbytes as bnb

    wrapped = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(wrapped) == 7 * model.config.num_hidden_layers
    kind = bnb.nn.Linear4bit if load_in_4bit else torch.nn.Linear
    assert all(type(m.base_layer) is kind for m in wrapped)
    lora = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert set(probe.grads) == lora == {n for n, p in model.named_parameters() if p.requires_grad}
    inner = model.base_model.model  # transformers <= 5.20 names it is_gradient_checkpointing
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing

    # the objective in one go: sum_i w_i * meanCE_i / sum_i w_i over all 9 answers in one padded batch
    recs = read_sft(sft_8_1)
    examples = build_examples(tokenizer, recs, tp.max_length).examples
    enc = collate(examples, tokenizer.pad_token_id)
    model.zero_grad()
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    loss = (enc["weights"] * per_sequence_loss(logits, enc["labels"])).sum() / enc["weights"].sum()
    loss.backward()
    n, per_step = len(examples), batch * accum
    for name, p in model.named_parameters():
        if name in lora:
            # summed over the epoch the steps give N / min(B, N) times the objective's gradient
            torch.testing.assert_close(probe.grads[name] * min(per_step, n) / n, p.grad, rtol=1e-4, atol=1e-7)
    if n_steps == 1:  # the logged loss of the one step is the objective itself
        logged = (tmp_path / "dvclive" / "train" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
        assert float(logged[1].split("\t")[1]) == pytest.approx(loss.item(), rel=1e-5)
    assert metrics["weight_sum"] == pytest.approx(2.0) and metrics["cases"] == 2
    assert metrics["loss_normaliser"] == pytest.approx(loss_normaliser([e.weight for e in examples], per_step),
                                                       abs=1e-6)
    assert metrics["optimizer"] == "adamw_torch" and metrics["optimizer_requested"] == "paged_adamw_32bit"
