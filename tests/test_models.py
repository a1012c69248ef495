"""Tests for lawshift.models: safe local loading, the base pointer, device/dtype choice and the context guard."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from lawshift.files import InputError
from lawshift.models import (
    POINTER,
    check_context,
    check_local_model,
    compute_dtype,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_base,
    write_pointer,
)

CPU = torch.device("cpu")


def pickle_only_dir(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text("{}", encoding="utf-8")
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    return d


def test_check_local_model_missing_path(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(InputError) as exc:
        check_local_model(missing)
    assert str(exc.value) == f"{missing}: field 'model.base': model path does not exist"


@pytest.mark.parametrize("name", ["./models/nope", "../nope", "/abs/nope", "a/b/c"])
def test_check_local_model_local_looking_names(name):
    with pytest.raises(InputError, match="does not exist"):
        check_local_model(name)


def test_check_local_model_hub_id_passes():
    # a hub id is resolved by from_pretrained from the local cache, not here
    check_local_model("Qwen/Qwen2.5-0.5B-Instruct")


def test_check_local_model_file_not_dir(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(InputError, match="not a directory"):
        check_local_model(str(f))


def test_pickle_weights_refused_unless_allowed(tmp_path):
    d = pickle_only_dir(tmp_path)
    with pytest.raises(InputError) as exc:
        check_local_model(str(d))
    msg = str(exc.value)
    assert "allow_pickle" in msg and "field 'model.base'" in msg and "\n" not in msg
    check_local_model(str(d), allow_pickle=True)
    # safetensors beside the .bin: the safe file is what gets loaded
    (d / "model.safetensors").write_bytes(b"")
    check_local_model(str(d))


def test_load_model_refuses_pickle_before_loading(tmp_path):
    with pytest.raises(InputError, match="allow_pickle"):
        load_model(str(pickle_only_dir(tmp_path)), device=CPU)


def test_load_model_tiny_base(tiny_base):
    assert (tiny_base / "model.safetensors").is_file()
    model = load_model(str(tiny_base), device=CPU)
    assert not model.training
    assert model.dtype == torch.float32
    assert next(model.parameters()).device == CPU
    assert model.config.model_type == "qwen2"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_load_tokenizer_tiny_base(tiny_base):
    tok = load_tokenizer(str(tiny_base))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.decode(tok("被告人盗窃。")["input_ids"]) == "被告人盗窃。"


def test_load_model_missing_adapter(tiny_base, tmp_path):
    with pytest.raises(InputError, match="adapter_model.safetensors"):
        load_model(str(tiny_base), device=CPU, adapter=str(tmp_path))


@pytest.mark.parametrize("loader", [
    lambda p: load_tokenizer(p),
    lambda p: load_model(p, device=CPU),
], ids=["tokenizer", "model"])
def test_loaders_on_missing_path(tmp_path, loader):
    with pytest.raises(InputError, match="does not exist"):
        loader(str(tmp_path / "nonexistent"))


@pytest.mark.parametrize("loader,what", [
    (lambda p: load_tokenizer(p), "tokenizer"),
    (lambda p: load_model(p, device=CPU), "model"),
], ids=["tokenizer", "model"])
def test_loaders_on_dir_without_model(tmp_path, loader, what):
    # an existing folder without model files is bad input, not a transformers traceback
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as exc:
        loader(str(empty))
    msg = str(exc.value)
    assert msg.startswith(f"{empty}: field 'model.base': cannot load {what}") and "\n" not in msg


def test_resolve_base_model_dir(tiny_base):
    assert resolve_base(tiny_base) == str(tiny_base)


@pytest.mark.parametrize("target", ["Qwen/Qwen2.5-0.5B-Instruct", "/models/local-qwen"])
def test_resolve_base_pointer(tmp_path, target):
    write_pointer(tmp_path / "base", target)
    assert json.loads((tmp_path / "base" / POINTER).read_text(encoding="utf-8")) == {"name_or_path": target}
    assert resolve_base(tmp_path / "base") == target


def test_resolve_base_pointer_wins_over_model_files(tmp_path, tiny_base):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    write_pointer(base, "Qwen/Qwen2.5-0.5B-Instruct")
    assert resolve_base(base) == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize("make", [
    lambda d: d.mkdir(),
    lambda d: None,  # not even created
    lambda d: (d.mkdir(), (d / "tokenizer.json").write_text("{}", encoding="utf-8")),
], ids=["empty_dir", "missing_dir", "no_config"])
def test_resolve_base_nothing_there(tmp_path, make):
    base = tmp_path / "base"
    make(base)
    with pytest.raises(InputError, match="run the base stage first"):
        resolve_base(base)


@pytest.mark.parametrize("content", ["{}", '{"name_or_path": 3}', '{"name_or_path": ""}', "[]", "{"],
                         ids=["no_key", "not_str", "empty", "list", "corrupt"])
def test_resolve_base_bad_pointer(tmp_path, content):
    (tmp_path / POINTER).write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as exc:
        resolve_base(tmp_path)
    assert str(exc.value).startswith(str(tmp_path / POINTER))


CONTEXT_CASES = [
    # (id, config attributes, needed, raises)
    ("fits", dict(max_position_embeddings=4096), 4096, False),
    ("too_long", dict(max_position_embeddings=4096), 4097, True),
    ("gpt2_style", dict(n_positions=1024), 2000, True),
    ("unknown_context", dict(), 10**9, False),
]


@pytest.mark.parametrize("attrs,needed,raises", [c[1:] for c in CONTEXT_CASES], ids=[c[0] for c in CONTEXT_CASES])
def test_check_context(attrs, needed, raises):
    config = SimpleNamespace(**attrs)
    if not raises:
        check_context(config, needed, "sample.max_new_tokens")
        return
    with pytest.raises(InputError) as exc:
        check_context(config, needed, "sample.max_new_tokens")
    msg = str(exc.value)
    assert msg.startswith("params.yaml: field 'sample.max_new_tokens': ")
    assert str(needed) in msg and str(next(iter(attrs.values()))) in msg


def test_check_context_real_config(tiny_base):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_base)
    check_context(config, config.max_position_embeddings, "train.max_length")
    with pytest.raises(InputError, match="train.max_length"):
        check_context(config, config.max_position_embeddings + 1, "train.max_length")


def test_pick_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device().type == expected
    assert pick_device("cpu") == CPU


def test_compute_dtype_cpu():
    assert compute_dtype(CPU) == torch.float32
