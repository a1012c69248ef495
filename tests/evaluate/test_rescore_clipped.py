"""lawshift.evaluate.rescore on clipped logs: a response cut before its answer is scored from the record's own
`pred_verdict` (or the public script's `pred_violation`) and `pred_prison`, counted in `from_log_fields`, said on
stderr, and left out of `agreement`, which warns on stderr below 90%.
"""

from __future__ import annotations

import pytest
from conftest import dump_json, read_json

from lawshift.core.files import InputError
from lawshift.evaluate.rescore import main, rescore, rescore_logs, summary_line


def ans(block: str) -> str:
    return f"<think>推理。</think><answer> {block} </answer>"


def rec(block: str, is_correct: bool | None = None, **extra) -> dict:
    """A record with its whole response, as tests/evaluate/test_rescore.py writes them."""
    out = {"sample_id": 0, "full_response": ans(block), **extra}
    if is_correct is not None:
        out["is_correct"] = is_correct
    return out


# What a clipped `detailed_results` log keeps of a response: its first ~500 characters, cut before (or inside) the
# <answer> block, so the verdict survives only in pred_verdict / pred_prison.
CLIPPED = "<think>\n好的，我现在需要处理用户提供的案件事实和相关法条，预测罪名和刑期。</think>\n\n<answer> V | 1..."


def clip(verdict: object = None, prison: object = None, is_correct: bool | None = None,
         key: str = "pred_verdict") -> dict:
    out = {"sample_id": 0, "response": CLIPPED, key: verdict, "pred_prison": prison}
    if is_correct is not None:
        out["is_correct"] = is_correct
    return out


# ---- one record: scored as the same answer in full would be -------------------------------------------------------

def scored_as(path, folder: str, split: str, record: dict) -> dict:
    other = "poisoned" if split == "original" else "original"
    dump_json(path, [{"folder": folder, split: [record], other: []}])
    return rescore([path], 36, 120)


@pytest.mark.parametrize("key", ["pred_verdict", "pred_violation"])  # the public script's two names for it
@pytest.mark.parametrize(("folder", "split", "verdict", "prison", "block", "expected"), [
    ("term_up", "poisoned", "V", 130, "V | 130", True),  # months as an integer
    ("term_up", "poisoned", "V", "130", "V | 130", True),  # as the public script writes them: a digit string
    ("term_up", "poisoned", "V", "12", "V | 12", False),
    ("term_up", "poisoned", "V", 120, "V | 120", True),  # our >= threshold, as for a text answer
    ("term_up", "poisoned", "V", None, "V", False),  # a conviction with no term reaches no threshold
    ("term_down", "poisoned", "v", " 24 ", "V | 24", True),
    ("term_extremity_in", "poisoned", "V", 10000, "V | XT", True),  # life as stored (gold prison_time's code)
    ("term_extremity_in", "poisoned", "V", "10001", "V | XT", True),  # death
    ("term_extremity_in", "poisoned", "V", "XT", "V | XT", True),
    ("term_extremity_in", "poisoned", "V", "无期徒刑", "V | XT", True),
    ("term_extremity_out", "original", "V", 10000, "V | XT", True),
    ("term_extremity_out", "poisoned", "V", 10001, "V | XT", False),
    ("subject_explicit_reduce", "poisoned", "NV", None, "不违规", True),
    ("subject_explicit_reduce", "poisoned", "NV", 7, "不违规", True),  # a term beside an acquittal means nothing
    ("subject_explicit_reduce", "poisoned", "V", 7, "V | 7", False),
    ("action_explicit_extend", "original", "V", None, "V", True),
])
def test_clipped_record_scores_as_its_logged_answer(tmp_path, key, folder, split, verdict, prison, block, expected):
    logged = scored_as(tmp_path / "clipped.json", folder, split, clip(verdict, prison, key=key))
    text = scored_as(tmp_path / "full.json", folder, split, rec(block))  # the same answer in full
    assert logged["folders"][folder][split] == text["folders"][folder][split] == float(expected)
    assert logged["overall"]["format_valid"] == 1.0
    assert logged["overall"]["from_log_fields"] == {split: 1, "poisoned" if split == "original" else "original": 0}
    assert text["overall"]["from_log_fields"] == {"original": 0, "poisoned": 0}


# ---- whole logs: counts, stderr, agreement --------------------------------------------------------------------

