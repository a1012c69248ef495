"""Tests for lawshift.generation's HFBackend on the tiny base: shapes, left padding, seeds, eos handling."""

from __future__ import annotations

import pytest
import torch

from lawshift.data import ArticleLookup, load_articles, load_cases
from lawshift.generation import Completion, GenerationSettings, HFBackend, PromptResult
from lawshift.models import load_model, load_tokenizer
from lawshift.prompts import build_messages, render_prompt

CPU = torch.device("cpu")
SPECIAL = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
MAX_NEW = 40  # the warm-started tiny base answers in ~30 tokens


@pytest.fixture(scope="module")
def backend(tiny_base):
    return HFBackend(load_model(str(tiny_base), device=CPU), load_tokenizer(str(tiny_base)), CPU)


@pytest.fixture(scope="module")
def prompts(backend, sample_root):
    """Three real prompts of clearly different lengths, so a batch needs left padding."""
    folder = sample_root / "action_explicit_extend"
    cases = load_cases(folder / "original.json")
    lookup = ArticleLookup(load_articles(folder / "articles_original.json"), str(folder))
    facts = [cases[0].fact, "被告人甲容留乙吸毒。", cases[2].fact]
    out = [render_prompt(backend.tokenizer, build_messages(f, lookup.for_case(cases[0]))) for f in facts]
    lengths = [len(backend.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in out]
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
    results = backend.generate(prompts, settings, seed=0)
    assert len(results) == len(prompts)
    for r in results:
        assert isinstance(r, PromptResult)
        assert len(r.completions) == n
        assert all(isinstance(c, Completion) for c in r.completions)
        assert all(1 <= c.num_tokens <= MAX_NEW for c in r.completions)


def test_prompt_tokens_are_unpadded_lengths(backend, prompts):
    results = backend.generate(prompts, GenerationSettings(n=2, temperature=0.8, max_new_tokens=4), seed=0)
    expected = [len(backend.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert [r.prompt_tokens for r in results] == expected


def test_same_seed_same_samples_other_seed_other_samples(backend, prompts):
    settings = GenerationSettings(n=4, temperature=0.8, top_p=0.95, max_new_tokens=MAX_NEW)
    a = backend.generate(prompts, settings, seed=1)
    b = backend.generate(prompts, settings, seed=1)
    c = backend.generate(prompts, settings, seed=2)
    assert a == b
    # 12 sampled answers at T=0.8 with noisy terms: identical lists would mean the seed is ignored
    assert texts(a) != texts(c)
    # sampling actually varies within a prompt too (n answers are not one answer repeated)
    assert any(len(set(t)) > 1 for t in texts(a))


def test_greedy_is_identical_across_n_and_seeds(backend, prompts):
    settings = GenerationSettings(n=3, temperature=0.0, max_new_tokens=MAX_NEW)
    a = backend.generate(prompts, settings, seed=0)
    b = backend.generate(prompts, settings, seed=123)
    assert a == b
    for r in a:
        assert len({c.text for c in r.completions}) == 1


def test_batched_greedy_equals_unbatched(backend, prompts):
    # left padding (with its attention mask and positions) must not change what a prompt generates
    settings = GenerationSettings(n=1, temperature=0.0, max_new_tokens=MAX_NEW)
    batched = backend.generate(prompts, settings, seed=0)
    for prompt, result in zip(prompts, batched, strict=True):
        (alone,) = backend.generate([prompt], settings, seed=0)
        assert alone == result


def test_completions_belong_to_their_prompt(backend, prompts):
    # prompts that already hold the answer's start get short endings; full prompts get the whole answer.
    # Interleaved, so answers handed to the wrong prompt (an index slip over n) show up.
    prefix = "<think>依据【354-0-0】，被告人的行为构成容留他人吸毒罪，结合情节量刑。</think><answer> 容留他人吸毒 |"
    mixed = [prompts[0], prompts[1] + prefix, prompts[2], prompts[0] + prefix]
    results = backend.generate(mixed, GenerationSettings(n=3, temperature=0.8, max_new_tokens=MAX_NEW), seed=0)
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
    (result,) = backend.generate(prompts[:1], GenerationSettings(max_new_tokens=MAX_NEW), seed=0)
    (comp,) = result.completions
    ids = reference_greedy(backend, prompts[0], MAX_NEW)
    assert tok.eos_token_id in ids, "the warm-started base should close its answer within MAX_NEW tokens"
    k = ids.index(tok.eos_token_id)
    assert comp == Completion(tok.decode(ids[:k]), k + 1, True)
    assert "<answer>" in comp.text and comp.text.endswith("</answer>")


@pytest.mark.parametrize("max_new", [1, 3, 10])
def test_cut_off_completion_is_not_finished(backend, prompts, max_new):
    tok = backend.tokenizer
    (result,) = backend.generate(prompts[:1], GenerationSettings(max_new_tokens=max_new), seed=0)
    (comp,) = result.completions
    ids = reference_greedy(backend, prompts[0], max_new)
    assert tok.eos_token_id not in ids
    assert comp == Completion(tok.decode(ids), max_new, False)


def test_sampled_counts_match_finished(backend, prompts):
    results = backend.generate(prompts, GenerationSettings(n=4, temperature=1.0, max_new_tokens=MAX_NEW), seed=3)
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
