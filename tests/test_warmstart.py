"""Tests for lawshift.warmstart: noisy terms, templated answers that parse back, and a short seeded warm-start."""

from __future__ import annotations

import random

import pytest
import torch

from lawshift.answers import DEATH, LIFE, NO_VIOLATION, XT, Answer, parse_answer
from lawshift.data import ArticleLookup, Case, load_articles, training_cases
from lawshift.tiny import TEMPLATE_STRINGS, TinySpec, build_model, build_tokenizer
from lawshift.warmstart import noisy_term, template_response, warm_start

FIXED_TERMS = [0, 1, 2, 3, 7, 36, 300, 9999]


@pytest.mark.parametrize("term", [LIFE, DEATH])
@pytest.mark.parametrize("noise", [0.0, 0.5, 1.0])
def test_noisy_term_keeps_xt(term, noise):
    rng = random.Random(0)
    assert all(noisy_term(term, rng, noise) == term for _ in range(50))


@pytest.mark.parametrize("term", FIXED_TERMS)
def test_noisy_term_without_noise_is_gold(term):
    rng = random.Random(0)
    assert all(noisy_term(term, rng, 0.0) == term for _ in range(50))


@pytest.mark.parametrize("term", FIXED_TERMS)
def test_noisy_term_full_noise_never_gold(term):
    rng = random.Random(0)
    got = [noisy_term(term, rng, 1.0) for _ in range(200)]
    assert term not in got
    assert min(got) >= 1
    assert max(got) < LIFE  # a perturbed fixed term never turns into the life/death codes
    assert all(abs(g - term) <= 3 or term < 3 for g in got)


def test_noisy_term_share_and_determinism():
    draws = [noisy_term(12, random.Random(7), 0.5) for _ in range(3)]
    assert len(set(draws)) == 1  # same rng state, same draw
    rng = random.Random(0)
    changed = sum(noisy_term(12, rng, 0.3) != 12 for _ in range(2000))
    assert 0.25 < changed / 2000 < 0.35


ARTS = [("354-0-0", "容留他人吸食、注射毒品的……"), ("357-0-0", "毒品是指……")]
TEMPLATE_CASES = [
    # (id, case, articles, term given, parsed answer)
    ("fixed", Case("f", ("354-0-0",), "容留他人吸毒", 7), ARTS[:1], 7, Answer("V", "容留他人吸毒", 7)),
    ("noisy_term_wins", Case("f", ("354-0-0",), "容留他人吸毒", 7), ARTS[:1], 9, Answer("V", "容留他人吸毒", 9)),
    ("two_articles", Case("f", ("354-0-0", "357-0-0"), "盗窃", 36), ARTS, 36, Answer("V", "盗窃", 36)),
    ("no_articles", Case("f", (), "盗窃", 6), [], 6, Answer("V", "盗窃", 6)),
    ("life", Case("f", ("232-0-0",), "故意杀人", LIFE), [], LIFE, Answer("V", "故意杀人", XT)),
    ("death", Case("f", ("232-0-0",), "故意杀人", DEATH), [], DEATH, Answer("V", "故意杀人", XT)),
    ("no_violation", Case("f", ("354-0-0",), NO_VIOLATION, 0), ARTS[:1], 0, Answer("NV", None, None)),
]


@pytest.mark.parametrize("case,arts,term,expected", [c[1:] for c in TEMPLATE_CASES],
                         ids=[c[0] for c in TEMPLATE_CASES])
def test_template_response_parses_back(case, arts, term, expected):
    text = template_response(case, arts, term)
    assert parse_answer(text) == expected
    assert text.startswith("<think>") and text.endswith("</answer>")
    for art_id, _ in arts:
        assert f"【{art_id}】" in text  # the reasoning cites the articles it was given
    if not arts:
        assert "相关法条" in text


# -----------------------------------------------------------------------------
# warm_start on a very small model

STEPS = 30


@pytest.fixture(scope="module")
def setup(sample_root):
    cases = training_cases(sample_root)[:6]
    arts_path = sample_root / "criminal_law_articles.json"
    articles = load_articles(arts_path)
    texts = [c.fact for c in cases] + [articles[a] for c in cases for a in c.relevant_articles] + TEMPLATE_STRINGS
    tok = build_tokenizer(texts * 3, vocab_size=500, model_max_length=2048)
    spec = TinySpec(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, max_position_embeddings=2048, seed=0)
    return tok, spec, cases, ArticleLookup(articles, str(arts_path))


def run(setup, seed: int, steps: int = STEPS):
    tok, spec, cases, lookup = setup
    model = build_model(tok, spec)
    losses = warm_start(model, tok, cases, lookup, steps=steps, batch_size=2, lr=1e-2, noise=0.5, seed=seed)
    return model, losses


@pytest.fixture(scope="module")
def first_run(setup):
    return run(setup, seed=0)


def test_warm_start_lowers_the_loss(first_run):
    model, losses = first_run
    assert len(losses) == STEPS
    assert all(torch.isfinite(torch.tensor(losses)))
    start, end = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert end < start - 1.5, (start, end)
    assert not model.training  # handed back in eval mode


def test_warm_start_is_deterministic(setup, first_run):
    model, losses = first_run
    again, losses_again = run(setup, seed=0)
    assert losses_again == losses
    state, state_again = model.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    _, other = run(setup, seed=1, steps=3)
    assert other != losses[:3]  # another seed draws other batches


@pytest.mark.parametrize("term,offsets,expected", [
    (7, [2], {9}),  # a systematic over-statement: every perturbed term is gold + 2
    (7, [-2, 3], {5, 10}),
    (1, [-1], {1}),  # no valid perturbed term (0 months): the gold term stays
])
def test_noisy_term_uses_the_given_offsets(term, offsets, expected):
    rng = random.Random(3)
    assert {noisy_term(term, rng, 1.0, offsets) for _ in range(100)} == expected
