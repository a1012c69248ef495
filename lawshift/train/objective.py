"""The objective of the SFT step: each accepted answer's mean token loss times its weight, one fixed normaliser.

    L = sum_i w_i * l_i / W        loss_m = sum_{i in m} w_i * l_i / Z,   Z = (W / N) * min(B, N) / P

With the filter's weights w_i = 1/n_c every case counts 1/C. Z is one constant for the run, so an answer's
influence never depends on its batch mates, the micro-batch split or the accumulation; the logged loss of a step
is its weighted mean. The derivation is in docs/method.md (The objective).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lawshift.train.examples import per_sequence_loss


def loss_normaliser(weights: Iterable[float], per_step: int, processes: int = 1) -> float:
    """Z = (W / N) * min(B, N) / P, with B = `per_step` answers per optimizer step over all P processes."""
    weights = list(weights)
    n = len(weights)
    return sum(weights) / n * min(per_step, n) / processes


def weighted_loss(per_seq: torch.Tensor, weights: torch.Tensor, normaliser: float) -> torch.Tensor:
    """sum_i w_i * l_i / Z for one micro-batch (l_i: mean token loss of answer i)."""
    return (weights.to(per_seq.dtype) * per_seq).sum() / normaliser


def trainer_class():
    from transformers import Trainer

    class WeightedSFTTrainer(Trainer):
        """Trainer whose loss is `weighted_loss` with one fixed normaliser for the whole run (module docstring)."""

        # The micro-batch losses are already on the step's scale: the Trainer must not divide by accumulation.
        loss_is_scaled_for_ga = True

        def __init__(self, *args, normaliser: float, sampler=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.normaliser, self.sampler = normaliser, sampler
            self.input_tokens = 0  # non-padding tokens through forward/backward in this process, this run
            self.step_weight = 0.0

        def _get_train_sampler(self, *args, **kwargs):
            # lawshift/train/order.py: one order for any number of processes, each answer once per epoch
            return self.sampler if self.sampler is not None else super()._get_train_sampler(*args, **kwargs)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            # The Trainer fetches all micro-batches of an optimizer step up front: note the step's weight sum.
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            self.step_weight = float(sum(b["weights"].sum() for b in batches)) if batches else 0.0
            if self.args.world_size > 1:  # the step's weight on all processes; the logged loss is their mean
                total = self.accelerator.reduce(torch.tensor(self.step_weight, device=self.args.device), "sum")
                self.step_weight = float(total) / self.args.world_size
            return batches, num_items

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)  # backward ran on sum w*l / Z
            # What gets logged is the step's weighted mean loss, comparable from step to step (a short last step
            # would otherwise show a dip that is only its smaller share of the gradient).
            return loss * (self.normaliser / self.step_weight) if self.step_weight else loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # num_items_in_batch (the Trainer's token count) is deliberately unused: the weighting is per answer.
            inputs = dict(inputs)
            labels, weights = inputs.pop("labels"), inputs.pop("weights")
            outputs = model(**inputs, use_cache=False)
            loss = weighted_loss(per_sequence_loss(outputs.logits, labels), weights, self.normaliser)
            if model.training:  # kept on the device: no sync per micro-batch
                self.input_tokens += inputs["attention_mask"].sum().detach()
            return (loss, outputs) if return_outputs else loss

    return WeightedSFTTrainer
