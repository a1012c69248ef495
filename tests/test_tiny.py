"""The tiny Qwen2 stand-in saves and loads like the hub model, offline and deterministically."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lawshift.prompts import SYSTEM_PROMPT
from lawshift.tiny import TEMPLATE_REPEATS, TEMPLATE_STRINGS, TinySpec, build_tiny, build_tokenizer, corpus_texts

_LOCAL_SAMPLE = Path(__file__).parents[1] / "data" / "lawshift-sample"
SAMPLE = _LOCAL_SAMPLE if _LOCAL_SAMPLE.exists() else Path("/work/shared/lawshift-sample")

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
SMALL_SPEC = TinySpec(vocab_size=600)


def _load(out_dir):
    return AutoTokenizer.from_pretrained(out_dir), AutoModelForCausalLM.from_pretrained(out_dir)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    # built once from the real sample so the vocabulary reaches its full size
    out = tmp_path_factory.mktemp("tiny")
    n_params = build_tiny(corpus_texts(SAMPLE), TinySpec(), out)
    return out, n_params


@pytest.fixture
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so patch its constant too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def test_saved_files_are_safetensors(tiny_dir):
    out, _ = tiny_dir
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= files
    assert "pytorch_model.bin" not in files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]


def test_load_offline_special_tokens_and_config(tiny_dir, offline):
    out, n_params = tiny_dir
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


def test_chat_template_renders_chatml(tiny_dir, offline):
    tok, _ = _load(tiny_dir[0])
    messages = [{"role": "system", "content": "你是一名法官。"}, {"role": "user", "content": "案件事实：盗窃。"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\n你是一名法官。<|im_end|>\n"
        "<|im_start|>user\n案件事实：盗窃。<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    turn = tok.apply_chat_template([{"role": "assistant", "content": "好"}], tokenize=False)
    assert turn == "<|im_start|>assistant\n好<|im_end|>\n"


def test_chinese_round_trip_and_tags_are_plain_text(tiny_dir, offline):
    tok, _ = _load(tiny_dir[0])
    for text in [
        *corpus_texts(SAMPLE)[:50],
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


def test_loaded_tokenizer_matches_built_one(tiny_dir, offline):
    # AutoTokenizer rebuilds a qwen2 tokenizer as Qwen2Tokenizer; it must tokenize exactly as the one we trained
    texts = corpus_texts(SAMPLE)
    built = build_tokenizer(texts, TinySpec().vocab_size)
    loaded, _ = _load(tiny_dir[0])
    for text in texts[:200]:
        assert loaded(text)["input_ids"] == built(text)["input_ids"]


def test_generate_batched_left_padded(tiny_dir, offline):
    tok, model = _load(tiny_dir[0])
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


def test_same_seed_same_build(tmp_path):
    build_tiny(SMALL_TEXTS, SMALL_SPEC, tmp_path / "a")
    build_tiny(SMALL_TEXTS, SMALL_SPEC, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    state_a = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    state_b = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_different_seed_different_weights(tmp_path):
    build_tiny(SMALL_TEXTS, SMALL_SPEC, tmp_path / "a")
    build_tiny(SMALL_TEXTS, TinySpec(vocab_size=600, seed=1), tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    state_a = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    state_b = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert not torch.equal(state_a["model.embed_tokens.weight"], state_b["model.embed_tokens.weight"])
    assert not torch.equal(
        state_a["model.layers.0.self_attn.q_proj.weight"], state_b["model.layers.0.self_attn.q_proj.weight"]
    )


def test_corpus_texts_reads_both_article_shapes(tmp_path):
    case = {"fact": "被告人甲盗窃财物。", "relevant_articles": ["264-0-0"], "charge": "盗窃", "prison_time": 6}
    (tmp_path / "training_set.json").write_text(json.dumps([case], ensure_ascii=False), encoding="utf-8")
    for name in ["b_folder", "a_folder"]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "original.json").write_text(json.dumps([{**case, "fact": f"{name}原"}]), encoding="utf-8")
        (folder / "poisoned.json").write_text(json.dumps([{**case, "fact": f"{name}改"}]), encoding="utf-8")
    # one folder has {id: text}, the other [{"id", "content"}]
    (tmp_path / "a_folder" / "articles_original.json").write_text(json.dumps({"264-0-0": "甲条文"}), encoding="utf-8")
    (tmp_path / "b_folder" / "articles_original.json").write_text(
        json.dumps([{"id": "264-0-0", "content": "乙条文"}]), encoding="utf-8"
    )
    texts = corpus_texts(tmp_path)
    assert texts == [
        "被告人甲盗窃财物。", "盗窃",
        "a_folder原", "盗窃", "a_folder改", "盗窃",
        "b_folder原", "盗窃", "b_folder改", "盗窃",
        "甲条文", "乙条文",
        *(TEMPLATE_STRINGS + [SYSTEM_PROMPT]) * TEMPLATE_REPEATS,
    ]  # fmt: skip


def test_corpus_texts_on_sample():
    texts = corpus_texts(SAMPLE)
    assert texts == corpus_texts(SAMPLE)
    assert len(texts) > 1000 and "<think>" in texts and "XT" in texts
    assert any("容留他人吸食、注射、交易毒品" in t for t in texts)  # a poisoned article