# A clipped log as the issue found it: every response cut before its answer, the verdicts in the log's fields.
CLIPPED_LOG = [
    {"folder": "term_up", "original": [clip("V", "60", True), clip("V", "200", False)],
     "poisoned": {"predictions": [clip("V", "130", True), clip("V", "12", False), clip("V", 10000, False)]}},
    {"folder": "subject_explicit_reduce", "original": [clip("V", 7, True)],
     "poisoned": [clip("NV", None, True), clip("V", 7, False)]},
]


def test_clipped_log_is_scored_from_the_log_fields(tmp_path, capsys):
    log, out = tmp_path / "detailed_results.json", tmp_path / "eval_published.json"
    dump_json(log, CLIPPED_LOG)
    main([str(log), "-o", str(out)])
    m = read_json(out)
    assert {name: (f["original"], f["poisoned"], f["from_log_fields"]) for name, f in m["folders"].items()} == {
        "subject_explicit_reduce": (1.0, 0.5, {"original": 1, "poisoned": 2}),
        "term_up": (0.5, 0.333333, {"original": 2, "poisoned": 3}),  # life (10000) is XT, not a term above 120
    }
    assert m["overall"]["from_log_fields"] == {"original": 3, "poisoned": 5}  # every record of the log
    assert m["by_label"]["NV"]["from_log_fields"] == {"original": 1, "poisoned": 2}
    assert m["agreement"]["records"] == 0  # they agree with is_correct by construction: not evidence
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"{log}: 8 of 8 responses held no answer to parse and were scored from the "
                                         "log's pred_verdict/pred_prison"]
    assert captured.out.splitlines() == [summary_line(m, out)]
    assert ("no text-scored record with an is_correct to compare; 8 answer(s) scored from the logs' "
            f"pred_verdict/pred_prison (from_log_fields) -> {out}") in captured.out


@pytest.mark.parametrize("shape", ["lists", "predictions"])
def test_mixed_log_agreement_counts_text_scored_records_only(tmp_path, shape):
    original = [rec("V | 60", True), clip("V", 60, True)]
    poisoned = [rec("V | 130", True), rec("V | 12", True), clip("V", 150, True), clip("NV", None, False)]
    wrap = (lambda rs: rs) if shape == "lists" else (lambda rs: {"predictions": rs})
    log = tmp_path / "mixed.json"
    dump_json(log, [{"folder": "term_up", "original": wrap(original), "poisoned": wrap(poisoned)}])
    m, notes = rescore_logs([log], 36, 120)
    # text-scored: 3 records, 2 agree (the published true for 12 months is not ours); the 3 clipped ones left out
    assert m["agreement"] == {"records": 3, "agree": 2, "share": 0.666667,
                              "original": {"records": 1, "agree": 1, "share": 1.0},
                              "poisoned": {"records": 2, "agree": 1, "share": 0.5}}
    assert m["folders"]["term_up"]["from_log_fields"] == {"original": 1, "poisoned": 2}
    assert (m["overall"]["original"], m["overall"]["poisoned"]) == (1.0, 0.5)  # 130 and 150 succeed, 12 and NV fail
    assert notes[0] == (f"{log}: 3 of 6 responses held no answer to parse and were scored from the log's "
                        "pred_verdict/pred_prison")


