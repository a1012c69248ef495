"""Tests for lawshift.train.examples: prompt masking, the trained end-of-turn token, padding, and the per-sequence
loss."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import JUDGE
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from lawshift.task.prompts import render_prompt
from lawshift.train.examples import (
    IGNORE,
    Example,
    collate,
    encode_example,
    end_of_turn_id,
    per_sequence_loss,
    trained_token_loss,
)
from lawshift.train.tiny import TEMPLATE_STRINGS, build_tokenizer

FACT = "被告人甲容留乙在其家中吸食甲基苯丙胺。"
ARTICLES = [("354-0-0", "【容留他人吸毒罪】容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。")]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([FACT, ARTICLES[0][1], *TEMPLATE_STRINGS], vocab_size=400)


@pytest.fixture(scope="module")
def prompt(tok):
    return render_prompt(tok, JUDGE.messages(FACT, ARTICLES))


RESPONSES = [
    ("answer", "<think>依据【354-0-0】。</think><answer> 容留他人吸毒 | 7 </answer>"),
    ("no_violation", "<answer> 不违规 </answer>"),
    ("xt", "<answer> 容留他人吸毒 | XT </answer>"),
    ("one_char", "7"),
]


@pytest.mark.parametrize("response", [r[1] for r in RESPONSES], ids=[r[0] for r in RESPONSES])
def test_encode_example_masks_exactly_the_prompt(tok, prompt, response):
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok(response, add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ex = encode_example(tok, prompt, response, weight=0.25, group="case-1")
    assert ex.input_ids == prompt_ids + answer_ids + [im_end]
    assert ex.labels == [IGNORE] * len(prompt_ids) + answer_ids + [im_end]
    assert len(ex) == len(ex.labels)
    assert (ex.weight, ex.group) == (0.25, "case-1")
    # the trained tokens read back as the answer and the turn's end, nothing of the prompt
    trained = [t for t in ex.labels if t != IGNORE]
    assert tok.decode(trained) == response + "<|im_end|>"
    assert tok.decode(ex.input_ids) == prompt + response + "<|im_end|>"


def test_encode_example_boundary_is_the_chatml_header(tok, prompt):
    # the last masked token closes "<|im_start|>assistant\n"; the first trained one starts the answer
    ex = encode_example(tok, prompt, "<answer> 不违规 </answer>")
    first = ex.labels.index(next(t for t in ex.labels if t != IGNORE))
    assert tok.decode(ex.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert tok.decode(ex.input_ids[first:]).startswith("<answer>")


def test_end_of_turn_falls_back_to_eos():
    # a tokenizer without ChatML tokens ends the answer with its eos
    vocab = {"[UNK]": 0, "</s>": 1, "a": 2, "b": 3}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    assert end_of_turn_id(plain) == 1
    ex = encode_example(plain, "a a", "b")
    assert ex.input_ids == [2, 2, 3, 1]
    assert ex.labels == [IGNORE, IGNORE, 3, 1]


def test_end_of_turn_is_im_end(tok):
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>") != tok.pad_token_id


def test_collate_right_pads():
    batch = collate([
        Example([5, 6, 7], [IGNORE, 6, 7], 0.5, "a"),
        Example([1, 2, 3, 4, 8], [IGNORE, IGNORE, 3, 4, 8], 2.0, "b"),
        Example([9], [9], 1.0, "c"),
    ], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 8], [9, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE, 6, 7, IGNORE, IGNORE],
        [IGNORE, IGNORE, 3, 4, 8],
        [9, IGNORE, IGNORE, IGNORE, IGNORE],
    ]
    assert batch["weights"].tolist() == [0.5, 2.0, 1.0]
    assert batch["weights"].dtype == torch.float32
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels"))


def test_collate_pad_id_is_used(tok):
    pad = tok.pad_token_id
    batch = collate([Example([3], [3]), Example([3, 4], [3, 4])], pad_id=pad)
    assert batch["input_ids"][0, 1].item() == pad


def ce(row: list[float], target: int) -> float:
    """Cross-entropy of one position, by hand: logsumexp minus the target logit."""
    return math.log(sum(math.exp(x) for x in row)) - row[target]


def test_per_sequence_loss_by_hand():
    # vocab 3; position t's logits predict the label at t + 1
    logits = torch.tensor([
        [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]],
        [[0.0, 2.0, 0.0], [1.0, -1.0, 2.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]],
    ])
    labels = torch.tensor([
        [IGNORE, 1, 2, 0],  # predicted from positions 0, 1, 2
        [IGNORE, IGNORE, 2, IGNORE],  # one trained token, predicted from position 1; the rest is ignored
    ])
    expected_0 = (ce([2.0, 0.0, -1.0], 1) + ce([0.5, 1.5, 0.0], 2) + ce([0.0, 0.0, 3.0], 0)) / 3
    expected_1 = ce([1.0, -1.0, 2.0], 2)
    got = per_sequence_loss(logits, labels)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx([expected_0, expected_1], rel=1e-6)


def test_trained_token_loss_equals_the_loss_over_full_logits(tiny):
    """The LM head on the trained positions only: the same per-sequence loss and gradients as over all logits."""
    enc = collate([Example([5, 6, 7, 8, 9, 10], [IGNORE, IGNORE, IGNORE, 8, 9, 10]),
                   Example([11, 12, 13, 14], [IGNORE, 12, IGNORE, 14]),
                   Example([15, 16, 17], [IGNORE, IGNORE, IGNORE])], pad_id=0)  # nothing trained: loss 0
    model = tiny.model
    args = (enc["input_ids"], enc["attention_mask"])
    full = per_sequence_loss(model(input_ids=args[0], attention_mask=args[1]).logits, enc["labels"])
    full.sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    fast = trained_token_loss(model, *args, enc["labels"])
    fast.sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert torch.allclose(fast, full, atol=1e-6) and fast[2].item() == 0.0 and fast[0].item() > 0
    # float rounding only: the sums run in another order (about 1e-6 of gradients of size 1 to 5)
    assert set(got) == set(want) and all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-5) for n in want)


def test_per_sequence_loss_ignores_masked_logits():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, IGNORE, 6]])
    base = per_sequence_loss(logits, labels)
    changed = logits.clone()
    changed[0, 0] += 100.0  # predicts a masked label
    changed[0, 2] -= 50.0  # predicts a masked label
    changed[0, 4] += 9.0  # the last position predicts nothing
    assert torch.allclose(per_sequence_loss(changed, labels), base)
    changed[0, 3, 6] += 1.0  # predicts the trained label 6: must matter
    assert per_sequence_loss(changed, labels).item() < base.item()


def test_per_sequence_loss_all_masked_is_zero():
    logits = torch.randn(2, 3, 4)
    labels = torch.full((2, 3), IGNORE)
    assert per_sequence_loss(logits, labels).tolist() == [0.0, 0.0]


def test_loss_on_collated_batch_matches_single(tok, prompt):
    # padding a short example to a long batch must not change its loss
    torch.manual_seed(0)
    short = encode_example(tok, prompt, "<answer> 不违规 </answer>")
    long = encode_example(tok, prompt, "<think>依据【354-0-0】。</think><answer> 容留他人吸毒 | 7 </answer>")
    batch = collate([short, long], tok.pad_token_id)
    vocab = len(tok)
    table = torch.randn(vocab, vocab)  # a fixed "model": next-token logits depend on the current token only
    alone = per_sequence_loss(table[torch.tensor([short.input_ids])], torch.tensor([short.labels]))
    batched = per_sequence_loss(table[batch["input_ids"]], batch["labels"])
    assert batched[0].item() == pytest.approx(alone.item(), rel=1e-6)
