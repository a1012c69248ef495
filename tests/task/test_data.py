"""Tests for lawshift.task.data: both articles shapes, every record validation error, article lookup, folders."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, REPO, SAMPLE, dump_json

import lawshift.task.data
from lawshift.core.files import InputError
from lawshift.task.answers import DEATH, LIFE
from lawshift.task.data import (
    FOLDER_FILES,
    LABELS,
    SPLITS,
    ArticleLookup,
    Case,
    discover_folders,
    folder_labels,
    load_articles,
    load_cases,
    training_cases,
)

GOOD = {"fact": "被告人甲容留他人吸毒。", "relevant_articles": ["354-0-0"], "charge": "容留他人吸毒", "prison_time": 7}
LABEL_TYPES = {"V", "NV", "TU", "TD", "XT", "NX"}


def write_json(path: Path, obj) -> Path:
    dump_json(path, obj)
    return path


def assert_one_line(err: InputError, *parts: str) -> str:
    msg = str(err)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


def without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


# -----------------------------------------------------------------------------
# articles


def test_both_article_shapes_load_equal(tmp_path):
    articles = {"354-0-0": "【容留他人吸毒罪】容留他人吸食、注射毒品的……", "264-0-0": "【盗窃罪】盗窃公私财物……"}
    obj = write_json(tmp_path / "obj.json", articles)
    lst = write_json(tmp_path / "list.json", [{"id": k, "content": v} for k, v in articles.items()])
    assert load_articles(obj) == load_articles(lst) == articles


def test_real_articles_files_load(sample_root):
    law = load_articles(sample_root / "criminal_law_articles.json")
    assert len(law) == 891
    assert law["1-0-0"].startswith("【立法宗旨】")
    old = load_articles(sample_root / "action_explicit_extend" / "articles_original.json")
    new = load_articles(sample_root / "action_explicit_extend" / "articles_poisoned.json")
    assert old.keys() == new.keys() == {"354-0-0"}
    assert old["354-0-0"] != new["354-0-0"]


BAD_ARTICLES = [
    # (id, file content, parts the one-line message must name)
    ("number", 42, ["got int"]),
    ("string", "354-0-0", ["got str"]),
    ("list_of_strings", ["354-0-0"], ["record 0", "'id' and 'content'"]),
    ("item_without_content", [{"id": "1-0-0", "content": "甲"}, {"id": "2-0-0"}], ["record 1", "field 'content'"]),
    ("item_without_id", [{"content": "甲"}], ["record 0", "field 'id'", "missing"]),
    ("item_id_not_str", [{"id": 354, "content": "甲"}], ["record 0", "field 'id'", "must be a string"]),
    ("object_text_not_str", {"354-0-0": ["甲"]}, ["field '354-0-0'", "must be a string"]),
]


@pytest.mark.parametrize("content,parts", [c[1:] for c in BAD_ARTICLES], ids=[c[0] for c in BAD_ARTICLES])
def test_bad_articles_file(tmp_path, content, parts):
    path = write_json(tmp_path / "articles.json", content)
    with pytest.raises(InputError) as exc:
        load_articles(path)
    assert_one_line(exc.value, str(path), *parts)


# -----------------------------------------------------------------------------
# cases


BAD_RECORDS = [
    # (id, bad record at index 1, field named, message fragment)
    ("fact_missing", without("fact"), "fact", "missing"),
    ("fact_empty", {**GOOD, "fact": ""}, "fact", "non-empty"),
    ("fact_blank", {**GOOD, "fact": " \n "}, "fact", "non-empty"),
    ("fact_not_str", {**GOOD, "fact": 12}, "fact", "non-empty string"),
    ("articles_missing", without("relevant_articles"), "relevant_articles", "missing"),
    ("articles_not_list", {**GOOD, "relevant_articles": "354-0-0"}, "relevant_articles", "list of strings"),
    ("articles_non_str_item", {**GOOD, "relevant_articles": ["354-0-0", 354]}, "relevant_articles", "list of strings"),
    ("charge_missing", without("charge"), "charge", "missing"),
    ("charge_not_str", {**GOOD, "charge": ["盗窃"]}, "charge", "must be a string"),
    ("charge_null", {**GOOD, "charge": None}, "charge", "must be a string"),
    ("term_string", {**GOOD, "prison_time": "7"}, "prison_time", "'7'"),
    ("term_negative", {**GOOD, "prison_time": -1}, "prison_time", "-1"),
    ("term_bool", {**GOOD, "prison_time": True}, "prison_time", "True"),
    ("term_float", {**GOOD, "prison_time": 7.5}, "prison_time", "7.5"),
    ("term_float_integral", {**GOOD, "prison_time": 7.0}, "prison_time", "7.0"),
    ("term_missing", without("prison_time"), "prison_time", "missing"),
]


@pytest.mark.parametrize("record,field,fragment", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_bad_record_names_file_index_field(tmp_path, record, field, fragment):
    path = write_json(tmp_path / "cases.json", [GOOD, record, GOOD])
    with pytest.raises(InputError) as exc:
        load_cases(path)
    msg = assert_one_line(exc.value, str(path), "record 1", f"field '{field}'", fragment)
    assert msg.startswith(f"{path}: record 1: field '{field}': ")


@pytest.mark.parametrize("record", [["not", "an", "object"], "text", 7, None], ids=["list", "str", "int", "null"])
def test_record_not_an_object(tmp_path, record):
    path = write_json(tmp_path / "cases.json", [GOOD, GOOD, record])
    with pytest.raises(InputError) as exc:
        load_cases(path)
    assert_one_line(exc.value, str(path), "record 2", "expected an object")


BAD_FILES = [
    # (id, raw bytes, message fragments)
    ("top_level_object", json.dumps(GOOD).encode(), ["expected a JSON list", "got dict"]),
    ("top_level_number", b"3", ["expected a JSON list", "got int"]),
    ("empty_list", b"[]", ["empty"]),
    ("invalid_json", b'[\n  {"fact": "a",\n  "charge": }\n]', [":3:", "invalid JSON"]),
    ("truncated_json", b'[\n{"fact": "a"', ["invalid JSON"]),
    ("not_utf8", '[{"fact": "盗窃"}]'.encode("gbk"), ["UTF-8"]),
]


@pytest.mark.parametrize("raw,parts", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_cases_file(tmp_path, raw, parts):
    path = tmp_path / "cases.json"
    path.write_bytes(raw)
    with pytest.raises(InputError) as exc:
        load_cases(path)
    assert_one_line(exc.value, str(path), *parts)


def test_empty_list_allowed_when_asked(tmp_path):
    assert load_cases(write_json(tmp_path / "cases.json", []), allow_empty=True) == []


@pytest.mark.parametrize("loader", [load_cases, load_articles], ids=["cases", "articles"])
def test_missing_file(tmp_path, loader):
    path = tmp_path / "nope.json"
    with pytest.raises(InputError) as exc:
        loader(path)
    assert_one_line(exc.value, str(path), "not found")


@pytest.mark.parametrize("term", [0, 1, 300, LIFE, DEATH])
def test_valid_terms_accepted(tmp_path, term):
    path = write_json(tmp_path / "cases.json", [{**GOOD, "prison_time": term}])
    assert load_cases(path) == [Case(GOOD["fact"], ("354-0-0",), "容留他人吸毒", term)]


def test_load_cases_round_trips_to_dict(tmp_path):
    records = [GOOD, {**GOOD, "relevant_articles": [], "charge": "不违规", "prison_time": 0}]
    cases = load_cases(write_json(tmp_path / "cases.json", records))
    assert [c.to_dict() for c in cases] == records
    assert isinstance(cases[0].relevant_articles, tuple)


def test_real_training_set(sample_root):
    cases = training_cases(sample_root)
    assert len(cases) == 62
    assert all(c.fact and c.relevant_articles and c.charge for c in cases)
    assert len({c.case_id for c in cases}) == 62  # ids tell the training cases apart


# -----------------------------------------------------------------------------
# case ids


def test_case_id_pinned():
    # ids join samples, filtered answers and training records across stages and runs: they must never drift
    case = Case("被告人甲盗窃。", ("264-0-0",), "盗窃", 6)
    assert re.fullmatch(r"[0-9a-f]{16}", case.case_id)
    assert case.case_id == "e47b898b66381240"


CASE_ID_PAIRS = [
    # (id, a, b, same id?)
    ("same_case", Case("甲", ("1-0-0",), "盗窃", 6), Case("甲", ("1-0-0",), "盗窃", 6), True),
    ("labels_differ", Case("甲", ("1-0-0",), "盗窃", 6), Case("甲", ("1-0-0",), "抢劫", 60), True),
    ("articles_differ", Case("甲", ("1-0-0",), "盗窃", 6), Case("甲", ("2-0-0",), "盗窃", 6), False),
    ("extra_article", Case("甲", ("1-0-0",), "盗窃", 6), Case("甲", ("1-0-0", "2-0-0"), "盗窃", 6), False),
    ("fact_differs", Case("甲", ("1-0-0",), "盗窃", 6), Case("乙", ("1-0-0",), "盗窃", 6), False),
    # a naive concatenation would collide here
    ("no_concat_collision", Case("甲1", ("-0-0",), "盗窃", 6), Case("甲", ("1-0-0",), "盗窃", 6), False),
]


@pytest.mark.parametrize("a,b,same", [c[1:] for c in CASE_ID_PAIRS], ids=[c[0] for c in CASE_ID_PAIRS])
def test_case_id(a, b, same):
    assert (a.case_id == b.case_id) is same


# -----------------------------------------------------------------------------
# article lookup


def test_lookup_counts_missing_ids():
    lookup = ArticleLookup({"1-0-0": "甲", "2-0-0": "乙"}, "arts.json")
    assert lookup.for_case(Case("f", ("2-0-0", "9-0-0", "1-0-0"), "c", 1)) == [("2-0-0", "乙"), ("1-0-0", "甲")]
    assert lookup.missing == 1
    assert lookup.for_case(Case("f", ("8-0-0", "9-0-0"), "c", 1)) == []
    assert lookup.missing == 3


def test_lookup_strict_raises_naming_field():
    lookup = ArticleLookup({"1-0-0": "甲"}, "arts.json", strict=True)
    assert lookup.for_case(Case("f", ("1-0-0",), "c", 1), 0) == [("1-0-0", "甲")]
    with pytest.raises(InputError) as exc:
        lookup.for_case(Case("f", ("1-0-0", "9-0-0"), "c", 1), 4, source="cases.json")
    assert_one_line(exc.value, "cases.json", "record 4", "field 'relevant_articles'", "'9-0-0'", "arts.json")
    assert lookup.missing == 0


# -----------------------------------------------------------------------------
# folders


def test_folder_labels(sample_root):
    labels = folder_labels()
    assert len(labels) == 31
    assert {lab.label for lab in labels.values()} <= LABEL_TYPES
    assert all(name == lab.name for name, lab in labels.items())
    # read from the package data file beside lawshift/task/data.py (a dvc.yaml dep of the stages that read it)
    assert LABELS.name == "labels.json" and LABELS.parent == Path(lawshift.task.data.__file__).parent
    assert [r["name"] for r in json.loads(LABELS.read_text(encoding="utf-8"))] == list(labels)
    # the package copy is the benchmark's label.json
    shipped = json.loads((sample_root / "label.json").read_text(encoding="utf-8"))
    assert {r["name"]: (r["type"], r["label"]) for r in shipped} == {
        n: (lab.type, lab.label) for n, lab in labels.items()
    }


def test_discover_real_sample(sample_root):
    folders = discover_folders(sample_root)
    assert [(f.name, f.label) for f in folders] == [("action_explicit_extend", "V"), ("action_implicit_expand", "V")]
    for folder in folders:
        for split in SPLITS:
            assert len(folder.cases(split)) == 40
            assert folder.articles(split)


def test_discover_skips_unknown_folder(data_copy, caplog):
    (data_copy / "my_extra_folder").mkdir()
    with caplog.at_level(logging.WARNING, logger="lawshift.task.data"):
        folders = discover_folders(data_copy)
    assert [f.name for f in folders] == ["action_explicit_extend", "action_implicit_expand"]
    assert any("my_extra_folder" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("missing", FOLDER_FILES)
def test_discover_known_folder_missing_file(data_copy, missing):
    (data_copy / "action_implicit_expand" / missing).unlink()
    with pytest.raises(InputError) as exc:
        discover_folders(data_copy)
    assert_one_line(exc.value, str(data_copy / "action_implicit_expand" / missing), "not found")


ONLY_CASES = [
    (["action_implicit_expand"], ["action_implicit_expand"]),
    (["action_implicit_expand", "action_explicit_extend"], ["action_explicit_extend", "action_implicit_expand"]),
    ([], ["action_explicit_extend", "action_implicit_expand"]),
    (None, ["action_explicit_extend", "action_implicit_expand"]),
]


@pytest.mark.parametrize("only,expected", ONLY_CASES)
def test_discover_only(sample_root, only, expected):
    assert [f.name for f in discover_folders(sample_root, only)] == expected


@pytest.mark.parametrize("only,fragment", [
    (["action_explicit_extnd"], "unknown"),  # a typo
    (["action_implicit_expand", "nope"], "unknown"),
    (["subject_explicit_extend"], "not found"),  # a real LawShift folder this root lacks
], ids=["typo", "unknown_among_known", "known_but_absent"])
def test_discover_only_errors(sample_root, only, fragment):
    with pytest.raises(InputError) as exc:
        discover_folders(sample_root, only)
    assert_one_line(exc.value, str(sample_root), "field 'eval.folders'", fragment, only[-1])


def test_discover_root_not_a_directory(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        discover_folders(tmp_path / "missing")


def test_discover_ignores_a_file_named_like_a_folder(tmp_path, sample_root):
    shutil.copytree(sample_root / "action_explicit_extend", tmp_path / "action_explicit_extend")
    (tmp_path / "action_implicit_expand").write_text("not a folder", encoding="utf-8")
    assert [f.name for f in discover_folders(tmp_path)] == ["action_explicit_extend"]


# ---- python -m lawshift.task.data check ROOT: a downloaded root against the layout the stages read ----------------

def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lawshift.task.data", "check", *args], capture_output=True, text=True,
                          env=ENV, cwd=REPO)


def test_check_names_each_missing_folder_and_file_in_one_line(tmp_path):
    root = tmp_path / "LawShift"
    shutil.copytree(SAMPLE, root)
    sample_folders = ["action_explicit_extend", "action_implicit_expand"]
    ok = check(str(root), "--folders", *sample_folders)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert ok.stdout.splitlines()[-1] == f"{root}: the LawShift layout, complete"
    assert "62 training cases; 2 folders checked, 80 original and 80 poisoned cases" in ok.stdout
    # the whole benchmark: the sample lacks 29 of the 31 folders, each named with its type and label
    full = check(str(root))
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert full.returncode == 1 and len(errors) == 29 == len(folder_labels()) - 2
    assert f"error: {root / 'subject_explicit_extend'}: missing (LawShift folder T1.1, label V)" in errors
    assert full.stderr.splitlines()[-1].startswith(f"{root}: 29 problem(s)")
    # a missing file, a bad record and a missing articles file: one line each, naming file, record and field
    (root / sample_folders[0] / "poisoned.json").unlink()
    (root / "criminal_law_articles.json").unlink()
    cases = json.loads((root / sample_folders[1] / "original.json").read_text(encoding="utf-8"))
    cases[3]["prison_time"] = "seven"
    (root / sample_folders[1] / "original.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    bad = check(str(root), "--folders", *sample_folders)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert bad.returncode == 1 and len(errors) == 3
    assert errors[0] == (f"error: {root / 'criminal_law_articles.json'}: missing (the whole Criminal Law: "
                         "profiles/reference.yaml's data.train_articles)")
    assert errors[1] == f"error: {root / sample_folders[0] / 'poisoned.json'}: missing (the poisoned split's cases)"
    assert "original.json" in errors[2] and "prison_time" in errors[2] and "3" in errors[2]


def test_check_refuses_what_is_not_a_root(tmp_path):
    nowhere = check(str(tmp_path / "nowhere"))
    assert nowhere.returncode == 1 and "not a directory" in nowhere.stderr
    unknown = check(str(SAMPLE), "--folders", "no_such_folder")
    assert unknown.returncode == 1 and "no_such_folder: not a LawShift folder name" in unknown.stderr
    usage = check()
    assert usage.returncode == 2 and usage.stderr.startswith("usage: python -m lawshift.task.data check")