@pytest.mark.parametrize(("agree", "disagree", "clipped", "warned"), [
    (9, 1, 0, False),  # 90%: a protocol difference, not a warning
    (8, 2, 0, True),
    (1, 9, 0, True),
    (9, 1, 5, False),
    (8, 2, 10, True),  # counted, the clipped records (agreeing by construction) would make it 18/20 and hide this
    (0, 0, 3, False),  # nothing text-scored to compare
])
def test_low_agreement_warns_on_stderr(tmp_path, capsys, agree, disagree, clipped, warned):
    # on a V folder's poisoned split any conviction succeeds: is_correct false is a disagreement
    records = [rec("V | 7", True)] * agree + [rec("V | 7", False)] * disagree + [clip("V", 7, True)] * clipped
    log = tmp_path / "log.json"
    dump_json(log, [{"folder": "action_explicit_extend", "original": [], "poisoned": records}])
    main([str(log), "-o", str(tmp_path / "out.json")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    share = agree / (agree + disagree) if agree + disagree else None
    assert warnings == ([f"warning: our success matches the logs' is_correct on only {agree}/{agree + disagree} = "
                         f"{100 * share:.1f}% of text-scored records (< 90.0%): the figures are likely not what the "
                         "logs measured (clipped texts? another answer format?)"] if warned else [])


@pytest.mark.parametrize("record", [
    {"response": CLIPPED, "is_correct": False},  # no log fields at all
    clip(None, None, False),  # fields present, null
    clip("未识别", None, False),  # the public script's own "no answer found"
    clip("未识别", "三年", False, key="pred_violation"),  # no verdict: the term is not read
    {"sample_id": 0, "error": "CUDA OOM", "pred_verdict": None},  # a failed batch
])
def test_no_answer_in_text_or_fields_is_unparsed_and_wrong(tmp_path, record):
    log = tmp_path / "log.json"
    dump_json(log, [{"folder": "action_explicit_extend", "original": [record], "poisoned": []}])
    m, notes = rescore_logs([log], 36, 120)
    assert (m["overall"]["original"], m["overall"]["format_valid"]) == (0.0, 0.0)  # V folder: only no answer fails
    assert m["overall"]["from_log_fields"] == {"original": 0, "poisoned": 0} and notes == []
    # scored from its text (which has no answer), so its is_correct still counts in the agreement
    assert m["agreement"]["records"] == int(record.get("is_correct") is not None)


def test_log_fields_are_per_sample_and_only_read_where_the_text_has_no_answer(tmp_path):
    log = tmp_path / "k.json"
    dump_json(log, [{"folder": "term_up", "original": [rec("V | 60", True, pred_verdict="?", pred_prison="三年")],
                     "poisoned": [{"full_response": [ans("V | 130"), CLIPPED], "pred_verdict": ["V", "V"],
                                   "pred_prison": ["130", 12], "is_correct": False}]}])
    m = rescore([log], 36, 120)
    assert m["folders"]["term_up"]["poisoned"] == 0.5  # the text's 130 succeeds, the log's 12 for the clipped fails
    assert m["overall"]["from_log_fields"] == {"original": 0, "poisoned": 1}
    # the k-sample record rests partly on the log's reading: out of the agreement; the original one stays in
    assert (m["agreement"]["records"], m["agreement"]["poisoned"]["records"]) == (1, 0)


# ---- bad log fields ----------------------------------------------------------------------------------------------

FULL = {"folder": "term_up", "original": [rec("V | 60")], "poisoned": [rec("V | 130")]}

BAD_FIELDS = [
    ([{**FULL, "original": [clip("guilty", 7)]}],
     r": record 0: field 'original\[0\].pred_verdict': must be 'V', 'NV', '未识别' or null, got 'guilty'"),
    ([{**FULL, "original": [clip(True, 7)]}], r"field 'original\[0\].pred_verdict': must be 'V', 'NV'"),
    ([{**FULL, "poisoned": {"predictions": [clip("V", "三年")]}}],
     r": record 0: field 'poisoned.predictions\[0\].pred_prison': must be months .* got '三年'"),
    ([{**FULL, "original": [clip("V", True)]}], r"field 'original\[0\].pred_prison': must be months .* got True"),
    ([{**FULL, "original": [clip("V", -3)]}], r"field 'original\[0\].pred_prison': must be months .* got -3"),
    ([{**FULL, "original": [clip("V", 7.5)]}], r"field 'original\[0\].pred_prison': must be months .* got 7.5"),
    ([{**FULL, "original": [{"full_response": [CLIPPED, ans("V | 7")], "pred_verdict": "V"}]}],
     r"field 'original\[0\].pred_verdict': one value for 2 samples: give a list"),
    ([{**FULL, "original": [{"full_response": [CLIPPED, CLIPPED], "pred_verdict": ["V"]}]}],
     r"field 'original\[0\].pred_verdict': has 1 value\(s\) for 2 sample\(s\)"),
    ([{**FULL, "original": [{"full_response": [ans("V | 7"), CLIPPED], "pred_verdict": ["V", "X"]}]}],
     r"field 'original\[0\].pred_verdict\[1\]': must be 'V', 'NV'"),
    ([{**FULL, "original": [{"full_response": [CLIPPED, CLIPPED], "pred_violation": ["V", "V"],
                             "pred_prison": [7, "七"]}]}], r"field 'original\[0\].pred_prison\[1\]': must be months"),
]


@pytest.mark.parametrize(("log", "message"), BAD_FIELDS)
def test_bad_log_field_is_one_line_error(tmp_path, log, message):
    path = tmp_path / "bad.json"
    dump_json(path, log)
    with pytest.raises(InputError, match=message) as err:
        rescore([path], 36, 120)
    assert str(err.value).startswith(f"{path}: record 0: field ") and "\n" not in str(err.value)
