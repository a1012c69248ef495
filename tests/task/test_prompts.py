"""Tests for lawshift.task.prompts: the prompt file's rules, the exact messages and the exact ChatML text the model
continues."""

from __future__ import annotations

import pytest
from conftest import JUDGE, CountingTokenizer

from lawshift.core.files import InputError
from lawshift.core.models import load_tokenizer
from lawshift.task import prompts
from lawshift.task.prompts import load_prompt, prompt_from_dict, render_prompt, token_lengths
from lawshift.train.tiny import TEMPLATE_STRINGS, build_tokenizer

# Written out in full so any change to the instruction shows up here (and in a regenerated base / SFT set).
SYSTEM = (
    "你是一名中国刑事法官。请根据给出的法条和案件事实作出判决。"
    "先在<think></think>中简要推理，再在<answer></answer>中给出结论："
    "构成犯罪时写“罪名 | 刑期”，刑期为月数（只写数字），无期徒刑或死刑写 XT；"
    "不构成犯罪时写“不违规”。"
)
FACT = "被告人甲于2019年9月12日容留乙在其家中吸食甲基苯丙胺。"
A354 = ("354-0-0", "【容留他人吸毒罪】容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。")
A354_NEW = ("354-0-0", "【容留他人吸毒罪】容留他人吸食、注射、交易毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。")
A357 = ("357-0-0", "本法所称的毒品，是指鸦片、海洛因、甲基苯丙胺（冰毒）……")

RENDER_CASES = [
    ("none", [], ""),
    ("one", [A354],
     "【354-0-0】【容留他人吸毒罪】容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。"),
    ("two", [("1-0-0", "甲"), ("2-1-0", "乙 丙")], "【1-0-0】甲\n【2-1-0】乙 丙"),
]


@pytest.mark.parametrize("articles,expected", [c[1:] for c in RENDER_CASES], ids=[c[0] for c in RENDER_CASES])
def test_render_articles(articles, expected):
    assert JUDGE.render_articles(articles) == expected


MESSAGE_CASES = [
    ("one_article", [A354], None,
     "法条：\n"
     "【354-0-0】【容留他人吸毒罪】容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。\n"
     "\n"
     "案件事实：\n"
     "被告人甲于2019年9月12日容留乙在其家中吸食甲基苯丙胺。"),
    ("two_articles", [A354, A357], None,
     "法条：\n"
     "【354-0-0】【容留他人吸毒罪】容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。\n"
     "【357-0-0】本法所称的毒品，是指鸦片、海洛因、甲基苯丙胺（冰毒）……\n"
     "\n"
     "案件事实：\n"
     "被告人甲于2019年9月12日容留乙在其家中吸食甲基苯丙胺。"),
    ("old_and_new_statute", [A354_NEW], [A354],
     "修改前法条：\n"
     "【354-0-0】【容留他人吸毒罪】容留他人吸食、注射毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。\n"
     "修改后法条（现行有效）：\n"
     "【354-0-0】【容留他人吸毒罪】容留他人吸食、注射、交易毒品的，处三年以下有期徒刑、拘役或者管制，并处罚金。\n"
     "\n"
     "案件事实：\n"
     "被告人甲于2019年9月12日容留乙在其家中吸食甲基苯丙胺。"),
]


@pytest.mark.parametrize("articles,old,user", [c[1:] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES])
def test_messages(articles, old, user):
    assert JUDGE.messages(FACT, articles, old) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
    ]


def test_system_prompt_literal():
    assert JUDGE.system == SYSTEM


USER = "法条：\n{articles}\n\n案件事实：\n{fact}"
BAD_FILES = [
    ("not_a_mapping", "- a\n- b\n", None, "expected a mapping"),
    ("no_system", f"user: '{USER}'\n", "system", "missing"),
    ("no_user", "system: s\n", "user", "missing"),
    ("unknown_key", f"system: s\nuser: '{USER}'\nexamples: x\n", "examples", "unknown key"),
    ("not_a_string", f"system: [1]\nuser: '{USER}'\n", "system", "must be a string"),
    ("user_without_fact", "system: s\nuser: '{articles}'\n", "user", "must use {fact}"),
    ("old_template_without_old", f"system: s\nuser: '{USER}'\nuser_with_old_statute: '{USER}'\n",
     "user_with_old_statute", "must use {old_articles}"),
    ("old_articles_in_user", "system: s\nuser: '{old_articles} {articles} {fact}'\n", "user",
     "{old_articles} is not filled here"),
    ("article_without_text", f"system: s\nuser: '{USER}'\narticle: '{{id}}'\n", "article", "must use {text}"),
    ("bad_yaml", "system: [\n", None, "invalid YAML"),
]


