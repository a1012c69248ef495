"""Warm-start for the offline tiny base: a short, seeded pass that teaches the answer format.

A randomly initialised model never writes `<answer> 罪名 | 刑期 </answer>`, so rejection sampling would accept
nothing. The tiny base is therefore trained for a few hundred steps on templated answers built from the
training labels, with the term perturbed in a share of them (`model.tiny.term_noise`) so the base is a
plausible but imperfect policy: sampling finds the right term for some cases and not for others.

This is a stand-in that exercises the method's mechanics; it is not a legal model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from tqdm import tqdm

from lawshift.answers import DEATH, LIFE, NO_VIOLATION, format_answer
from lawshift.data import ArticleLookup, Case
from lawshift.examples import collate, encode_example, per_sequence_loss
from lawshift.prompts import build_messages, render_prompt

NOISE_OFFSETS = (-2, -1, 1, 2, 3)  # months that may be added to a perturbed term, unless told otherwise


def template_response(case: Case, articles: list[tuple[str, str]], prison_time: int) -> str:
    cited = "、".join(f"【{art_id}】" for art_id, _ in articles) or "相关法条"
    if case.charge == NO_VIOLATION:
        think = f"依据{cited}，被告人的行为不构成犯罪。"
    elif prison_time in (LIFE, DEATH):
        think = f"依据{cited}，被告人的行为构成{case.charge}罪，情节特别严重。"
    else:
        think = f"依据{cited}，被告人的行为构成{case.charge}罪，结合情节量刑。"
    return f"<think>{think}</think>{format_answer(case.charge, prison_time)}"


def noisy_term(prison_time: int, rng: random.Random, noise: float, offsets: Sequence[int] = NOISE_OFFSETS) -> int:
    """With probability `noise`, a different fixed term `gold + offset` (>= 1 month); XT terms are kept."""
    if prison_time in (LIFE, DEATH) or rng.random() >= noise:
        return prison_time
    # Only offsets that land on another valid fixed term: clamping (1 - 1 -> 1) would silently keep the gold
    # term, and a term must never become the life/death codes.
    terms = [t for t in (prison_time + o for o in offsets) if 1 <= t < LIFE and t != prison_time]
    return rng.choice(terms) if terms else prison_time


def warm_start(model, tokenizer, cases: list[Case], lookup: ArticleLookup, *, steps: int, batch_size: int,
               lr: float, noise: float, seed: int, offsets: Sequence[int] = NOISE_OFFSETS) -> list[float]:
    """Train all weights of `model` in place; returns the loss of each step."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    prompts = []
    for i, case in enumerate(cases):
        arts = lookup.for_case(case, i)
        prompts.append((case, arts, render_prompt(tokenizer, build_messages(case.fact, arts))))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="warm-start", unit="step"):
        batch = []
        for case, arts, prompt in rng.choices(prompts, k=batch_size):
            term = noisy_term(case.prison_time, rng, noise, offsets)
            batch.append(encode_example(tokenizer, prompt, template_response(case, arts, term)))
        enc = collate(batch, tokenizer.pad_token_id)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        loss = per_sequence_loss(logits, enc["labels"]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses
