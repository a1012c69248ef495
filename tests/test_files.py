"""Tests for lawshift.files: one-line input errors, JSON/JSONL reading, atomic outputs, stage exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lawshift.files import (
    InputError,
    atomic_path,
    read_json,
    read_jsonl,
    read_text,
    run_stage,
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


def test_run_stage_exit_status_in_a_process(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("sample:\n  num_sample: 3\n", encoding="utf-8")
    code = ("import sys; from lawshift.files import run_stage; from lawshift.params import load_params; "
            "run_stage(lambda: load_params(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"error: {bad}: field 'sample.num_sample': unknown key (did you mean 'num_samples'?)\n"


def test_write_json_is_valid_json(tmp_path):
    obj = {"metrics": {"acc": 0.5, "n": 3}, "名": "甲"}
    write_json(tmp_path / "m.json", obj)
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == obj