@pytest.mark.parametrize("text,field,message", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_prompt_file_is_a_one_line_error(tmp_path, text, field, message):
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_prompt(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and message in line
    assert field is None or f"field '{field}'" in line


def test_missing_prompt_file_names_it(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: file not found"):
        load_prompt(tmp_path / "nope.yaml")


def test_only_known_placeholders_are_filled_once():
    prompt = prompt_from_dict({"system": "s", "user": '例：{"charge": "盗窃"} {articles} / {fact} / {other}',
                               "article": "{text}（{id}）"}, "p.yaml")
    fact = "事实含 {articles} 字样"
    user = prompt.messages(fact, [("1-0-0", "甲")])[1]["content"]
    assert user == '例：{"charge": "盗窃"} 甲（1-0-0） / 事实含 {articles} 字样 / {other}'


def test_old_statute_needs_its_template():
    prompt = prompt_from_dict({"system": "s", "user": USER}, "p.yaml")
    with pytest.raises(InputError, match="p.yaml: field 'user_with_old_statute'"):
        prompt.messages(FACT, [A354_NEW], [A354])


@pytest.fixture(scope="module")
def small_tokenizer():
    # a few strings are enough: the chat template, not the vocabulary, is under test
    return build_tokenizer([FACT, A354[1], *TEMPLATE_STRINGS], vocab_size=400)


def expected_chatml(user: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


@pytest.mark.parametrize("articles,old,user", [c[1:] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES])
def test_render_prompt_chatml(small_tokenizer, articles, old, user):
    assert render_prompt(small_tokenizer, JUDGE.messages(FACT, articles, old)) == expected_chatml(user)


def test_render_prompt_with_saved_tokenizer(tiny, small_tokenizer):
    # the template must survive save_pretrained / AutoTokenizer, which is how every stage loads it
    tok = tiny.tokenizer
    assert type(tok) is type(load_tokenizer(str(tiny.path)))
    messages = JUDGE.messages(FACT, [A354])
    prompt = render_prompt(tok, messages)
    assert prompt == render_prompt(small_tokenizer, messages) == expected_chatml(MESSAGE_CASES[0][3])
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    # ChatML markers are single special tokens, and the prompt stops right after the assistant header
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2
    last = len(ids) - 1 - ids[::-1].index(im_start)
    assert tok.decode(ids[last:]) == "<|im_start|>assistant\n"


def test_token_lengths_hold_one_chunk_of_token_lists(small_tokenizer, monkeypatch):
    """The lengths a whole-run call gives, from calls of LENGTH_CHUNK texts pulled from the source as they go: never
    every prompt's token lists at once (what made the stages grow ~45 KB a prompt)."""
    texts = [render_prompt(small_tokenizer, JUDGE.messages(FACT * (i % 5 + 1), [A354])) for i in range(70)]
    whole = [len(ids) for ids in small_tokenizer(texts, add_special_tokens=False)["input_ids"]]
    tok, pulled = CountingTokenizer(small_tokenizer), []

    def source():
        for text in texts:
            pulled.append(text)
            assert len(pulled) - sum(tok.calls) <= 16  # at most one chunk read ahead of what was tokenised
            yield text

    monkeypatch.setattr(prompts, "LENGTH_CHUNK", 16)
    assert token_lengths(tok, source()) == whole
    assert tok.calls == [16, 16, 16, 16, 6]
    assert token_lengths(tok, iter(texts), chunk=64) == whole and tok.calls[5:] == [64, 6]
    assert token_lengths(tok, []) == [] and len(tok.calls) == 7
