"""Tests for lawshift.train.tiny, the offline Qwen2 stand-in: the tokenizer and model save and load like the hub model,
offline and deterministically; the warm-start's noisy terms and templated answers; a short seeded warm-start; and
`build_base`, what stage `base` runs for `model.base: tiny`."""

from __future__ import annotations

import dataclasses
import json
import os
import random

import pytest
import torch
from conftest import JUDGE, SAMPLE, dump_json, read_json, small_root
from transformers import AutoModelForCausalLM, AutoTokenizer

from lawshift.core import models
from lawshift.core.files import InputError
from lawshift.core.params import DataParams, TinyParams
from lawshift.task.answers import DEATH, LIFE, NO_VIOLATION, XT, Answer, parse_answer
from lawshift.task.data import ArticleLookup, Case, load_articles, training_cases
from lawshift.train.tiny import (
    NOISE_OFFSETS,
    TEMPLATE_REPEATS,
    TEMPLATE_STRINGS,
    build_base,
    build_model,
    build_tokenizer,
    corpus_texts,
    count_params,
    noisy_term,
    template_response,
    warm_start,
)

CORPUS = (SAMPLE / "training_set.json", SAMPLE / "criminal_law_articles.json")

FACT = (
    "罗定市人民检察院指控：被告人黄田生于2019年9月12日晚上，容留吸毒人员吴某德、谭某泽二人在其家中二楼吸食甲基苯丙胺。"
    "公安民警在黄田生家中将三人抓获，并扣押自制吸毒工具矿泉水瓶、吸管、锡纸等物品。"
)
SMALL_TEXTS = [
    FACT,
    "【容留他人吸毒罪】容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。",
    "公诉机关指控，被告人张恒贵驾驶鲁Ｑ×××××号红色马自达轿车，容留闫某在其轿车内共同吸食冰毒。",
    "容留他人吸毒",
    *TEMPLATE_STRINGS,
]
SMALL_SPEC = TinyParams(vocab_size=600)


def _load(out_dir):
    return AutoTokenizer.from_pretrained(out_dir), AutoModelForCausalLM.from_pretrained(out_dir)


def save(tokenizer, model, out_dir):
    """Save as build_base does (safetensors, the tokenizer beside the weights)."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Tokenizer and model at the default spec (untrained), built from the real sample so the vocabulary reaches its
    full size, and saved: (folder, parameter count, the tokenizer as built)."""
    spec = TinyParams()
    tokenizer = build_tokenizer(corpus_texts(*CORPUS, JUDGE), spec.vocab_size, spec.max_position_embeddings)
    model = build_model(tokenizer, spec, 0)
    out = save(tokenizer, model, tmp_path_factory.mktemp("tiny"))
    return out, count_params(model), tokenizer


@pytest.fixture
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so patch its constant too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


# --- tokenizer and model -------------------------------------------------------------------------------------------

def test_saved_files_are_safetensors(built):
    out, _, _ = built
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= files
    assert "pytorch_model.bin" not in files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]


def test_load_offline_special_tokens_and_config(built, offline):
    out, n_params, _ = built
    tok, model = _load(out)
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "right"
    assert tok.model_max_length == 4096
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end
    assert model.config.eos_token_id == im_end
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == im_end
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok) == 3000
    assert model.dtype == torch.float32
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    assert 500_000 <= n_params <= 2_000_000
    assert sum(p.numel() for p in model.parameters()) == n_params
    spec = TinyParams()
    assert (model.config.hidden_size, model.config.intermediate_size, model.config.num_hidden_layers,
            model.config.num_attention_heads, model.config.num_key_value_heads,
            model.config.max_position_embeddings) == (spec.hidden_size, spec.intermediate_size,
                                                      spec.num_hidden_layers, spec.num_attention_heads,
                                                      spec.num_key_value_heads, spec.max_position_embeddings)


