"""Tests for lawshift.core.models: safe local loading, the base pointer (pinned hub snapshot or local folder, every
file's
sha256), device/dtype choice and the context guard."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lawshift.core.files import InputError, file_digest
from lawshift.core.models import (
    POINTER,
    check_context,
    check_local_model,
    compute_dtype,
    file_hashes,
    hub_cache,
    hub_snapshot,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_base,
    settle_pointer,
    write_pointer,
)
from lawshift.core.params import ModelParams

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_load_tokenizer_tiny_base(tiny_base):
    tok = load_tokenizer(str(tiny_base))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.decode(tok("被告人盗窃。")["input_ids"]) == "被告人盗窃。"


@pytest.mark.slow
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


@pytest.mark.slow
def test_resolve_base_model_dir(tiny_base):
    assert resolve_base(tiny_base) == str(tiny_base)


# --- the pointer ---------------------------------------------------------------------------------------------------

HUB_ID = "org/some-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_FILES = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": b"weights",
               "sub/tokenizer.json": "词".encode()}


def model_folder(folder: Path, files: dict[str, bytes] = MODEL_FILES) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty local Hugging Face hub cache (HF_HUB_CACHE)."""
    root = tmp_path / "hf_cache"
    root.mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(root))
    return root


def cache_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = "main") -> Path:
    """A snapshot laid out as huggingface_hub downloads one: blobs by content, the snapshot's files link to them,
    refs/<ref> holds the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).symlink_to(blob)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit, encoding="utf-8")
    return snapshot


def test_hub_cache_is_huggingface_hubs(cache):
    assert hub_cache() == cache


@pytest.mark.parametrize("ref, revision", [("main", None), ("main", "main"), ("v1.0", "v1.0"), (None, COMMIT)],
                         ids=["default_main", "branch", "tag", "commit"])
def test_hub_snapshot_follows_the_caches_refs(cache, ref, revision):
    snapshot = cache_snapshot(cache, HUB_ID, COMMIT, MODEL_FILES, ref=ref)
    assert hub_snapshot(HUB_ID, revision) == snapshot


@pytest.mark.parametrize("revision, what", [(None, "its main revision"), ("v2", "revision 'v2'")])
def test_hub_snapshot_not_in_the_cache(cache, revision, what):
    cache_snapshot(cache, HUB_ID, COMMIT, MODEL_FILES, ref="v1.0")  # another revision is there; main is not
    with pytest.raises(InputError) as exc:
        hub_snapshot(HUB_ID, revision)
    download = f"huggingface-cli download {HUB_ID}" + (f" --revision {revision}" if revision else "")
    assert str(exc.value) == (f"{HUB_ID}: field 'model.base': {what} is not in the local Hugging Face cache "
                              f"({cache}); download it first ({download})")


def test_file_hashes(tmp_path):
    folder = model_folder(tmp_path / "m", {**MODEL_FILES, ".gitattributes": b"x", ".cache/huggingface/x.lock": b""})
    assert file_hashes(folder) == {rel: hashlib.sha256(data).hexdigest() for rel, data in MODEL_FILES.items()}
    assert file_hashes(folder) == {rel: file_digest(folder / rel) for rel in MODEL_FILES}  # dot-folders left out


@pytest.mark.parametrize("pointer", [
    {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "revision": COMMIT, "files": {"config.json": "ab"}},
    {"name_or_path": "/models/local-qwen", "revision": None, "files": {}},
    {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},  # as written before files and revision were recorded
], ids=["hub", "local", "name_only"])
def test_write_pointer(tmp_path, pointer):
    write_pointer(tmp_path / "base", pointer)
    text = (tmp_path / "base" / POINTER).read_text(encoding="utf-8")
    assert json.loads(text) == pointer and text == json.dumps(pointer, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("kind", ["hub", "local", "local_relative"])
def test_resolve_base_pointer(tmp_path, cache, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    if kind == "hub":
        folder, name, revision = cache_snapshot(cache, HUB_ID, COMMIT, MODEL_FILES), HUB_ID, COMMIT
    else:
        folder, revision = model_folder(tmp_path / "local-qwen"), None
        name = str(folder) if kind == "local" else "local-qwen"
    write_pointer(tmp_path / "base", {"name_or_path": name, "revision": revision, "files": file_hashes(folder)})
    assert json.loads((tmp_path / "base" / POINTER).read_text(encoding="utf-8"))["name_or_path"] == name
    assert Path(resolve_base(tmp_path / "base")) == (folder if kind != "local_relative" else Path("local-qwen"))
    # a pointer from before files were recorded is not checked
    write_pointer(tmp_path / "old", {"name_or_path": name, "revision": revision})
    assert resolve_base(tmp_path / "old") == resolve_base(tmp_path / "base")


@pytest.mark.parametrize("change", [
    lambda f: (f / "model.safetensors").write_bytes(b"new weights"),
    lambda f: (f / "extra.bin").write_bytes(b""),
    lambda f: (f / "sub" / "tokenizer.json").unlink(),
], ids=["changed_weights", "added_file", "removed_file"])
def test_resolve_base_refuses_files_changed_since_the_base_stage(tmp_path, change):
    folder = model_folder(tmp_path / "local-qwen")
    write_pointer(tmp_path / "base", {"name_or_path": str(folder), "revision": None, "files": file_hashes(folder)})
    change(folder)
    with pytest.raises(InputError) as exc:
        resolve_base(tmp_path / "base")
    assert str(exc.value) == (f"{folder}: the model's files changed since stage base recorded them in "
                              f"{tmp_path / 'base' / POINTER}; rerun it: dvc repro -f base")


def test_resolve_base_hub_pointer_pins_the_recorded_commit(cache, tmp_path):
    old = cache_snapshot(cache, HUB_ID, COMMIT, MODEL_FILES)
    write_pointer(tmp_path / "base", {"name_or_path": HUB_ID, "revision": COMMIT, "files": file_hashes(old)})
    # `main` moves on to a new commit: the pointer still means the one recorded
    cache_snapshot(cache, HUB_ID, "f" * 40, {**MODEL_FILES, "model.safetensors": b"newer"})
    assert resolve_base(tmp_path / "base") == str(old)
    shutil.rmtree(old)  # the recorded snapshot pruned from the cache
    with pytest.raises(InputError, match=rf"^{HUB_ID}: field 'model.base': revision '{COMMIT}' is not in the local"):
        resolve_base(tmp_path / "base")


def test_resolve_base_pointer_wins_over_model_files(tmp_path, cache):
    snapshot = cache_snapshot(cache, HUB_ID, COMMIT, MODEL_FILES)
    base = model_folder(tmp_path / "base", {"config.json": b"{}", "model.safetensors": b"tiny weights"})
    write_pointer(base, {"name_or_path": HUB_ID, "revision": COMMIT, "files": file_hashes(snapshot)})
    assert resolve_base(base) == str(snapshot)


# --- settle_pointer: stage base for a hub id or a local path --------------------------------------------------------

def test_settle_pointer_refuses_a_missing_local_path(tmp_path):
    out = tmp_path / "models" / "base"
    with pytest.raises(InputError) as exc:
        settle_pointer(ModelParams(base=str(tmp_path / "nope")), out)
    assert str(exc.value) == f"{tmp_path / 'nope'}: field 'model.base': model path does not exist"
    assert not out.exists()


def test_settle_pointer_refuses_pickle_weights(tmp_path):
    out = tmp_path / "models" / "base"
    with pytest.raises(InputError, match="allow_pickle"):
        settle_pointer(ModelParams(base=str(pickle_only_dir(tmp_path))), out)
    assert not out.exists()


def test_settle_pointer_hub_id_missing_from_the_cache(cache, tmp_path):
    out = tmp_path / "models" / "base"
    out.mkdir(parents=True)
    (out / POINTER).write_text('{"name_or_path": "earlier"}', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{HUB_ID}: field 'model.base': revision 'v2' is not in the local"):
        settle_pointer(ModelParams(base=HUB_ID, revision="v2"), out)
    assert (out / POINTER).read_text(encoding="utf-8") == '{"name_or_path": "earlier"}'  # the old base stays


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hub", "local"])
def test_settle_pointer_records_what_it_points_to(tmp_path, cache, tiny_base, kind):
    files = {p.relative_to(tiny_base).as_posix(): p.read_bytes() for p in tiny_base.rglob("*") if p.is_file()}
    if kind == "hub":
        folder, mp = cache_snapshot(cache, HUB_ID, COMMIT, files), ModelParams(base=HUB_ID)
    else:
        folder = model_folder(tmp_path / "local-model", files)
        mp = ModelParams(base=str(folder))
    out = tmp_path / "models" / "base"
    model_folder(out, {"config.json": b"{}", "model.safetensors": b"an earlier tiny base"})
    metrics = settle_pointer(mp, out)
    revision = COMMIT if kind == "hub" else None
    assert metrics == {"base_kind": "pointer", "base_name_or_path": mp.base, "base_revision": revision,
                       "base_files": len(files)}
    assert sorted(p.name for p in out.iterdir()) == [POINTER]  # replaced whole: no weights copied or left over
    assert sorted(p.name for p in out.parent.iterdir()) == ["base"]  # no temp sibling
    pointer = json.loads((out / POINTER).read_text(encoding="utf-8"))
    assert pointer == {"name_or_path": mp.base, "revision": revision,
                       "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in sorted(files.items())}}
    assert resolve_base(out) == str(folder)
    assert load_tokenizer(resolve_base(out)).eos_token == "<|im_end|>"


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


@pytest.mark.slow
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
