"""Tests for lawshift.core.journal: the resumable JSONL format behind sampling, eval, the shard merge and training's
resume check. Each rule of the module docstring is a table here: header written atomically; append then resume
gives back the records with their spans; other settings print one line naming exactly the changed keys and start
afresh; an unreadable header starts afresh; a torn tail (also one cut inside a multi-byte character) is dropped and
the file truncated; a corrupt line before it is an InputError naming its line; `copy_to` writes the spans in the
order given, with or without the header; `read` is strict; `check`/`start` for a header-only journal."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from lawshift.core import journal
from lawshift.core.files import InputError, json_digest
from lawshift.core.journal import Journal

SETTINGS = {"model": "m", "seed": 1, "temperature": 0.8}
# Records as the stages write them: Chinese text, a line separator that str.splitlines() would break on, nesting.
RECORDS = [
    {"index": 0, "text": "被告人甲容留他人吸毒。"},
    {"index": 1, "text": "甲\u2028乙\u0085丙", "answers": [{"t": "<answer> 盗窃 | 7 </answer>"}]},
    {"index": 2, "text": "plain"},
    {"index": 3, "text": "末尾"},
]


def line(rec: dict) -> bytes:
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")


def opened(path: Path, settings: dict = SETTINGS) -> tuple[Journal, list[tuple[int, dict, tuple[int, int]]]]:
    """A journal opened at `path`, and what `open` handed to `on_record`."""
    seen = []
    j = Journal(path, settings, who="test")
    j.open(lambda lineno, rec, span: seen.append((lineno, rec, span)))
    return j, seen


def written(path: Path, records=RECORDS, settings: dict = SETTINGS) -> list[tuple[int, int]]:
    """A journal at `path` holding `records`, closed; returns their spans."""
    j, _ = opened(path, settings)
    spans = j.append(records)
    j.close()
    return spans


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --- the header ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [{}, SETTINGS, {"b": 1, "a": [1, 2], "名": "甲", "nested": {"x": None}}],
                         ids=["empty", "plain", "unicode_nested"])
def test_header_is_one_line_with_the_settings_fingerprint(settings):
    raw = journal.header(settings)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {"fingerprint": json_digest(settings), "settings": settings}
    assert json_digest(settings) == hashlib.sha256(
        json.dumps(settings, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    assert journal.parse_header(raw) == json.loads(raw)
    # canonical: the order the settings were given in does not matter
    assert journal.header(dict(reversed(list(settings.items())))) == raw
    if "名" in settings:
        assert "名".encode() in raw  # not \u-escaped


@pytest.mark.parametrize("raw", [
    b"",
    b"\n",
    b'{"fingerprint": "ab',  # killed while the header was written
    journal.header(SETTINGS)[:-1],  # a whole header without its newline is still torn
    b"{not json\n",
    b"[1, 2]\n",
    b'"fingerprint"\n',
    b'{"index": 0}\n',  # a record where the header should be
    b'{"settings": {}}\n',
    b'{"fingerprint": "x", "settings": [1]}\n',
    b'{"fingerprint": "x"}\n',
    b"\xff\xfe\n",
], ids=["empty", "blank", "torn", "no_newline", "not_json", "list", "string", "record", "no_fingerprint",
        "settings_not_mapping", "no_settings", "not_utf8"])
def test_parse_header_refuses_what_is_not_a_whole_header(raw):
    assert journal.parse_header(raw) is None
    assert journal.mismatch(raw, SETTINGS) == "no readable header line"


@pytest.mark.parametrize("old, new, changed", [
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, []),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, ["b"]),
    ({"a": 1}, {"a": 1, "b": 2}, ["b"]),  # a setting added
    ({"a": 1, "b": 2}, {"a": 1}, ["b"]),  # a setting dropped
    ({"z": 1, "a": 1, "m": 1}, {"z": 2, "a": 2, "m": 1}, ["a", "z"]),  # sorted
    ({"a": 1}, {"a": 1.5}, ["a"]),
    ({"a": [1, 2]}, {"a": [2, 1]}, ["a"]),
    ({"a": None}, {}, []),  # indistinguishable by value: the fingerprint still differs (see below)
], ids=["same", "value", "added", "dropped", "several_sorted", "type", "list_order", "none_vs_missing"])
def test_changed_settings(old, new, changed):
    assert journal.changed_settings(old, new) == changed
    assert journal.changed_settings(new, old) == changed


@pytest.mark.parametrize("old, why", [
    (SETTINGS, None),
    (dict(reversed(list(SETTINGS.items()))), None),
    ({**SETTINGS, "seed": 2}, "written with different settings (seed)"),
    ({**SETTINGS, "seed": 2, "temperature": 0.7}, "written with different settings (seed, temperature)"),
    ({**SETTINGS, "extra": 1}, "written with different settings (extra)"),
    ({"model": "m", "seed": 1}, "written with different settings (temperature)"),
    ({**SETTINGS, "gone": None}, "written with different settings (fingerprint)"),
], ids=["same", "same_other_order", "one", "two", "added", "dropped", "only_the_fingerprint"])
def test_mismatch(old, why):
    assert journal.mismatch(journal.header(old), SETTINGS) == why


def test_mismatch_trusts_the_fingerprint_not_the_settings():
    # a header whose fingerprint does not belong to its settings was not written by this code: not continued
    tampered = json.dumps({"fingerprint": "0" * 64, "settings": SETTINGS}).encode() + b"\n"
    assert journal.mismatch(tampered, SETTINGS) == "written with different settings (fingerprint)"


# --- start and check: the header-only journal (training's resume marker) -------------------------------------------

def test_start_writes_the_header_atomically(tmp_path):
    path = tmp_path / "fingerprint.jsonl"
    journal.start(path, SETTINGS)
    assert path.read_bytes() == journal.header(SETTINGS)
    assert journal.check(path, SETTINGS) is None
    # over an existing journal: the new header replaces it whole, by rename (a new inode), never written in place
    written(path, settings={"model": "old"})
    inode = path.stat().st_ino
    journal.start(path, SETTINGS)
    assert path.read_bytes() == journal.header(SETTINGS)
    assert path.stat().st_ino != inode
    assert leftovers(tmp_path, {"fingerprint.jsonl"}) == []


def test_start_creates_the_folder_and_clears_stale_temps(tmp_path):
    path = tmp_path / "checkpoints" / "sft" / "fingerprint.jsonl"
    journal.start(path, SETTINGS)
    stale = path.parent / f".{path.name}.abcd1234.tmp"  # what a kill during an earlier start leaves
    stale.write_bytes(b'{"fingerp')
    journal.start(path, SETTINGS)
    assert path.read_bytes() == journal.header(SETTINGS)
    assert leftovers(path.parent, {path.name}) == []


@pytest.mark.parametrize("content, why", [
    (None, "missing"),
    (journal.header(SETTINGS), None),
    (journal.header(SETTINGS) + line(RECORDS[0]), None),  # records after the header do not matter to check
    (journal.header({**SETTINGS, "seed": 9}), "written with different settings (seed)"),
    (b"", "no readable header line"),
    (journal.header(SETTINGS)[:-5], "no readable header line"),
    (b'{"index": 0}\n', "no readable header line"),
], ids=["missing", "header_only", "with_records", "other_settings", "empty", "torn_header", "no_header"])
def test_check(tmp_path, content, why):
    path = tmp_path / "j.jsonl"
    if content is not None:
        path.write_bytes(content)
    assert journal.check(path, SETTINGS) == why
    assert (path.read_bytes() if path.exists() else None) == content  # check only reads


def test_check_a_folder_is_missing(tmp_path):
    assert journal.check(tmp_path, SETTINGS) == "missing"


# --- append and resume ---------------------------------------------------------------------------------------------

def test_fresh_journal_then_append_then_resume_with_spans(tmp_path, capsys):
    path = tmp_path / "samples.jsonl.partial"
    j, seen = opened(path)
    assert seen == [] and j.resumed == 0
    assert path.read_bytes() == journal.header(SETTINGS)  # the header is on disk before any record
    first = j.append(RECORDS[:2])
    second = j.append(RECORDS[2:3])
    assert j.append([]) == []
    j.close()
    data = path.read_bytes()
    assert data == journal.header(SETTINGS) + b"".join(line(r) for r in RECORDS[:3])
    spans = first + second
    assert spans[0][0] == len(journal.header(SETTINGS))
    assert [data[o:o + n] for o, n in spans] == [line(r) for r in RECORDS[:3]]
    assert capsys.readouterr().err == ""  # a new journal says nothing

    j, seen = opened(path)
    assert j.resumed == 3
    assert seen == [(n, r, s) for n, r, s in zip([2, 3, 4], RECORDS[:3], spans, strict=True)]
    # appending continues after the kept records, at the right offsets
    (span,) = j.append(RECORDS[3:])
    j.close()
    assert span == (len(data), len(line(RECORDS[3])))
    assert path.read_bytes() == data + line(RECORDS[3])
    assert capsys.readouterr().err == ""
    _, seen = opened(path)
    assert [r for _, r, _ in seen] == RECORDS


def test_append_survives_without_close(tmp_path):
    # flushed and fsynced per call: another reader sees the records at once, before close
    path = tmp_path / "j.jsonl"
    j, _ = opened(path)
    j.append(RECORDS[:2])
    assert path.read_bytes() == journal.header(SETTINGS) + line(RECORDS[0]) + line(RECORDS[1])
    j.close()
    j.close()  # closing twice is harmless


def test_records_holding_line_separators_resume_whole(tmp_path):
    # U+2028 and U+0085 stay raw in the file (ensure_ascii=False); only "\n" ends a line
    path = tmp_path / "j.jsonl"
    written(path, RECORDS[1:2])
    assert "\u2028".encode() in path.read_bytes()
    _, seen = opened(path)
    assert [r for _, r, _ in seen] == RECORDS[1:2]


def test_an_error_from_on_record_propagates(tmp_path):
    path = tmp_path / "j.jsonl"
    written(path)
    before = path.read_bytes()

    def refuse(lineno, rec, span):
        if rec["index"] == 2:
            raise InputError(path, "not this run's case", line=lineno)

    with pytest.raises(InputError, match=r"j\.jsonl:4: not this run's case"):
        Journal(path, SETTINGS, "test").open(refuse)
    assert path.read_bytes() == before  # nothing dropped


# --- start afresh --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, changed", [
    ({**SETTINGS, "seed": 2}, "seed"),
    ({**SETTINGS, "seed": 2, "temperature": 1.2}, "seed, temperature"),
    ({**SETTINGS, "model": "other", "extra": True}, "extra, model"),
    ({"seed": 1, "temperature": 0.8}, "model"),
    ({**SETTINGS, "gone": None}, "fingerprint"),
], ids=["one", "two", "added_and_changed", "dropped", "only_the_fingerprint"])
def test_other_settings_start_afresh_naming_what_changed(tmp_path, capsys, old, changed):
    path = tmp_path / "samples.jsonl.partial"
    written(path, settings=old)
    j, seen = opened(path)
    assert seen == [] and j.resumed == 0
    err = capsys.readouterr().err
    assert err == f"test: {path}: written with different settings ({changed}); starting afresh\n"
    assert path.read_bytes() == journal.header(SETTINGS)
    j.append(RECORDS[:1])  # and the fresh journal takes records
    j.close()
    _, seen = opened(path)
    assert [r for _, r, _ in seen] == RECORDS[:1]


@pytest.mark.parametrize("content", [
    b"",
    b'{"fingerprint": "ab',  # killed while a header was written (start is atomic, but an old file may be)
    journal.header(SETTINGS)[:-1],
    b'{"index": 0}\n' + line(RECORDS[0]),
    b"\xff\xfe garbage\n",
    b"[]\n",
], ids=["empty", "torn_header", "header_without_newline", "records_without_header", "not_utf8", "list"])
def test_unreadable_header_starts_afresh(tmp_path, capsys, content):
    path = tmp_path / "j.jsonl"
    path.write_bytes(content)
    j, seen = opened(path)
    j.close()
    assert seen == [] and j.resumed == 0
    assert capsys.readouterr().err == f"test: {path}: no readable header line; starting afresh\n"
    assert path.read_bytes() == journal.header(SETTINGS)


# --- the torn tail -------------------------------------------------------------------------------------------------

TAIL = {"index": 9, "text": "被告人乙盗窃财物。"}
TAIL_LINE = line(TAIL)
CUT_IN_CHAR = TAIL_LINE.index("被".encode()) + 1  # one byte into a three-byte character

TORN = [
    ("one_byte", TAIL_LINE[:1]),
    ("half", TAIL_LINE[:len(TAIL_LINE) // 2]),
    ("inside_a_utf8_character", TAIL_LINE[:CUT_IN_CHAR]),
    ("two_bytes_into_a_character", TAIL_LINE[:CUT_IN_CHAR + 1]),
    ("whole_record_but_the_newline", TAIL_LINE[:-1]),  # valid JSON, still not known to be complete
    ("garbage", b"\xff\xfe{"),
]


@pytest.mark.parametrize("tail", [t for _, t in TORN], ids=[name for name, _ in TORN])
def test_torn_tail_is_dropped_and_the_file_truncated(tmp_path, capsys, tail):
    path = tmp_path / "samples.jsonl.partial"
    spans = written(path, RECORDS[:2])
    whole = path.read_bytes()
    with open(path, "ab") as f:  # what a write killed half-way leaves behind
        f.write(tail)
    j, seen = opened(path)
    assert [(n, r, s) for n, r, s in seen] == [(2, RECORDS[0], spans[0]), (3, RECORDS[1], spans[1])]
    assert j.resumed == 2
    assert capsys.readouterr().err == f"test: {path}:4: dropped a torn last line (an interrupted write)\n"
    assert path.read_bytes() == whole  # cut back to the last complete line before appending
    (span,) = j.append([TAIL])
    j.close()
    assert span == (len(whole), len(TAIL_LINE))
    assert path.read_bytes() == whole + TAIL_LINE
    _, seen = opened(path)
    assert [r for _, r, _ in seen] == [*RECORDS[:2], TAIL]


def test_torn_tail_right_after_the_header(tmp_path, capsys):
    path = tmp_path / "j.jsonl"
    path.write_bytes(journal.header(SETTINGS) + TAIL_LINE[:CUT_IN_CHAR])
    j, seen = opened(path)
    j.close()
    assert seen == [] and j.resumed == 0
    assert capsys.readouterr().err == f"test: {path}:2: dropped a torn last line (an interrupted write)\n"
    assert path.read_bytes() == journal.header(SETTINGS)


# --- corrupt lines -------------------------------------------------------------------------------------------------

CORRUPT = [
    # (id, the bad line, message)
    ("not_json", b"{not json\n", "corrupt line"),
    ("blank", b"\n", "corrupt line"),
    ("invalid_utf8", b'{"text": "\xff"}\n', "corrupt line"),
    ("cut_character_then_newline", TAIL_LINE[:CUT_IN_CHAR] + b"\n", "corrupt line"),
    ("list", b"[1, 2]\n", "a record must be a JSON object"),
    ("number", b"7\n", "a record must be a JSON object"),
    ("null", b"null\n", "a record must be a JSON object"),
]


@pytest.mark.parametrize("bad, message", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
@pytest.mark.parametrize("then", [b"", line(RECORDS[3]), TAIL_LINE[:5]], ids=["last", "middle", "before_torn"])
def test_corrupt_line_is_an_error_naming_its_line(tmp_path, capsys, bad, message, then):
    path = tmp_path / "j.jsonl"
    written(path, RECORDS[:2])
    with open(path, "ab") as f:
        f.write(bad + then)
    before = path.read_bytes()
    with pytest.raises(InputError) as exc:
        opened(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:4: {message}") and msg.endswith("delete the file to start afresh")
    assert "\n" not in msg
    assert path.read_bytes() == before  # never skipped, never truncated
    assert capsys.readouterr().err == ""


# --- copy_to and remove --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 1, 0, 2], [2], []], ids=["as_written", "shuffled", "one", "none"])
@pytest.mark.parametrize("keep_header", [False, True], ids=["records_only", "with_header"])
def test_copy_to_writes_the_spans_in_the_order_given(tmp_path, order, keep_header):
    path = tmp_path / "samples.jsonl.partial"
    j, _ = opened(path)
    spans = j.append(RECORDS[:2]) + j.append(RECORDS[2:])
    out = tmp_path / "samples.jsonl"
    out.write_text("old output", encoding="utf-8")
    each = []
    j.copy_to(out, [spans[k] for k in order], keep_header=keep_header, each=each.append)
    expected = [line(RECORDS[k]) for k in order]
    assert each == expected
    assert out.read_bytes() == (journal.header(SETTINGS) if keep_header else b"") + b"".join(expected)
    assert path.is_file()  # the journal stays until removed
    assert leftovers(tmp_path, {path.name, out.name}) == []
    if keep_header:  # a kept header makes the copy a finished journal
        assert journal.read(out) == (SETTINGS, [(n, RECORDS[k], line(RECORDS[k]))
                                                for n, k in enumerate(order, start=2)])
    j.remove()
    assert not path.exists()
    j.remove()  # removing twice is harmless


def test_copy_to_after_resume_uses_the_resumed_spans(tmp_path):
    path = tmp_path / "j.jsonl"
    written(path, RECORDS[:3])
    j, seen = opened(path)
    (span,) = j.append(RECORDS[3:])
    out = tmp_path / "out.jsonl"
    j.copy_to(out, [span] + [s for _, _, s in reversed(seen)], keep_header=False)
    assert out.read_bytes() == b"".join(line(r) for r in [RECORDS[3], RECORDS[2], RECORDS[1], RECORDS[0]])


def test_copy_to_a_failing_callback_leaves_no_output(tmp_path):
    path = tmp_path / "j.jsonl"
    j, _ = opened(path)
    spans = j.append(RECORDS)
    out = tmp_path / "out.jsonl"

    def boom(raw):
        if b'"index": 2' in raw:
            raise InputError(path, "malformed")

    with pytest.raises(InputError, match="malformed"):
        j.copy_to(out, spans, each=boom)
    assert not out.exists() and leftovers(tmp_path, {path.name}) == []


# --- read: a finished journal, strictly ----------------------------------------------------------------------------

def test_read_a_finished_journal(tmp_path):
    path = tmp_path / "samples.shard0-of-2.jsonl"
    written(path)
    settings, lines = journal.read(path)
    assert settings == SETTINGS
    assert lines == [(n, r, line(r)) for n, r in enumerate(RECORDS, start=2)]


def test_read_a_header_only_journal(tmp_path):
    path = tmp_path / "j.jsonl"
    journal.start(path, SETTINGS)
    assert journal.read(path) == (SETTINGS, [])


GOOD = journal.header(SETTINGS) + line(RECORDS[0])
READ_ERRORS = [
    # (id, the file's bytes, what the message names after the path)
    ("torn_last_line", GOOD + TAIL_LINE[:CUT_IN_CHAR], ":3: incomplete last line"),
    ("record_without_newline", GOOD + TAIL_LINE[:-1], ":3: incomplete last line"),
    ("corrupt_middle", GOOD + b"{not json\n" + TAIL_LINE, ":3: corrupt line"),
    ("blank_line", GOOD + b"\n" + TAIL_LINE, ":3: corrupt line"),
    ("not_an_object", GOOD + b"[1]\n", ":3: a record must be a JSON object"),
    ("empty_file", b"", ":1: no header line: not a journal of this project"),
    ("no_header", line(RECORDS[0]) + line(RECORDS[1]), ":1: no header line: not a journal of this project"),
    ("torn_header", journal.header(SETTINGS)[:-3], ":1: incomplete last line"),
]


@pytest.mark.parametrize("content, message", [c[1:] for c in READ_ERRORS], ids=[c[0] for c in READ_ERRORS])
def test_read_is_strict(tmp_path, content, message):
    path = tmp_path / "j.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        journal.read(path)
    assert str(exc.value).startswith(f"{path}{message}") and "\n" not in str(exc.value)


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["missing", "folder"])
def test_read_unreadable_file(tmp_path, make):
    path = tmp_path / "j.jsonl"
    make(path)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: cannot read: "):
        journal.read(path)