def test_chat_template_renders_chatml(built, offline):
    tok, _ = _load(built[0])
    messages = [{"role": "system", "content": "你是一名法官。"}, {"role": "user", "content": "案件事实：盗窃。"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\n你是一名法官。<|im_end|>\n"
        "<|im_start|>user\n案件事实：盗窃。<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    turn = tok.apply_chat_template([{"role": "assistant", "content": "好"}], tokenize=False)
    assert turn == "<|im_start|>assistant\n好<|im_end|>\n"


def test_chinese_round_trip_and_tags_are_plain_text(built, offline):
    tok, _ = _load(built[0])
    for text in [
        *corpus_texts(*CORPUS, JUDGE)[:50],
        FACT,
        "未见过的字：龘靐 emoji🙂 and English 123",
        "鲁Ｑ×××号，全角１２３，\n\t换行  空格",
    ]:
        assert tok.decode(tok(text)["input_ids"]) == text
    # only the ChatML tokens are special: reasoning/answer tags survive skip_special_tokens
    completion = "<think>推理</think><answer>容留他人吸毒|7个月</answer><|im_end|>"
    ids = tok(completion)["input_ids"]
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "<think>推理</think><answer>容留他人吸毒|7个月</answer>"
    # byte-level BPE compresses Chinese: well under one token per character
    assert len(tok(FACT)["input_ids"]) < len(FACT)


def test_loaded_tokenizer_matches_built_one(built, offline):
    # AutoTokenizer rebuilds a qwen2 tokenizer as Qwen2Tokenizer; it must tokenize exactly as the one we trained
    out, _, tokenizer = built
    loaded, _ = _load(out)
    for text in corpus_texts(*CORPUS, JUDGE)[:200]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_generate_batched_left_padded(built, offline):
    tok, model = _load(built[0])
    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
        for c in ["盗窃", FACT]
    ]
    batch = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 8)
    assert out.dtype == torch.long
    assert int(out.max()) < len(tok)


def build_small(spec: TinyParams, out_dir, seed: int = 0):
    tokenizer = build_tokenizer(SMALL_TEXTS, spec.vocab_size, spec.max_position_embeddings)
    return save(tokenizer, build_model(tokenizer, spec, seed), out_dir)


def test_same_seed_same_build(tmp_path):
    build_small(SMALL_SPEC, tmp_path / "a")
    build_small(SMALL_SPEC, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    state_a = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    state_b = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_different_seed_different_weights(tmp_path):
    build_small(SMALL_SPEC, tmp_path / "a")
    build_small(TinyParams(vocab_size=600), tmp_path / "b", seed=1)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    state_a = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    state_b = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert not torch.equal(state_a["model.embed_tokens.weight"], state_b["model.embed_tokens.weight"])
    assert not torch.equal(
        state_a["model.layers.0.self_attn.q_proj.weight"], state_b["model.layers.0.self_attn.q_proj.weight"]
    )


@pytest.mark.parametrize("spec", [
    TinyParams(vocab_size=600),
    TinyParams(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=512),
], ids=["default_sizes", "smaller"])
def test_build_model_is_sized_by_the_spec(spec):
    tokenizer = build_tokenizer(SMALL_TEXTS, spec.vocab_size, spec.max_position_embeddings)
    model = build_model(tokenizer, spec, 0)
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.max_position_embeddings) == (
        len(tokenizer), spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers, spec.num_attention_heads,
        spec.num_key_value_heads, spec.max_position_embeddings)
    assert tokenizer.model_max_length == spec.max_position_embeddings
    assert c.tie_word_embeddings and model.dtype == torch.float32
    assert count_params(model) == sum(p.numel() for p in model.parameters())


# --- corpus --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("articles", [{"264-0-0": "甲条文", "1-0-0": "乙条文"},
                                      [{"id": "264-0-0", "content": "甲条文"}, {"id": "1-0-0", "content": "乙条文"}]],
                         ids=["object", "list"])
def test_corpus_texts_reads_the_training_side_only(tmp_path, articles):
    case = {"fact": "被告人甲盗窃财物。", "relevant_articles": ["264-0-0"], "charge": "盗窃", "prison_time": 6}
    dump_json(tmp_path / "training_set.json", [case, {**case, "fact": "乙", "charge": "诈骗"}])
    dump_json(tmp_path / "articles.json", articles)
    folder = tmp_path / "action_explicit_extend"  # a test folder beside them: never read
    dump_json(folder / "original.json", [{**case, "fact": "测试原"}])
    (folder / "poisoned.json").write_text("not json", encoding="utf-8")
    texts = corpus_texts(tmp_path / "training_set.json", tmp_path / "articles.json", JUDGE)
    assert texts == [
        "被告人甲盗窃财物。", "盗窃", "乙", "诈骗",
        "甲条文", "乙条文",
        *(TEMPLATE_STRINGS + [JUDGE.system]) * TEMPLATE_REPEATS,
    ]  # fmt: skip


