"""lawshift.evaluate.rescore: published LawShift logs of both shapes, re-scored under this project's parser and
protocol.

The main logs (`main_logs`) are two files: one with splits as plain lists, one with splits as objects holding a
`predictions` list, as the public script writes them. Eleven of their records carry `is_correct`; two disagree with
this project on purpose (a TU term of exactly 120 months, which the public script's strict `> 120` fails and our
`>= term_high` passes; a published `true` for a conviction on an NV folder's poisoned case), so agreement is 9/11.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, REPO, dump_json, read_json

from lawshift.core.files import InputError
from lawshift.evaluate.rescore import main, read_log, rescore, summary_line


def ans(block: str) -> str:
    return f"<think>推理。</think><answer> {block} </answer>"


def rec(block: str | None, is_correct: bool | None = None, **extra) -> dict:
    out = {"sample_id": 0, "fact": "某某于某日……", **extra}
    if block is not None:
        out["full_response"] = ans(block)
    if is_correct is not None:
        out["is_correct"] = is_correct
    return out


# Splits as lists; labels from the folder name (term_up: TU) and from label_type (a folder the table lacks).
LOG_LISTS = [
    {"folder": "term_up",
     "original": [rec("V | 60", True), rec("盗窃 | 200", False)],
     "poisoned": [rec("V | 130", True), rec("V | 12", False), rec("V | 120", False)]},  # 120: disagrees
    {"folder": "my_custom_change", "label_type": "NV",
     "original": [rec("盗窃 | 7", True)],
     "poisoned": [rec("NV", True), rec("不违规"), rec("盗窃 | 7", True)]},  # the last disagrees
]
# Splits as objects with `predictions`, the public script's shape; one record answers under `response`.
LOG_OBJECTS = [
    {"folder": "action_explicit_extend", "label_type": None,
     "original": {"correct": 1, "total": 2, "predictions": [
         rec("盗窃罪 | 7", True), {"sample_id": 1, "response": "我认为构成盗窃。", "is_correct": False}]},
     "poisoned": {"correct": 1, "total": 1, "predictions": [rec("V", True)]}},
]


@pytest.fixture
def main_logs(tmp_path) -> list[Path]:
    paths = [tmp_path / "lists.json", tmp_path / "objects.json"]
    dump_json(paths[0], LOG_LISTS)
    dump_json(paths[1], LOG_OBJECTS)
    return paths


def one_folder(tmp_path, folder: str, split: str, block: str, label_type: str | None = None) -> Path:
    other = "poisoned" if split == "original" else "original"
    elem = {"folder": folder, split: [rec(block)], other: []}
    if label_type:
        elem["label_type"] = label_type
    path = tmp_path / "log.json"
    dump_json(path, [elem])
    return path


# ---- success per label type -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("folder", "split", "block", "expected"), [
    ("term_up", "poisoned", "V | 130", True),  # TU: up to >= 120
    ("term_up", "poisoned", "V | 12", False),
    ("term_up", "poisoned", "V | 120", True),  # the threshold itself counts (the public script: > 120)
    ("term_up", "original", "盗窃 | 60", True),  # original: an ordinary term in [36, 120]
    ("term_up", "original", "盗窃 | 12", False),
    ("term_down", "poisoned", "V | 12", True),  # TD: down to <= 36
    ("term_down", "poisoned", "V | 60", False),
    ("term_extremity_in", "poisoned", "V | XT", True),  # XT: to life/death
    ("term_extremity_in", "poisoned", "故意杀人 | 无期徒刑", True),
    ("term_extremity_in", "poisoned", "V | 200", False),
    ("term_extremity_out", "original", "V | XT", True),  # NX: life/death before, a fixed term >= 36 after
    ("term_extremity_out", "poisoned", "V | 48", True),
    ("term_extremity_out", "poisoned", "V | XT", False),
    ("subject_explicit_reduce", "poisoned", "NV", True),  # NV: acquittal after the change
    ("subject_explicit_reduce", "poisoned", "不违规", True),
    ("subject_explicit_reduce", "poisoned", "盗窃 | 7", False),
    ("subject_explicit_reduce", "original", "盗窃 | 7", True),  # before it, a conviction
    ("action_explicit_extend", "poisoned", "盗窃 | 7", True),  # V: a conviction, the project's own grammar
    ("action_explicit_extend", "poisoned", "V", True),
    ("action_explicit_extend", "poisoned", "不违规", False),
])
def test_success_per_label_type(tmp_path, folder, split, block, expected):
    result = rescore([one_folder(tmp_path, folder, split, block)], 36, 120)
    assert result["folders"][folder][split] == float(expected)
    assert result["overall"][split] == float(expected)


@pytest.mark.parametrize(("folder", "label_type", "label"), [
    ("term_down", None, "TD"),  # from the label table
    ("subject_explicit_reduce", None, "NV"),
    ("anything_else", "TU", "TU"),  # from label_type
    ("term_down", "XT", "XT"),  # label_type wins: it is what the published run scored with
])
def test_label_from_label_type_or_folder_name(tmp_path, folder, label_type, label):
    result = rescore([one_folder(tmp_path, folder, "poisoned", "V | XT", label_type)], 36, 120)
    assert result["folders"][folder]["label"] == label
    assert list(result["by_label"]) == [label]


def test_thresholds_follow_the_arguments(tmp_path):
    log = one_folder(tmp_path, "term_up", "poisoned", "V | 120")
    assert rescore([log], 36, 120)["overall"]["poisoned"] == 1.0
    assert rescore([log], 36, 121)["overall"]["poisoned"] == 0.0


# ---- the main logs: both shapes combined -------------------------------------------------------------------------

def test_main_logs_metrics(main_logs):
    m = rescore(main_logs, 36, 120)
    means = {name: {k: v for k, v in f.items() if k not in ("pass_at_k", "majority", "from_log_fields")}
             for name, f in m["folders"].items()}
    assert means == {
        "action_explicit_extend": {"label": "V", "original": 0.5, "poisoned": 1.0, "n": 2, "n_poisoned": 1},
        "my_custom_change": {"label": "NV", "original": 1.0, "poisoned": 0.666667, "n": 1, "n_poisoned": 3},
        "term_up": {"label": "TU", "original": 0.5, "poisoned": 0.666667, "n": 2, "n_poisoned": 3},
    }
    # 5 original prompts, 3 succeed; 7 poisoned, 5 succeed; 1 of 12 answers has no <answer> block
    expected = {"original": 0.6, "poisoned": 0.714286, "gap": -0.114286, "format_valid": 0.916667}
    assert {k: m["overall"][k] for k in expected} == expected
    # every text parses or has no log fields to fall back on: nothing scored from the logs' own verdicts
    no_fields = {"original": 0, "poisoned": 0}
    assert m["overall"]["from_log_fields"] == no_fields
    assert all(f["from_log_fields"] == no_fields for f in [*m["folders"].values(), *m["by_label"].values()])
    assert m["overall"].get("truncated") is None  # a log does not say whether an answer hit the length limit
    assert sorted(m["by_label"]) == ["NV", "TU", "V"]
    assert m["by_label"]["TU"]["n"] == 2
    # no gold charge in a log: the gold checks do not apply
    assert m["charge_accuracy"] is None and m["term_exact_accuracy"] is None and m["train_exact"] is None
    assert m["rescored"] == {"logs": [str(p) for p in main_logs], "term_low": 36, "term_high": 120, "answers": 12}


def test_main_logs_agreement(main_logs):
    # hand count: 11 records with is_correct (the 不违规 one has none); all 5 original agree; of 6 poisoned,
    # term_up's 120 months and my_custom_change's conviction disagree
    assert rescore(main_logs, 36, 120)["agreement"] == {
        "records": 11, "agree": 9, "share": 0.818182,
        "original": {"records": 5, "agree": 5, "share": 1.0},
        "poisoned": {"records": 6, "agree": 4, "share": 0.666667},
    }


def test_records_are_indexed_in_file_order(main_logs):
    ids = [e.item.id for f in read_log(main_logs[0]) for e in f.entries]
    assert ids == ["term_up/original/0", "term_up/original/1", "term_up/poisoned/0", "term_up/poisoned/1",
                   "term_up/poisoned/2", "my_custom_change/original/0", "my_custom_change/poisoned/0",
                   "my_custom_change/poisoned/1", "my_custom_change/poisoned/2"]


def test_summary_line(main_logs):
    line = summary_line(rescore(main_logs, 36, 120), "out.json")
    assert line == ("rescored 3 folder(s), 12 answer(s): original 60.0%, poisoned 71.4%; agreement with the logs' "
                    "is_correct 9/11 = 81.8% -> out.json")


def test_samples_per_case_are_averaged(tmp_path):
    """k > 1: the public script writes the k texts as a list (is_correct null); each is one answer of the case."""
    log = tmp_path / "k.json"
    dump_json(log, [{"folder": "term_up", "original": [],
                     "poisoned": {"predictions": [
                         {"full_response": [ans("V | 130"), ans("V | 12")], "is_correct": None},
                         {"full_response": [ans("V | 150"), ans("V | 140")], "is_correct": True},
                         {"full_response": [ans("V | 150"), ans("V | 10")], "is_correct": True}]}}])
    m = rescore([log], 36, 120)
    assert m["folders"]["term_up"]["poisoned"] == round((0.5 + 1 + 0.5) / 3, 6)
    assert m["rescored"]["answers"] == 6
    # a case with k answers is correct when all k are, as the public script's correct_count == num_samples
    assert m["agreement"] == {"records": 2, "agree": 1, "share": 0.5, "original": {"records": 0, "agree": 0,
                              "share": None}, "poisoned": {"records": 2, "agree": 1, "share": 0.5}}


def test_failed_batch_record_counts_as_a_failure(tmp_path):
    """The public script writes `error` and no response for a batch that failed; it counted it as wrong."""
    log = tmp_path / "err.json"
    dump_json(log, [{"folder": "action_explicit_extend", "original": [{"sample_id": 0, "error": "CUDA OOM"}],
                     "poisoned": [rec("V")]}])
    m = rescore([log], 36, 120)
    assert m["overall"]["original"] == 0.0 and m["overall"]["format_valid"] == 0.5


def test_true_prison_is_the_case_term(tmp_path):
    log = tmp_path / "t.json"
    dump_json(log, [{"folder": "term_up", "original": [rec("V | 60", true_prison=48)], "poisoned": []}])
    (entry,) = read_log(log)[0].entries
    assert entry.item.case.prison_time == 48 and entry.item.case.charge == ""


# ---- bad logs --------------------------------------------------------------------------------------------------

GOOD = {"folder": "term_up", "original": [rec("V | 60")], "poisoned": [rec("V | 130")]}

BAD_LOGS = [
    ({"folder": "term_up"}, r"expected a JSON list with one object per folder, got dict"),
    ([], r"no folders \(empty list\)"),
    ([GOOD, "term_down"], r": record 1: expected an object with 'folder', got str"),
    ([{"original": [], "poisoned": []}], r": record 0: field 'folder': missing"),
    ([{"folder": "", "original": [], "poisoned": []}], r": record 0: field 'folder': must be a non-empty string"),
    ([{"folder": "no_such_folder", "original": [], "poisoned": []}],
     r": record 0: field 'folder': unknown folder 'no_such_folder' and no label_type"),
    ([{**GOOD, "label_type": "T6.1"}], r": record 0: field 'label_type': unknown label type 'T6.1'"),
    ([{"folder": "term_up", "original": []}], r": record 0: field 'poisoned': missing"),
    ([{**GOOD, "poisoned": "V | 130"}], r": record 0: field 'poisoned': expected a list of records or an object"),
    ([{**GOOD, "poisoned": {"results": []}}], r": record 0: field 'poisoned': .* got dict without one"),
    ([{**GOOD, "original": [rec("V | 60"), 7]}], r": record 0: field 'original\[1\]': expected an object, got int"),
    ([{**GOOD, "poisoned": {"predictions": [{"is_correct": True}]}}],
     r": record 0: field 'poisoned.predictions\[0\].full_response': missing"),
    ([{**GOOD, "original": [{"response": 42}]}],
     r": record 0: field 'original\[0\].response': must be a string or a non-empty list of strings, got int"),
    ([{**GOOD, "original": [{"full_response": []}]}], r"field 'original\[0\].full_response': must be a string"),
    ([{**GOOD, "original": [{**rec("V | 60"), "is_correct": "yes"}]}],
     r": record 0: field 'original\[0\].is_correct': must be true, false or null, got 'yes'"),
    ([{**GOOD, "original": [rec("V | 60", true_prison="5年")]}], r"field 'original\[0\].true_prison': must be an int"),
    ([GOOD, GOOD], r": record 1: field 'folder': folder 'term_up' already read from .*bad.json \(record 0\)"),
]


@pytest.mark.parametrize(("log", "message"), BAD_LOGS)
def test_bad_log_is_one_line_error(tmp_path, log, message):
    path = tmp_path / "bad.json"
    dump_json(path, log)
    with pytest.raises(InputError, match=message) as err:
        rescore([path], 36, 120)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_folder_in_two_logs_is_an_error(main_logs, tmp_path):
    again = tmp_path / "again.json"
    dump_json(again, [LOG_OBJECTS[0]])
    with pytest.raises(InputError, match=rf"^{again}: record 0: field 'folder': folder 'action_explicit_extend' "
                                         rf"already read from {main_logs[1]} \(record 0\)"):
        rescore([*main_logs, again], 36, 120)


def test_missing_and_invalid_json_logs(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        rescore([tmp_path / "absent.json"], 36, 120)
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(InputError, match="invalid JSON"):
        rescore([tmp_path / "broken.json"], 36, 120)


def test_main_refuses_bad_thresholds_and_overwriting_a_log(main_logs, tmp_path):
    out = tmp_path / "out.json"
    with pytest.raises(InputError, match=r"field '--term-high': needs 0 <= term_low <= term_high"):
        main([str(main_logs[0]), "-o", str(out), "--term-low", "130"])
    with pytest.raises(InputError, match=r"field '-o': is also a LOG"):
        main([*map(str, main_logs), "-o", str(main_logs[1])])
    assert not out.exists()


def test_main_writes_the_metrics(main_logs, tmp_path, capsys):
    out = tmp_path / "metrics" / "eval_published.json"
    main([*map(str, main_logs), "-o", str(out)])
    assert read_json(out) == rescore(main_logs, 36, 120)
    assert capsys.readouterr().out.strip().endswith(f"9/11 = 81.8% -> {out}")


# ---- the command line --------------------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lawshift.evaluate.rescore", *args], cwd=REPO, env=ENV,
                          capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_writes_the_metrics_file(main_logs, tmp_path):
    out = tmp_path / "eval_published.json"
    proc = cli(*map(str, main_logs), "-o", str(out), "--term-high", "121")
    assert proc.returncode == 0, proc.stderr
    m = read_json(out)
    assert m["folders"]["term_up"]["poisoned"] == 0.333333  # 120 months no longer reaches the threshold
    assert m["agreement"]["records"] == 11 and m["agreement"]["agree"] == 10  # and agrees with the strict > 120
    assert m["rescored"]["term_high"] == 121
    assert proc.stdout.splitlines() == [summary_line(m, out)]


@pytest.mark.slow
def test_cli_bad_log_is_one_stderr_line_and_no_output(main_logs, tmp_path):
    bad = tmp_path / "bad.json"
    dump_json(bad, [GOOD, {**GOOD, "folder": "term_down", "poisoned": {"predictions": [{"is_correct": True}]}}])
    out = tmp_path / "eval_published.json"
    proc = cli(str(main_logs[0]), str(bad), "-o", str(out))
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [f"error: {bad}: record 1: field 'poisoned.predictions[0].full_response': "
                                        "missing: a record needs the model's text in full_response or response"]
    assert not out.exists() and not list(tmp_path.glob(f".{out.name}.*"))  # nor a temp file left behind
