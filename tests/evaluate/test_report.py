"""Tests for lawshift.evaluate.report: the per-folder table, markdown escaping of model text, and the plot CSVs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import EV
from hypothesis import given, settings
from hypothesis import strategies as st

from lawshift.evaluate import evalmetrics, evaluation
from lawshift.evaluate.report import (
    escape_md,
    folder_plot,
    folder_table,
    report_markdown,
    term_error_plot,
    write_outputs,
)
from lawshift.task.data import Case

METRICS = {
    "overall": {"original": 0.6875, "poisoned": 0.5625, "gap": 0.125, "format_valid": 0.888889},
    "by_label": {"TU": {"original": 0.5, "poisoned": 0.5, "gap": 0.0, "format_valid": 1.0, "n": 2},
                 "V": {"original": 1.0, "poisoned": 0.0, "gap": 1.0, "format_valid": 0.75, "n": 2}},
    "folders": {"action_explicit_extend": {"label": "V", "original": 1.0, "poisoned": 0.0, "n": 2},
                "term_up": {"label": "TU", "original": 0.5, "poisoned": 0.5, "n": 2},
                "term_down": {"label": "TD", "original": 0.0, "poisoned": None, "n": 1}},
    "charge_accuracy": 0.875, "term_exact_accuracy": 0.4375, "train_exact": None,
}


def test_folder_table():
    table = folder_table(METRICS)
    assert list(table.columns) == ["folder", "label", "original", "poisoned", "change"]
    assert table.values.tolist() == [
        ["action_explicit_extend", "V", "100.0%", "0.0%", "-100.0 pp"],
        ["term_up", "TU", "50.0%", "50.0%", "+0.0 pp"],
        ["term_down", "TD", "0.0%", "–", "–"],
        ["**overall**", "", "68.8%", "56.2%", "-12.5 pp"],
    ]


ESCAPES = [
    ("盗窃 | 7", "盗窃 \\| 7"),
    ("a\nb\r\nc", "a<br>b<br>c"),
    ("<answer> x </answer>", "&lt;answer&gt; x &lt;/answer&gt;"),
    ("a \\| b", "a \\\\\\| b"),  # a backslash before a pipe cannot un-escape it
    ("&lt;", "&amp;lt;"),
    ("", ""),
]


@pytest.mark.parametrize("text,expected", ESCAPES)
def test_escape_md(text, expected):
    assert escape_md(text) == expected


UNESCAPED_PIPE = re.compile(r"(?<!\\)(?:\\\\)*\|")


def table_cells(line: str) -> int:
    return len(UNESCAPED_PIPE.findall(line)) - 1


def test_report_gives_pass_at_k_and_majority_when_the_metrics_have_k():
    assert "pass@" not in report_markdown("round1", METRICS, [])  # a metrics file from before pass@k
    metrics = {**METRICS, "k": 3, "train_pass_at_k": 0.75, "train_majority": 0.5,
               "overall": {**METRICS["overall"], "pass_at_k": {"original": 0.9, "poisoned": 0.8},
                           "majority": {"original": 0.7, "poisoned": None}}}
    text = report_markdown("round1", metrics, [])
    assert ("- over k = 3 answers per prompt, pass@3 / majority vote: original 90.0% / 70.0%, poisoned 80.0% / –, "
            "training subset 75.0% / 50.0%") in text


def test_report_keeps_tables_intact_with_hostile_model_text():
    records = [{"id": "term_up/original/0", "answer": "<think>a | b\n| c | d |\n</think>", "parse": None},
               {"id": "term_up/original/1", "answer": "ok", "parse": {"verdict": "NV"}}]
    text = report_markdown("sft", METRICS, records, ["12 prompts | 1 answer"])
    tables = [line for line in text.splitlines() if line.startswith("|")]
    widths = {line.split("|")[1].strip(): table_cells(line) for line in tables}
    assert widths["folder"] == widths["action_explicit_extend"] == widths["**overall**"] == 5
    assert widths["prompt"] == widths["term_up/original/0"] == 2
    assert "term_up/original/1" not in text  # parsed answers are not quoted
    assert "a \\| b<br>\\| c \\| d \\|<br>&lt;/think&gt;" in text
    assert "- 12 prompts \\| 1 answer" in text
    assert "training subset: –" in text and "charge accuracy (original split): 87.5%" in text


def test_folder_plot_rows():
    rows = folder_plot(METRICS)
    assert rows.to_dict("records")[:2] == [
        {"bar": "action_explicit_extend · original", "folder": "action_explicit_extend", "split": "original",
         "accuracy": 1.0},
        {"bar": "action_explicit_extend · poisoned", "folder": "action_explicit_extend", "split": "poisoned",
         "accuracy": 0.0}]
    assert len(rows) == 6


def test_term_error_plot_counts_and_clips():
    records = [{"term_error": e} for e in (0, 0, 2, -1, 500, None)] + [{"split": "train"}]
    rows = term_error_plot(records, clip=3)
    assert rows["term_error_months"].tolist() == [-1, 0, 1, 2, 3]
    assert rows["answers"].tolist() == [1, 2, 0, 1, 1]
    assert rows["share"].tolist() == [0.2, 0.4, 0.0, 0.2, 0.2]
    assert term_error_plot([{"term_error": None}]).empty


# ---- fuzzed model text -----------------------------------------------------------------------------------------

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
HOSTILE = st.text() | st.lists(st.sampled_from(["|", "\\", "\\|", "<answer>", "</answer>", "<think>", "<br>", "&lt;",
                                                "`", "**", "# ", "- ", "---", "[x](javascript:y)", "盗窃", " ", "7",
                                                *LINE_BREAKS]), max_size=60).map("".join)


@settings(max_examples=200, deadline=None)
@given(HOSTILE)
def test_escape_md_leaves_no_line_break_pipe_or_tag(text):
    out = escape_md(text)
    assert not any(c in out for c in LINE_BREAKS)
    assert UNESCAPED_PIPE.search(out) is None
    assert "<" not in out.replace("<br>", "") and ">" not in out.replace("<br>", "")


@settings(max_examples=50, deadline=None)
@given(answers=st.lists(HOSTILE | st.text(min_size=1000, max_size=5000), min_size=1, max_size=7), note=HOSTILE)
def test_report_keeps_its_shape_whatever_the_model_wrote(answers, note):
    """The report from hostile answers has the same lines, and the same table cells per line, as from plain ones."""
    records = [{"id": f"term_up/original/{i}", "answer": a, "parse": None, "term_error": None}
               for i, a in enumerate(answers)]
    hostile = report_markdown("sft", METRICS, records, [note]).split("\n")
    plain = report_markdown("sft", METRICS, [{**r, "answer": "x"} for r in records], ["x"]).split("\n")
    assert len(hostile) == len(plain)
    assert [table_cells(line) for line in hostile] == [table_cells(line) for line in plain]
    body = "\n".join(hostile).replace("<br>", "")
    assert "<" not in body and ">" not in body  # no tag reaches a renderer
    assert term_error_plot(records).empty and len(folder_plot(METRICS)) == 6


# ---- the eval stage's outputs ----------------------------------------------------------------------------------

THEFT = Case("事实", ("264-0-0",), "盗窃", 24)
ANSWERS = [("action_explicit_extend", "V", "original", 0, "<answer> 盗窃 | 30 </answer>"),
           ("action_explicit_extend", "V", "poisoned", 0, "<answer> 不违规 </answer>"),
           ("term_up", "TU", "original", 0, "<think>a | b\n</think>没写完"),
           ("term_up", "TU", "poisoned", 0, "<answer> 盗窃 | 130 </answer>"),
           (None, None, "train", 3, "<answer> 盗窃 | 24 </answer>")]


@pytest.mark.parametrize("name", sorted(EV))
def test_write_outputs_writes_every_eval_output_at_its_path(tmp_path, monkeypatch, name):
    """write_outputs: predictions, metrics, report and both plot CSVs of one model at its paths.EVAL paths, each
    what the functions above make of the evaluation; nothing else, no temp file left."""
    monkeypatch.chdir(tmp_path)
    items = [evaluation.EvalItem(f"{folder}/{split}/{i}" if folder else f"train/{i}", folder, label, split, i, THEFT,
                                 "")
             for folder, label, split, i, _ in ANSWERS]
    records = [evaluation.score_answer(item, text, 0, 36, 120) for item, (*_, text) in zip(items, ANSWERS,
                                                                                          strict=True)]
    metrics = evalmetrics.compute_metrics(records)
    note = "5 prompts, 1 answer(s) each; 0 cited article id(s) not found"
    got = write_outputs(name, evaluation.Evaluation(evalmetrics.by_prompt(records), 1, note, partial=None))
    assert got.metrics == metrics and got.answers == len(records)

    where = EV[name]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(where[k] for k in ("predictions", "metrics", "report", "folders_plot",
                                                "term_errors_plot"))
    lines = Path(where["predictions"]).read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and [json.loads(line) for line in lines[:-1]] == records  # one record a line, in order
    assert json.loads(Path(where["metrics"]).read_text(encoding="utf-8")) == metrics
    assert Path(where["report"]).read_text(encoding="utf-8") == report_markdown(name, metrics, records, [note])
    assert Path(where["folders_plot"]).read_text(encoding="utf-8") == folder_plot(metrics).to_csv(index=False)
    assert Path(where["term_errors_plot"]).read_text(encoding="utf-8") == term_error_plot(records).to_csv(
        index=False)
    assert f"# LawShift evaluation: `{name}`" in Path(where["report"]).read_text(encoding="utf-8")
    assert "term_error_months,answers,share\n6,1,1.0\n" == Path(where["term_errors_plot"]).read_text()

    # a second write replaces every file whole
    write_outputs(name, evaluation.Evaluation(evalmetrics.by_prompt(records[:2]), 1, note, None))
    assert len(Path(where["predictions"]).read_text(encoding="utf-8").splitlines()) == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == written