def test_corpus_texts_on_sample():
    texts = corpus_texts(SAMPLE / "training_set.json", SAMPLE / "criminal_law_articles.json", JUDGE)
    assert len(texts) > 500 and "<think>" in texts and "XT" in texts
    test_facts = {c["fact"] for f in ("action_explicit_extend", "action_implicit_expand")
                  for split in ("original", "poisoned") for c in read_json(SAMPLE / f / f"{split}.json")}
    assert not test_facts & set(texts)


@pytest.mark.slow
def test_base_is_the_same_bytes_with_every_test_folder_corrupted(project):
    """The base reads no evaluation data: corrupting every test folder (cases and articles) changes nothing."""
    from conftest import run_stage

    root = project(base=False, params={"model": {"tiny": {"warmup_steps": 10}}})

    def build() -> dict[str, bytes]:
        proc = run_stage(root, "base")
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {p.name: p.read_bytes() for p in sorted((root / "models" / "base").iterdir())}

    before = build()
    for folder in [p for p in (root / "data" / "small").iterdir() if p.is_dir()]:
        for file in folder.iterdir():
            file.write_text("{corrupt", encoding="utf-8")
    assert build() == before


# --- warm-start: noisy terms and templated answers ----------------------------------------------------------------

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
    assert all(g - term in NOISE_OFFSETS for g in got if term >= 3)  # the default offsets


def test_noisy_term_share_and_determinism():
    draws = [noisy_term(12, random.Random(7), 0.5) for _ in range(3)]
    assert len(set(draws)) == 1  # same rng state, same draw
    rng = random.Random(0)
    changed = sum(noisy_term(12, rng, 0.3) != 12 for _ in range(2000))
    assert 0.25 < changed / 2000 < 0.35


@pytest.mark.parametrize("term,offsets,expected", [
    (7, [2], {9}),  # a systematic over-statement: every perturbed term is gold + 2
    (7, [-2, 3], {5, 10}),
    (1, [-1], {1}),  # no valid perturbed term (0 months): the gold term stays
    (LIFE - 1, [1], {LIFE - 1}),  # nor one that would become the life code
])
def test_noisy_term_uses_the_given_offsets(term, offsets, expected):
    rng = random.Random(3)
    assert {noisy_term(term, rng, 1.0, offsets) for _ in range(100)} == expected


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


# --- warm_start on a very small model ------------------------------------------------------------------------------

STEPS = 30
MICRO = TinyParams(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=1, max_position_embeddings=2048)


@pytest.fixture(scope="module")
def setup(sample_root):
    cases = training_cases(sample_root)[:6]
    arts_path = sample_root / "criminal_law_articles.json"
    articles = load_articles(arts_path)
    texts = [c.fact for c in cases] + [articles[a] for c in cases for a in c.relevant_articles] + TEMPLATE_STRINGS
    tok = build_tokenizer(texts * 3, vocab_size=MICRO.vocab_size, model_max_length=MICRO.max_position_embeddings)
    return tok, MICRO, cases, ArticleLookup(articles, str(arts_path))


def run(setup, seed: int, steps: int = STEPS):
    tok, spec, cases, lookup = setup
    model = build_model(tok, spec, 0)
    losses = warm_start(model, tok, cases, lookup, JUDGE, steps=steps, batch_size=2, lr=1e-2, noise=0.5, seed=seed)
    return model, losses


@pytest.fixture(scope="module")
def first_run(setup):
    return run(setup, seed=0)


@pytest.mark.slow
def test_warm_start_lowers_the_loss(first_run):
    model, losses = first_run
    assert len(losses) == STEPS
    assert all(torch.isfinite(torch.tensor(losses)))
    start, end = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert end < start - 1.5, (start, end)
    assert not model.training  # handed back in eval mode


@pytest.mark.slow
def test_warm_start_is_deterministic(setup, first_run):
    model, losses = first_run
    again, losses_again = run(setup, seed=0)
    assert losses_again == losses
    state, state_again = model.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    _, other = run(setup, seed=1, steps=3)
    assert other != losses[:3]  # another seed draws other batches


# --- build_base: the base stage for `model.base: tiny` -------------------------------------------------------------

BASE_SPEC = TinyParams(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024, warmup_steps=3,
                       warmup_batch_size=2)


@pytest.fixture
def data(tmp_path) -> DataParams:
    """A small LawShift root (the first records of the real files) as the data params name it."""
    root = small_root(tmp_path / "data", n_train=4, n_test=2)
    return DataParams(root=str(root), train_articles=str(root / "criminal_law_articles.json"))


def weights(folder) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.mark.slow
def test_build_base_saves_a_warm_started_base_atomically(tmp_path, data, offline):
    out = tmp_path / "models" / "base"
    out.mkdir(parents=True)
    (out / "stale.bin").write_bytes(b"from an earlier base")  # replaced whole, not merged into
    metrics = build_base(BASE_SPEC, data, out, 0, JUDGE)
    # base_*: no key of metrics/base.json reads as a DVC param in `dvc exp show` (`params` did)
    assert set(metrics) == {"base_kind", "base_parameters", "base_vocab", "warmup_loss_first", "warmup_loss_last"}
    assert metrics["base_kind"] == "tiny" and metrics["base_vocab"] == BASE_SPEC.vocab_size
    assert all(isinstance(metrics[k], float) and metrics[k] > 0 for k in ("warmup_loss_first", "warmup_loss_last"))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(os.listdir(out))
    assert "stale.bin" not in os.listdir(out) and "pytorch_model.bin" not in os.listdir(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["base"]  # no temp sibling left
    # it loads as every later stage loads it
    assert models.resolve_base(out) == str(out)
    model = models.load_model(str(out), device=torch.device("cpu"))
    tokenizer = models.load_tokenizer(str(out))
    assert metrics["base_parameters"] == count_params(model) == sum(p.numel() for p in model.parameters())
    assert len(tokenizer) == model.config.vocab_size == BASE_SPEC.vocab_size
    assert (model.config.hidden_size, model.config.max_position_embeddings) == (32, 1024)
    assert tokenizer.model_max_length == 1024
    # warm-started: not the seeded random initialisation
    untrained = build_model(tokenizer, BASE_SPEC, 0).state_dict()
    assert not torch.equal(model.state_dict()["model.embed_tokens.weight"], untrained["model.embed_tokens.weight"])


@pytest.mark.slow
def test_build_base_is_deterministic(tmp_path, data, offline):
    first = build_base(BASE_SPEC, data, tmp_path / "a", 0, JUDGE)
    assert build_base(BASE_SPEC, data, tmp_path / "b", 0, JUDGE) == first
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = build_base(BASE_SPEC, data, tmp_path / "c", 1, JUDGE)
    assert other["warmup_loss_first"] != first["warmup_loss_first"]
    assert not torch.equal(weights(tmp_path / "c")["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_build_base_strict_articles_names_the_missing_id(tmp_path, data):
    articles = tmp_path / "articles.json"
    dump_json(articles, {"1-0-0": "【立法宗旨】"})
    strict = DataParams(root=data.root, train_articles=str(articles), strict_articles=True)
    out = tmp_path / "base"
    first_id = training_cases(data.root)[0].relevant_articles[0]
    with pytest.raises(InputError) as exc:
        build_base(BASE_SPEC, strict, out, 0, JUDGE)
    assert str(exc.value) == (f"{articles}: record 0: field 'relevant_articles': article id {first_id!r} not in "
                              f"{articles}")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["articles.json", "data"]


def test_build_base_without_warm_start(tmp_path, data):
    # warmup_steps 0 is a valid param (the untrained base); build_base handles an empty loss list
    spec = dataclasses.replace(BASE_SPEC, warmup_steps=0)
    assert spec.problems() == []
    out = tmp_path / "base"
    metrics = build_base(spec, data, out, 0, JUDGE)
    assert metrics["warmup_loss_first"] is None and metrics["warmup_loss_last"] is None
    tokenizer = AutoTokenizer.from_pretrained(out)
    untrained = build_model(tokenizer, spec, 0).state_dict()
    saved = weights(out)
    assert all(torch.equal(saved[k], untrained[k]) for k in untrained)  # exactly the seeded initialisation
