"""Tests for lawshift.engines.hf_backend.HFBackend on the tiny base: shapes, left padding, seeds, eos handling, for both
the shared-prefill decoder and plain `generate`; the shared-prefill decoder's greedy tokens against `generate`'s and
its sampled tokens' distribution against the exact tempered, nucleus-filtered next-token probabilities."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from conftest import JUDGE, seeds
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from lawshift.engines.generation import Completion, GenerationSettings, PromptResult, call_size
from lawshift.engines.hf_backend import HFBackend, decode, top_p_candidates, until_eos
from lawshift.task.data import ArticleLookup, load_articles, load_cases
from lawshift.task.prompts import render_prompt

CPU = torch.device("cpu")
SPECIAL = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
MAX_NEW = 40  # the warm-started tiny base answers in ~30 tokens


@pytest.fixture(scope="module", params=[True, False], ids=["shared_prefill", "plain_generate"])
def backend(tiny, request):
    """Every interface test runs on both paths: the shared-prefill decoder (default) and plain `generate`."""
    model, tokenizer = tiny.model, tiny.tokenizer
    return HFBackend(model, tokenizer, CPU, shared_prefill=request.param)


@pytest.fixture(scope="module")
def prompts(tiny, sample_root):
    """Three real prompts of clearly different lengths, so a batch needs left padding."""
    folder = sample_root / "action_explicit_extend"
    cases = load_cases(folder / "original.json")
    lookup = ArticleLookup(load_articles(folder / "articles_original.json"), str(folder))
    facts = [cases[0].fact, "被告人甲容留乙吸毒。", cases[2].fact]
    tokenizer = tiny.tokenizer
    out = [render_prompt(tokenizer, JUDGE.messages(f, lookup.for_case(cases[0]))) for f in facts]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in out]
    assert len(set(lengths)) == 3
    return out


def texts(results: list[PromptResult]) -> list[list[str]]:
    return [[c.text for c in r.completions] for r in results]


SHAPES = [
    # (n, temperature): greedy always yields n copies of its one answer
    (1, 0.0),
    (3, 0.0),
    (1, 0.8),
    (4, 0.8),
]


@pytest.mark.parametrize("n,temperature", SHAPES)
def test_one_result_per_prompt_with_n_completions(backend, prompts, n, temperature):
    settings = GenerationSettings(n=n, temperature=temperature, top_p=0.95, max_new_tokens=MAX_NEW)
    results = backend.generate(prompts, settings, seeds(prompts, 0))
    assert len(results) == len(prompts)
    for r in results:
        assert isinstance(r, PromptResult)
        assert len(r.completions) == n
        assert all(isinstance(c, Completion) for c in r.completions)
        assert all(1 <= c.num_tokens <= MAX_NEW for c in r.completions)


def test_prompt_tokens_are_unpadded_lengths(backend, prompts):
    results = backend.generate(prompts, GenerationSettings(n=2, temperature=0.8, max_new_tokens=4), seeds(prompts, 0))
    expected = [len(backend.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert [r.prompt_tokens for r in results] == expected


def test_same_seed_same_samples_other_seed_other_samples(backend, prompts):
    settings = GenerationSettings(n=4, temperature=0.8, top_p=0.95, max_new_tokens=MAX_NEW)
    a = backend.generate(prompts, settings, seeds(prompts, 1))
    b = backend.generate(prompts, settings, seeds(prompts, 1))
    c = backend.generate(prompts, settings, seeds(prompts, 2))
    assert a == b
    # 12 sampled answers at T=0.8 with noisy terms: identical lists would mean the seed is ignored
    assert texts(a) != texts(c)
    # sampling actually varies within a prompt too (n answers are not one answer repeated)
    assert any(len(set(t)) > 1 for t in texts(a))


def test_greedy_is_identical_across_n_and_seeds(backend, prompts):
    settings = GenerationSettings(n=3, temperature=0.0, max_new_tokens=MAX_NEW)
    a = backend.generate(prompts, settings, seeds(prompts, 0))
    b = backend.generate(prompts, settings, seeds(prompts, 123))
    assert a == b
    for r in a:
        assert len({c.text for c in r.completions}) == 1


def test_batched_greedy_equals_unbatched(backend, prompts):
    # left padding (with its attention mask and positions) must not change what a prompt generates
    settings = GenerationSettings(n=1, temperature=0.0, max_new_tokens=MAX_NEW)
    batched = backend.generate(prompts, settings, seeds(prompts, 0))
    for prompt, result in zip(prompts, batched, strict=True):
        (alone,) = backend.generate([prompt], settings, seeds([prompt], 0))
        assert alone == result


def test_a_prompts_samples_do_not_depend_on_its_batch(backend, prompts):
    # each prompt draws from its own generator: alone or beside others, with its seed it gets the same answers
    # (the shared-prefill path; the plain `generate` baseline draws a call from one global seed)
    if not backend.shared_prefill:
        pytest.skip("the plain generate baseline has one seed per call")
    settings = GenerationSettings(n=3, temperature=0.8, top_p=0.95, max_new_tokens=MAX_NEW)
    streams = [101 * 2**16, 202 * 2**16, 303 * 2**16]
    batched = backend.generate(prompts, settings, streams)
    assert [backend.generate([p], settings, [s])[0] for p, s in zip(prompts, streams, strict=True)] == batched
    assert backend.generate(prompts[::-1], settings, streams[::-1]) == batched[::-1]
    other = backend.generate(prompts, settings, [s + 7 for s in streams])
    assert [c.text for r in other for c in r.completions] != [c.text for r in batched for c in r.completions]


def test_one_seed_per_prompt_is_required(backend, prompts):
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        backend.generate(prompts, GenerationSettings(n=2, temperature=0.8), [0, 1])


def test_completions_belong_to_their_prompt(backend, prompts):
    # prompts that already hold the answer's start get short endings; full prompts get the whole answer.
    # Interleaved, so answers handed to the wrong prompt (an index slip over n) show up.
    prefix = "<think>依据【354-0-0】，被告人的行为构成容留他人吸毒罪，结合情节量刑。</think><answer> 容留他人吸毒 |"
    mixed = [prompts[0], prompts[1] + prefix, prompts[2], prompts[0] + prefix]
    results = backend.generate(mixed, GenerationSettings(n=3, temperature=0.8, max_new_tokens=MAX_NEW), seeds(mixed, 0))
    for i, r in enumerate(results):
        for c in r.completions:
            if i % 2:
                assert "<think>" not in c.text and c.num_tokens < 10, (i, c)
            else:
                assert c.text.startswith("<think>"), (i, c)


def reference_greedy(backend, prompt: str, max_new: int) -> list[int]:
    """New token ids from a plain, unpadded transformers generate call."""
    tok = backend.tokenizer
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    out = backend.model.generate(**enc, do_sample=False, max_new_tokens=max_new, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_num_tokens_and_text_include_eos_exactly_once(backend, prompts):
    tok = backend.tokenizer
    (result,) = backend.generate(prompts[:1], GenerationSettings(max_new_tokens=MAX_NEW), seeds(prompts[:1], 0))
    (comp,) = result.completions
    ids = reference_greedy(backend, prompts[0], MAX_NEW)
    assert tok.eos_token_id in ids, "the warm-started base should close its answer within MAX_NEW tokens"
    k = ids.index(tok.eos_token_id)
    assert comp == Completion(tok.decode(ids[:k]), k + 1, True)
    assert "<answer>" in comp.text and comp.text.endswith("</answer>")


@pytest.mark.parametrize("max_new", [1, 3, 10])
def test_cut_off_completion_is_not_finished(backend, prompts, max_new):
    tok = backend.tokenizer
    (result,) = backend.generate(prompts[:1], GenerationSettings(max_new_tokens=max_new), seeds(prompts[:1], 0))
    (comp,) = result.completions
    ids = reference_greedy(backend, prompts[0], max_new)
    assert tok.eos_token_id not in ids
    assert comp == Completion(tok.decode(ids), max_new, False)


def test_sampled_counts_match_finished(backend, prompts):
    settings = GenerationSettings(n=4, temperature=1.0, max_new_tokens=MAX_NEW)
    results = backend.generate(prompts, settings, seeds(prompts, 3))
    comps = [c for r in results for c in r.completions]
    assert any(c.finished for c in comps)
    for c in comps:
        assert c.finished or c.num_tokens == MAX_NEW
        # no special token leaks into the text: not the eos, not the padding after it
        assert not any(s in c.text for s in SPECIAL)


def test_settings_greedy_flag():
    assert GenerationSettings(temperature=0.0).greedy
    assert GenerationSettings(temperature=-1.0).greedy
    assert not GenerationSettings(temperature=0.7).greedy


# --- the shared-prefill decoder against transformers --------------------------------------------------------------

@pytest.fixture(scope="module")
def both(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    return HFBackend(model, tokenizer, CPU), HFBackend(model, tokenizer, CPU, shared_prefill=False)


ANSWER_START = "<think>依据【354-0-0】，被告人的行为构成容留他人吸毒罪，结合情节量刑。</think><answer> 容留他人吸毒 | "


@pytest.mark.parametrize("n, max_new", [(1, 1), (1, 7), (1, 60), (3, 60)])
def test_shared_prefill_greedy_equals_generate(both, prompts, n, max_new):
    # answers of very different lengths in one padded batch: rows leave the shared-prefill batch at different steps
    mixed = [prompts[0], prompts[1] + ANSWER_START, prompts[2], prompts[0] + ANSWER_START[:20]]
    shared, plain = both
    settings = GenerationSettings(n=n, temperature=0.0, max_new_tokens=max_new)
    a, b = shared.generate(mixed, settings, seeds(mixed, 0)), plain.generate(mixed, settings, seeds(mixed, 0))
    assert a == b
    if max_new == 60:  # some answers ended while others went on
        assert len({c.num_tokens for r in a for c in r.completions}) > 1
        assert any(c.finished for r in a for c in r.completions)


def test_growing_cache_gives_the_same_tokens(tiny, prompts):
    """A cache buffer with room for 3 tokens grows many times during 40 steps; the tokens must not change."""
    model, tokenizer = tiny.model, tiny.tokenizer
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = HFBackend(model, tokenizer, CPU).eos_ids
    for settings in (GenerationSettings(n=1, max_new_tokens=MAX_NEW),
                     GenerationSettings(n=3, temperature=0.8, top_p=0.9, max_new_tokens=MAX_NEW)):
        args = (model, enc["input_ids"], enc["attention_mask"], settings, seeds(prompts, 5), eos,
                tokenizer.pad_token_id)
        with torch.inference_mode():
            assert torch.equal(decode(*args, cache_room=3), decode(*args))


def test_shared_prefill_is_reproducible_and_seeded(tiny, prompts):
    model, tokenizer = tiny.model, tiny.tokenizer
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = HFBackend(model, tokenizer, CPU).eos_ids
    settings = GenerationSettings(n=8, temperature=0.8, top_p=0.95, max_new_tokens=MAX_NEW)

    def run(seed):
        with torch.inference_mode():
            return decode(model, enc["input_ids"], enc["attention_mask"], settings, seeds(prompts, seed), eos,
                          tokenizer.pad_token_id)

    first = run(11)
    torch.manual_seed(123)  # the global RNG plays no part: only the seed given does
    assert torch.equal(run(11), first)
    assert not torch.equal(run(12), first)
    assert first.shape == (len(prompts) * 8, MAX_NEW)


# Sampled answers are compared with the exact distribution of their first two tokens, computed with transformers'
# own TemperatureLogitsWarper and TopPLogitsWarper on the logits of plain forward passes (no cache, no padding).
# The prompt ends just before the prison term, where the warm-started base is genuinely unsure.
DRAWS = 4000
RARE = 2e-3  # token pairs less likely than this are pooled into one outcome, `None`


def exact_next(model, ids: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Probabilities of the next token after each row of `ids`, as transformers samples it."""
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[:, -1].float()
    scores = TemperatureLogitsWarper(temperature)(ids, logits)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores.softmax(dim=-1)


