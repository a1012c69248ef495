"""The GRPO arm's answers drawn by the project's own decoder (TRL's `rollout_func`), not TRL's `generate`.

    GRPOTrainer(..., rollout_func=rollout_function(tokenizer, settings, seed, group))

TRL hands each step's prompts with every case repeated `group` times in a row (its RepeatSampler). Each case's
prompt is prefilled once and its `group` answers decode together from one generator (lawshift/engines/hf_backend.py
`decode`, the sampler of the sample stage), seeded per (step, case) from the run's seed, so a resumed run draws what
an uninterrupted one draws. The policy is the trainer's model as it stands, LoRA unmerged, in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lawshift.engines.generation import GenerationSettings, stream_seed
from lawshift.engines.hf_backend import decode, eos_ids, until_eos

FAMILY = "grpo"  # the arm's own random streams (lawshift/engines/generation.py run_offset)


def groups_of(prompts: Sequence[str], group: int) -> list[str]:
    """The distinct prompts of a TRL batch, each standing `group` times in a row; anything else is an error."""
    if len(prompts) % group:
        raise ValueError(f"{len(prompts)} prompts are no whole groups of {group}")
    unique = list(prompts[::group])
    if any(prompts[i] != unique[i // group] for i in range(len(prompts))):
        raise ValueError(f"the batch's prompts do not stand in runs of {group}")
    return unique


def rollout_function(tokenizer, settings: GenerationSettings, seed: int, group: int) -> Callable:
    """TRL's rollout_func: prompt and completion ids for every (case, answer) of the step, no sampling logprobs."""
    import torch

    def rollout(prompts: list[str], trainer) -> dict:
        unique = groups_of(prompts, group)
        model = trainer.model
        eos = eos_ids(model, tokenizer)
        enc = tokenizer(unique, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        step = trainer.state.global_step
        seeds = [stream_seed(seed, step * len(unique) + i, FAMILY) for i in range(len(unique))]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                new = decode(model, enc["input_ids"], enc["attention_mask"], settings, seeds, eos,
                             tokenizer.pad_token_id)
        finally:
            model.train(was_training)
        prompt_ids = [ids for ids in tokenizer(unique, add_special_tokens=False)["input_ids"] for _ in range(group)]
        stop = set(eos)
        completion_ids = [until_eos(row, stop) for row in new.tolist()]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout
