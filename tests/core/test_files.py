"""Tests for lawshift.core.files: one-line input errors, JSON/JSONL reading, atomic outputs, stage exit codes, and the
digest helpers every fingerprint is made of."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from lawshift.core.files import (
    InputError,
    atomic_path,
    file_digest,
    json_digest,
    json_list_digest,
    model_digest,
    read_json,
    read_jsonl,
    read_text,
    run_stage,
    tree_digest,
    write_json,
    write_jsonl,
    write_text,
)

ERROR_FORMATS = [
    # (id, kwargs, expected message)
    ("path_only", dict(path="a.json", message="file not found"), "a.json: file not found"),
    ("index", dict(path="a.json", message="bad", index=3), "a.json: record 3: bad"),
    ("index_zero", dict(path="a.json", message="bad", index=0), "a.json: record 0: bad"),
    ("field", dict(path="a.json", message="missing", index=2, field="fact"), "a.json: record 2: field 'fact': missing"),
    ("line", dict(path="a.jsonl", message="corrupt", line=7), "a.jsonl:7: corrupt"),
    ("field_only", dict(path="p.yaml", message="unknown key", field="sample.x"),
     "p.yaml: field 'sample.x': unknown key"),
    ("multiline_message", dict(path="a.json", message="one\ntwo\n\tthree  four"), "a.json: one two three four"),
]


@pytest.mark.parametrize("kwargs,expected", [c[1:] for c in ERROR_FORMATS], ids=[c[0] for c in ERROR_FORMATS])
def test_input_error_format(kwargs, expected):
    assert str(InputError(**kwargs)) == expected


def leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# -----------------------------------------------------------------------------
# atomic outputs


WRITERS = [
    ("text", lambda p: write_text(p, "甲\n乙\n"), "甲\n乙\n"),
    ("json", lambda p: write_json(p, {"案": [1, 2]}), '{\n  "案": [\n    1,\n    2\n  ]\n}\n'),
    ("jsonl", lambda p: write_jsonl(p, [{"a": "甲"}, {"b": 2}]), '{"a": "甲"}\n{"b": 2}\n'),
    ("jsonl_empty", lambda p: write_jsonl(p, []), ""),
]


@pytest.mark.parametrize("write,expected", [c[1:] for c in WRITERS], ids=[c[0] for c in WRITERS])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "replace"])
def test_writers_are_atomic(tmp_path, write, expected, existing):
    path = tmp_path / "sub" / "out.txt"
    if existing:
        path.parent.mkdir()
        path.write_text("old output", encoding="utf-8")
    write(path)
    assert path.read_text(encoding="utf-8") == expected
    assert leftovers(path.parent, {"out.txt"}) == []


def test_target_keeps_old_content_until_success(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old", encoding="utf-8")
    with atomic_path(path) as tmp:
        tmp.write_text("new", encoding="utf-8")
        # readers still see the complete old output while the new one is written
        assert path.read_text(encoding="utf-8") == "old"
        assert tmp.parent == path.parent and tmp != path
        assert tmp.name.startswith(".out.json.")
    assert path.read_text(encoding="utf-8") == "new"
    assert leftovers(tmp_path, {"out.json"}) == []


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "old_target"])
def test_failure_leaves_no_output_and_no_temp(tmp_path, kind, existing):
    path = tmp_path / "out"
    if existing:
        if kind == "dir":
            path.mkdir()
            (path / "old.txt").write_text("old", encoding="utf-8")
        else:
            path.write_text("old", encoding="utf-8")
    with pytest.raises(Boom):
        with atomic_path(path) as tmp:
            if kind == "dir":
                tmp.mkdir()
                (tmp / "half.txt").write_text("half", encoding="utf-8")
            else:
                tmp.write_text("half", encoding="utf-8")
            raise Boom
    assert leftovers(tmp_path, {"out"}) == []
    if not existing:
        assert not path.exists()
    elif kind == "dir":
        assert sorted(p.name for p in path.iterdir()) == ["old.txt"]
    else:
        assert path.read_text(encoding="utf-8") == "old"


def test_failure_before_anything_written(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "out.jsonl"):
            raise Boom
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replace"])
def test_directory_output(tmp_path, existing):
    path = tmp_path / "models" / "sft"
    if existing:
        path.mkdir(parents=True)
        (path / "stale.bin").write_text("stale", encoding="utf-8")
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "adapter.safetensors").write_text("w", encoding="utf-8")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "x.json").write_text("{}", encoding="utf-8")
    # the new directory replaces the old one whole: no stale file survives
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    assert files == ["adapter.safetensors", "nested", "nested/x.json"]
    assert leftovers(path.parent, {"sft"}) == []


# -----------------------------------------------------------------------------
# reading


def test_read_jsonl_line_numbers_and_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"b": "甲"}\n[3]\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"b": "甲"}), (5, [3])]


def test_read_jsonl_corrupt_middle_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n', encoding="utf-8")
    seen = []
    with pytest.raises(InputError) as exc:
        for lineno, _ in read_jsonl(path):
            seen.append(lineno)
    assert seen == [1, 2]  # earlier records are read, the corrupt one is never skipped
    assert str(exc.value).startswith(f"{path}:3: corrupt JSONL line")
    assert "\n" not in str(exc.value)


def test_read_jsonl_truncated_last_line(tmp_path):
    # what a killed writer without atomic rename would leave behind
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b": "甲', encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.jsonl:2: corrupt"):
        list(read_jsonl(path))


def test_jsonl_round_trip(tmp_path):
    records = [{"fact": "被告人甲", "n": 3, "w": 0.125}, {"list": ["354-0-0"]}, "plain", 7]
    write_jsonl(tmp_path / "r.jsonl", records)
    assert "被告人甲" in (tmp_path / "r.jsonl").read_text(encoding="utf-8")  # not \u-escaped
    assert [r for _, r in read_jsonl(tmp_path / "r.jsonl")] == records


def test_read_json_error_names_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{\n  "a": 1,\n  "b": ,\n}\n', encoding="utf-8")
    with pytest.raises(InputError) as exc:
        read_json(path)
    assert str(exc.value).startswith(f"{path}:3: invalid JSON")


@pytest.mark.parametrize("reader", [read_text, read_json, lambda p: list(read_jsonl(p))],
                         ids=["text", "json", "jsonl"])
def test_read_errors(tmp_path, reader):
    with pytest.raises(InputError, match="not found"):
        reader(tmp_path / "missing.json")
    with pytest.raises(InputError, match="not a regular file"):
        reader(tmp_path)
    bad = tmp_path / "gbk.json"
    bad.write_bytes('"盗窃"'.encode("gbk"))
    with pytest.raises(InputError, match="not valid UTF-8"):
        reader(bad)


# -----------------------------------------------------------------------------
# stage entry points


def test_run_stage_input_error(capsys):
    def main():
        raise InputError("outputs/samples.jsonl", "corrupt\nline", line=3)

    with pytest.raises(SystemExit) as exc:
        run_stage(main)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: outputs/samples.jsonl:3: corrupt line\n"
    assert captured.out == ""


def test_run_stage_success_and_other_errors():
    calls = []
    assert run_stage(lambda: calls.append(1)) is None
    assert calls == [1]
    # a bug is not bad input: it keeps its traceback
    with pytest.raises(ZeroDivisionError):
        run_stage(lambda: 1 / 0)


@pytest.mark.slow
def test_run_stage_exit_status_in_a_process(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("sample:\n  num_sample: 3\n", encoding="utf-8")
    code = ("import sys; from lawshift.core.files import run_stage; from lawshift.core.params import load_params; "
            "run_stage(lambda: load_params(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"error: {bad}: field 'sample.num_sample': unknown key (did you mean 'num_samples'?)\n"


def test_write_json_is_valid_json(tmp_path):
    obj = {"metrics": {"acc": 0.5, "n": 3}, "名": "甲"}
    write_json(tmp_path / "m.json", obj)
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == obj


# -----------------------------------------------------------------------------
# digests


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("data", [b"", b"abc", "被告人甲".encode(), bytes(range(256)) * 5000],
                         ids=["empty", "ascii", "utf8", "several_chunks"])
def test_file_digest_is_the_sha256_of_the_bytes(tmp_path, data):
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_digest(path) == file_digest(str(path)) == sha256(data)


def test_equal_content_equal_digest(tmp_path):
    (tmp_path / "a.json").write_text('{"a": 1}', encoding="utf-8")
    (tmp_path / "b.txt").write_text('{"a": 1}', encoding="utf-8")
    (tmp_path / "c.json").write_text('{"a": 2}', encoding="utf-8")
    assert file_digest(tmp_path / "a.json") == file_digest(tmp_path / "b.txt")  # the name is not the content
    assert file_digest(tmp_path / "a.json") != file_digest(tmp_path / "c.json")


def make_tree(root, files: dict[str, bytes]):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


TREE = {"config.json": b"{}", "model.safetensors": b"weights", "sub/tokenizer.json": "词".encode()}
TREE_CHANGES = [
    # (id, the tree changed, same digest?)
    ("same_files_elsewhere", TREE, True),
    ("renamed_file", {"config.json": b"{}", "model2.safetensors": b"weights", "sub/tokenizer.json": "词".encode()},
     False),
    ("moved_to_another_folder", {"config.json": b"{}", "model.safetensors": b"weights",
                                 "other/tokenizer.json": "词".encode()}, False),
    ("changed_bytes", {**TREE, "model.safetensors": b"weightz"}, False),
    ("added_file", {**TREE, "extra.txt": b""}, False),
    ("removed_file", {k: v for k, v in TREE.items() if k != "config.json"}, False),
    # bytes moved from one file to the next: a digest of the concatenation alone would not see it
    ("bytes_moved_between_files", {"config.json": b"{}w", "model.safetensors": b"eights",
                                   "sub/tokenizer.json": "词".encode()}, False),
]


@pytest.mark.parametrize("changed, same", [c[1:] for c in TREE_CHANGES], ids=[c[0] for c in TREE_CHANGES])
def test_tree_digest(tmp_path, changed, same):
    a = make_tree(tmp_path / "a", TREE)
    b = make_tree(tmp_path / "b", changed)
    assert (tree_digest(a) == tree_digest(b)) is same
    assert tree_digest(a) == tree_digest(str(a))


def test_tree_digest_ignores_empty_folders_and_is_stable(tmp_path):
    a = make_tree(tmp_path / "a", TREE)
    digest = tree_digest(a)
    (a / "empty").mkdir()
    assert tree_digest(a) == digest
    # files written in another order give the same digest
    b = make_tree(tmp_path / "b", dict(reversed(list(TREE.items()))))
    assert tree_digest(b) == digest
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "d").mkdir()
    assert tree_digest(tmp_path / "c") == tree_digest(tmp_path / "d") == sha256(b"")  # folders without files


def test_tree_digest_of_one_file_is_a_tree_of_one(tmp_path):
    single = make_tree(tmp_path / "single", {"model.safetensors": b"weights"})
    assert tree_digest(single / "model.safetensors") == tree_digest(single)
    assert tree_digest(single / "model.safetensors") != file_digest(single / "model.safetensors")


def test_json_digest_is_canonical():
    obj = {"b": [1, 2], "a": {"名": "甲", "x": None}}
    assert json_digest(obj) == sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    assert json_digest({"a": {"x": None, "名": "甲"}, "b": [1, 2]}) == json_digest(obj)  # key order does not matter
    assert json_digest({**obj, "b": [2, 1]}) != json_digest(obj)  # list order does
    assert json_digest({"a": 1}) != json_digest({"a": "1"}) != json_digest({"a": 1.5})
    assert len({json_digest(v) for v in ({}, [], None, 0, "")}) == 5


@pytest.mark.parametrize("items", [[], ["甲"], ["案件事实：\n甲", "b\"\\", ""],
                                   [["x/original/0", "乙"], ["train/3", "丙"]], [{"b": 1, "a": [None, 1.5]}, 2, None]])
def test_json_list_digest_is_the_json_digest_of_the_list(items):
    """Fed an item at a time (a generator here: nothing else holds them), the digest of the whole list."""
    assert json_list_digest(iter(items)) == json_list_digest(items) == json_digest(list(items))


def test_model_digest_of_a_folder_is_its_tree_digest(tmp_path):
    a = make_tree(tmp_path / "a", TREE)
    assert model_digest(a) == model_digest(str(a)) == tree_digest(a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert model_digest(b) == model_digest(a)  # the same weights elsewhere are the same model
    (b / "model.safetensors").write_bytes(b"other weights")
    assert model_digest(b) != model_digest(a)


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B-Instruct", "org/model", "no-such-folder"])
def test_model_digest_of_a_hub_id_is_the_id(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert model_digest(name) == f"hub:{name}"
    assert model_digest(name) != model_digest("Qwen/Qwen2.5-1.5B-Instruct")