def exact_pairs(model, ids: torch.Tensor, temperature: float, top_p: float) -> tuple[dict, set]:
    """P(first, second) of the pairs at least RARE likely, the rest pooled under None; and every pair whose first
    token has a probability over RARE and whose second token can be drawn at all (probability > 0)."""
    first = exact_next(model, ids, temperature, top_p)[0]
    likely = [int(t) for t in (first > RARE).nonzero().squeeze(1)]
    extended = torch.cat([ids.repeat(len(likely), 1), torch.tensor(likely)[:, None]], dim=1)
    joint = first[likely, None] * exact_next(model, extended, temperature, top_p)
    possible = {(t1, t2) for k, t1 in enumerate(likely) for t2 in (joint[k] > 0).nonzero().squeeze(1).tolist()}
    pairs = {(t1, t2): float(joint[k, t2]) for k, t1 in enumerate(likely)
             for t2 in (joint[k] > RARE).nonzero().squeeze(1).tolist()}
    pairs[None] = max(0.0, 1.0 - sum(pairs.values()))
    return pairs, possible


def total_variation(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def tolerance(p: dict, draws: int) -> float:
    """E[TV(empirical, p)] <= 0.5 * sum sqrt(p(1-p)/draws), and TV stays within sqrt(ln(1e6) / (2 draws)) of its
    mean with probability 1 - 1e-6 (McDiarmid)."""
    mean_bound = 0.5 * sum((v * (1 - v) / draws) ** 0.5 for v in p.values())
    return mean_bound + (math.log(1e6) / (2 * draws)) ** 0.5


@pytest.mark.parametrize("temperature, top_p", [(0.8, 0.8), (0.6, 0.5), (1.3, 1.0)])
def test_sampled_tokens_follow_temperature_and_top_p(tiny, prompts, temperature, top_p):
    model, tokenizer = tiny.model, tiny.tokenizer
    ids = tokenizer([prompts[1] + ANSWER_START], return_tensors="pt", add_special_tokens=False)["input_ids"]
    right, possible = exact_pairs(model, ids, temperature, top_p)
    tol = tolerance(right, DRAWS)
    # The test can fail: a sampler that ignored the temperature or the top-p would be further off than tol.
    assert total_variation(right, exact_pairs(model, ids, 1.0, top_p)[0]) > 2 * tol
    if top_p < 1:
        assert total_variation(right, exact_pairs(model, ids, temperature, 1.0)[0]) > 2 * tol

    # One prompt, DRAWS answers of two tokens: one prefill, then the cache repeated DRAWS times.
    settings = GenerationSettings(n=DRAWS, temperature=temperature, top_p=top_p, max_new_tokens=2)
    with torch.inference_mode():
        drawn = [tuple(pair) for pair in decode(model, ids, torch.ones_like(ids), settings, [0], [-1],
                                                tokenizer.pad_token_id).tolist()]
    likely_firsts = {t1 for t1, _ in possible}
    assert all(pair in possible for pair in drawn if pair[0] in likely_firsts)  # nothing top-p drops is drawn
    counts = Counter(pair if pair in right else None for pair in drawn)
    empirical = {k: c / DRAWS for k, c in counts.items()}
    assert total_variation(empirical, right) < tol


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("spread", [0.5, 3.0])  # flat rows need more than the first top-k guess
def test_top_p_candidates_keep_what_transformers_keeps(top_p, spread):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((16, 2000), generator=generator) * spread
    probs = logits.softmax(dim=-1)
    weights, ids = top_p_candidates(probs, top_p)
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter(1, ids, weights > 0)
    expected = TopPLogitsWarper(top_p)(None, logits.clone()) > -float("inf")
    assert torch.equal(kept, expected)
    assert torch.equal(weights[weights > 0], probs.gather(1, ids)[weights > 0])  # kept with their probabilities


@pytest.mark.parametrize("backend, batch_size, chunk_size, count, expected", [
    ("hf", 8, 1024, 62, 8),  # hf: one padded batch per call, whatever the chunk size
    ("vllm", 8, 1024, 62, 1024),  # vllm: the chunk, however small the batch size
    ("vllm", 8, 16, 62, 16),
    ("vllm", 8, 0, 62, 62),  # 0: every case in one call
    ("vllm", 8, 0, 0, 1),
])
def test_call_size(backend, batch_size, chunk_size, count, expected):
    assert call_size(backend, batch_size, chunk_size, count) == expected


@pytest.mark.parametrize("row, eos, want", [
    ([5, 6, 2, 2, 2], {2}, [5, 6, 2]),
    ([5, 6, 7], {2}, [5, 6, 7]),  # reached no eos: every token, truncated
    ([3, 9, 9], {2, 3}, [3]),
])
def test_until_eos(row, eos, want):
    assert until_eos(row, eos) == want
