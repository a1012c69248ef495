"""Tests for lawshift.sample.filtering and stages/filter.py: acceptance, dedup, weights, statistics, outputs, bad
input."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
from conftest import R1
from hypothesis import given
from hypothesis import strategies as st

from lawshift.core import files
from lawshift.core.params import FilterParams
from lawshift.sample.filtering import (
    SampledCase,
    accepted_histogram,
    filter_case,
    normalize_whitespace,
    read_sampled_case,
    run,
    summarise,
)
from lawshift.task.answers import DEATH, LIFE, NO_VIOLATION, parse_answer
from lawshift.task.data import Case
from lawshift.task.scoring import is_correct

THEFT_7 = Case("被告人盗窃财物。", ("264-0-0",), "盗窃", 7)
MURDER_LIFE = Case("被告人故意杀人。", ("232-0-0",), "故意杀人", LIFE)
MURDER_DEATH = Case("被告人故意杀人，情节恶劣。", ("232-0-0",), "故意杀人", DEATH)
INNOCENT = Case("被告人的行为情节显著轻微。", ("13-0-0",), NO_VIOLATION, 0)


def ans(charge: str, term) -> str:
    return f"<think>推理。</think><answer> {charge} | {term} </answer>"


def sampled(case: Case, *answers: str, finished: tuple[bool, ...] | None = None) -> SampledCase:
    """A sampled case whose answers all ended at eos unless `finished` says otherwise."""
    return SampledCase(case.case_id, case, f"PROMPT {case.fact}", answers,
                       (True,) * len(answers) if finished is None else finished)


FILTER_CASES = [
    # (id, case, answers, tolerance, dedup, weighting, expected responses, accepted, duplicates, format errors)
    ("exact term", THEFT_7, [ans("盗窃", 7), ans("盗窃", 8), ans("抢劫", 7)], 0, True, "inverse_n",
     [ans("盗窃", 7)], 1, 0, 0),
    ("tolerance 1", THEFT_7, [ans("盗窃", 7), ans("盗窃", 8), ans("盗窃", 9)], 1, True, "inverse_n",
     [ans("盗窃", 7), ans("盗窃", 8)], 2, 0, 0),
    # the reference compared "XT" with 10000/10001 and never accepted these
    ("life gold, XT answer", MURDER_LIFE, [ans("故意杀人", "XT"), ans("故意杀人", 10000)], 0, True, "inverse_n",
     [ans("故意杀人", "XT")], 1, 0, 0),
    ("death gold, 死刑 answer", MURDER_DEATH, [ans("故意杀人罪", "死刑"), ans("故意杀人", 240)], 5, True, "inverse_n",
     [ans("故意杀人罪", "死刑")], 1, 0, 0),
    ("no violation", INNOCENT, ["<answer> 不违规 </answer>", ans("盗窃", 7)], 0, True, "inverse_n",
     ["<answer> 不违规 </answer>"], 1, 0, 0),
    ("format errors", THEFT_7, ["盗窃 | 7", "<answer></answer>", ans("盗窃", 7)], 0, True, "inverse_n",
     [ans("盗窃", 7)], 1, 0, 2),
    ("dedup after whitespace normalisation", THEFT_7,
     [ans("盗窃", 7), ans("盗窃", 7).replace(" | ", "  |\n "), "  " + ans("盗窃", 7) + "\n", ans("盗窃罪", 7)],
     0, True, "inverse_n", [ans("盗窃", 7), ans("盗窃罪", 7)], 4, 2, 0),
    ("dedup off keeps repeats", THEFT_7, [ans("盗窃", 7), ans("盗窃", 7)], 0, False, "inverse_n",
     [ans("盗窃", 7), ans("盗窃", 7)], 2, 0, 0),
    ("wrong repeats are not counted as duplicates", THEFT_7, [ans("盗窃", 8), ans("盗窃", 8), ans("盗窃", 7)],
     0, True, "inverse_n", [ans("盗窃", 7)], 1, 0, 0),
    ("uniform", THEFT_7, [ans("盗窃", 7), ans("盗窃罪", 7)], 0, True, "uniform",
     [ans("盗窃", 7), ans("盗窃罪", 7)], 2, 0, 0),
    ("nothing right", THEFT_7, [ans("抢劫", 7)] * 3, 0, True, "inverse_n", [], 0, 0, 0),
]


TRUNCATED_CASES = [
    # (id, answers, finished, expected responses, truncated, truncated_correct)
    ("a right answer cut at the limit is refused", [ans("盗窃", 7), ans("盗窃罪", 7)], (False, True),
     [ans("盗窃罪", 7)], 1, 1),
    ("every right answer cut: none accepted", [ans("盗窃", 7)] * 2, (False, False), [], 2, 2),
    ("a wrong cut answer", [ans("盗窃", 8), ans("盗窃", 7)], (False, True), [ans("盗窃", 7)], 1, 0),
    ("a cut answer with no block", ["<think>推理……", ans("盗窃", 7)], (False, True), [ans("盗窃", 7)], 1, 0),
    ("nothing cut", [ans("盗窃", 7)], (True,), [ans("盗窃", 7)], 0, 0),
]


@pytest.mark.parametrize("answers, finished, responses, truncated, truncated_correct",
                         [c[1:] for c in TRUNCATED_CASES], ids=[c[0] for c in TRUNCATED_CASES])
def test_only_finished_answers_are_accepted(answers, finished, responses, truncated, truncated_correct):
    out = filter_case(sampled(THEFT_7, *answers, finished=finished), FilterParams())
    assert [r["response"] for r in out.records] == responses
    assert (out.truncated, out.truncated_correct, out.accepted) == (truncated, truncated_correct, len(responses))
    assert all(r["weight"] == 1 / len(responses) for r in out.records)
    stats = summarise([out])
    assert (stats["truncated"], stats["truncated_correct"], stats["total_accepted"]) == (
        truncated, truncated_correct, len(responses))


@pytest.mark.parametrize("case, answers, tolerance, dedup, weighting, responses, accepted, duplicates, errors",
                         [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES])
def test_filter_case(case, answers, tolerance, dedup, weighting, responses, accepted, duplicates, errors):
    out = filter_case(sampled(case, *answers), FilterParams(term_tolerance=tolerance, dedup=dedup, weighting=weighting))
    assert [r["response"] for r in out.records] == responses
    assert (out.generated, out.accepted, out.duplicates, out.format_errors, out.kept) == (
        len(answers), accepted, duplicates, errors, len(responses))
    n = len(responses)
    for r in out.records:
        assert r["num_correct_for_this_sample"] == n
        assert r["weight"] == (1.0 / n if weighting == "inverse_n" else 1.0)


def test_sft_record_fields():
    (rec,) = filter_case(sampled(MURDER_LIFE, ans("故意杀人", "XT")), FilterParams()).records
    assert rec == {"case_id": MURDER_LIFE.case_id, "fact": MURDER_LIFE.fact, "relevant_articles": ["232-0-0"],
                   "charge": "故意杀人", "prison_time": LIFE, "prompt": f"PROMPT {MURDER_LIFE.fact}",
                   "response": ans("故意杀人", "XT"), "num_correct_for_this_sample": 1, "weight": 1.0}


TERMS = st.sampled_from([5, 6, 7, 8, 9, "XT"])
TEXTS = st.builds(lambda t, pad: pad + ans("盗窃", t) + pad, TERMS, st.sampled_from(["", " ", "\n", " \t "]))


@given(answers=st.lists(TEXTS, min_size=1, max_size=12), tolerance=st.integers(0, 3), dedup=st.booleans())
def test_inverse_n_weights_of_a_case_sum_to_one(answers, tolerance, dedup):
    out = filter_case(sampled(THEFT_7, *answers), FilterParams(term_tolerance=tolerance, dedup=dedup))
    if out.records:
        assert math.isclose(sum(r["weight"] for r in out.records), 1.0)
    if dedup:
        keys = [normalize_whitespace(r["response"]) for r in out.records]
        assert len(keys) == len(set(keys))
    assert out.kept + out.duplicates == out.accepted == sum(is_correct(parse_answer(a), THEFT_7, tolerance)
                                                            for a in answers)


def test_summarise_and_histogram():
    fp = FilterParams()
    outcomes = [
        filter_case(sampled(THEFT_7, ans("盗窃", 7), ans("盗窃", 7), ans("盗窃", 8), "garbage"), fp),
        filter_case(sampled(MURDER_LIFE, ans("故意杀人", "XT"), ans("故意杀人罪", "无期徒刑"), "x", "y"), fp),
        filter_case(sampled(INNOCENT, ans("盗窃", 1), ans("盗窃", 2), ans("盗窃", 3), ans("盗窃", 4)), fp),
    ]
    assert summarise(outcomes) == {
        "total_samples": 3, "total_generated": 12, "total_accepted": 4, "acceptance_rate": 0.333333,
        "samples_with_no_correct": 1, "avg_correct_per_sample": 1.333333, "sft_examples": 3,
        "duplicates_removed": 1, "format_errors": 3, "format_error_rate": 0.25, "truncated": 0,
        "truncated_correct": 0, "coverage_first": 0.666667, "coverage": 0.666667, "trained_coverage": 0.666667,
        "kept_previous": 0}
    # cases with 0, 1, 2, 3, 4 accepted answers (before deduplication)
    assert accepted_histogram(outcomes) == [{"accepted": k, "cases": c} for k, c in enumerate([1, 0, 2, 0, 0])]


def test_coverage_before_and_after_resampling():
    """first_draws marks where resampling began: a case covered only by a further draw counts in `coverage`, not
    in `coverage_first`."""
    fp = FilterParams()
    late = SampledCase(THEFT_7.case_id, THEFT_7, "P", (ans("盗窃", 8), ans("盗窃", 9), ans("盗窃", 7)), (True,) * 3, 2)
    early = SampledCase(INNOCENT.case_id, INNOCENT, "P", ("<answer> 不违规 </answer>", "x"), (True, True), 2)
    never = SampledCase(MURDER_LIFE.case_id, MURDER_LIFE, "P", ("x",) * 4, (True,) * 4, 2)
    outcomes = [filter_case(c, fp) for c in (late, early, never)]
    assert [o.accepted_first for o in outcomes] == [0, 1, 0] and [o.accepted for o in outcomes] == [1, 1, 0]
    m = summarise(outcomes)
    assert (m["coverage_first"], m["coverage"], m["trained_coverage"]) == (0.333333, 0.666667, 0.666667)


@pytest.mark.parametrize("previous, current, dedup, responses, duplicates", [
    # an earlier round's answers come first and count in n; a repeat of one is a duplicate
    ([ans("盗窃", 7)], [ans("盗窃", 7), ans("盗窃 ", 7) + " "], True, [ans("盗窃", 7)], 2),
    ([ans("盗窃", 7)], [ans("盗窃", 7)], False, [ans("盗窃", 7), ans("盗窃", 7)], 0),
    (["<think>另一推理。</think><answer> 盗窃 | 7 </answer>"], [ans("盗窃", 7), ans("盗窃", 8)], True,
     ["<think>另一推理。</think><answer> 盗窃 | 7 </answer>", ans("盗窃", 7)], 0),
    # a case this round missed keeps what the earlier round trained on
    ([ans("盗窃", 7)], [ans("盗窃", 8)], True, [ans("盗窃", 7)], 0),
    ([], [ans("盗窃", 7)], True, [ans("盗窃", 7)], 0),
])
def test_keep_previous_merges_and_reweights(previous, current, dedup, responses, duplicates):
    out = filter_case(sampled(THEFT_7, *current), FilterParams(dedup=dedup), previous)
    assert [r["response"] for r in out.records] == responses
    assert all(r["weight"] == 1 / len(responses) and r["num_correct_for_this_sample"] == len(responses)
               for r in out.records)
    assert out.duplicates == duplicates and out.kept_previous == len(previous)
    assert out.accepted == sum(is_correct(parse_answer(t), THEFT_7, 0) for t in current)  # this round's only


def test_run_adds_the_previous_rounds_answers_by_case(tmp_path):
    samples, previous = tmp_path / "samples.jsonl", tmp_path / "previous.jsonl"
    files.write_jsonl(samples, [sample_line(THEFT_7, [ans("盗窃", 8)]), sample_line(INNOCENT, ["x"])])
    files.write_jsonl(previous, [{"case_id": THEFT_7.case_id, "response": ans("盗窃", 7), "weight": 1.0}])
    outcomes = run(samples, tmp_path / "sft.jsonl", FilterParams(), previous)
    sft = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text("utf-8").splitlines()]
    assert [(r["case_id"], r["response"], r["weight"]) for r in sft] == [(THEFT_7.case_id, ans("盗窃", 7), 1.0)]
    assert summarise(outcomes)["kept_previous"] == 1 and summarise(outcomes)["coverage"] == 0.0
    assert summarise(outcomes)["trained_coverage"] == 0.5
    # no earlier data (round1, or the policy trained on nothing): as without it
    assert run(samples, tmp_path / "sft.jsonl", FilterParams(), tmp_path / "absent.jsonl")[0].kept == 0
    # earlier answers for a case this round does not have: another training set, an error naming the file
    files.write_jsonl(previous, [{"case_id": "f" * 64, "response": "r"}])
    with pytest.raises(files.InputError, match=r"previous.jsonl: field 'case_id': 1 case\(s\) not in"):
        run(samples, tmp_path / "sft2.jsonl", FilterParams(), previous)
    assert not (tmp_path / "sft2.jsonl").exists()
    files.write_jsonl(previous, [{"case_id": THEFT_7.case_id}])
    with pytest.raises(files.InputError, match=r"previous.jsonl: record 0: field 'response'"):
        run(samples, tmp_path / "sft2.jsonl", FilterParams(), previous)


@pytest.mark.slow
def test_stage_keeps_the_policys_training_data_in_a_later_round(tmp_path, monkeypatch):
    from lawshift.core import paths
    from stages import filter as stage

    monkeypatch.chdir(tmp_path)
    rounds = {"round1": {"policy": "base"}, "round2": {"policy": "round1", "keep_previous": True}}
    (tmp_path / "params.yaml").write_text(json.dumps({"rounds": rounds}), encoding="utf-8")
    r2 = paths.round_files("round2")
    files.write_jsonl(tmp_path / r2["samples"], [sample_line(THEFT_7, [ans("盗窃", 8)])])
    files.write_jsonl(tmp_path / R1["adapter"] / paths.TRAINED_ON,
                      [{"case_id": THEFT_7.case_id, "response": ans("盗窃", 7), "weight": 1.0}])
    stage.main("round2")
    assert json.loads((tmp_path / r2["filter_metrics"]).read_text("utf-8"))["kept_previous"] == 1
    rounds["round2"]["keep_previous"] = False
    (tmp_path / "params.yaml").write_text(json.dumps({"rounds": rounds}), encoding="utf-8")
    stage.main("round2")
    assert (tmp_path / r2["sft"]).read_text("utf-8") == ""  # this round's answers only: none right


@pytest.mark.parametrize("text", ["a  b", " a b ", "a\n\tb", "a b"])
def test_normalize_whitespace(text):
    assert normalize_whitespace(text) == "a b"


def sample_line(case: Case, texts: list[str], **override) -> dict:
    """A samples.jsonl record; an override of None removes the key."""
    rec = {"index": 0, "case_id": case.case_id, **case.to_dict(), "prompt": "P",
           "answers": [{"text": t, "num_tokens": 3, "finished": True, "parse": None} for t in texts]}
    rec.update(override)
    return {k: v for k, v in rec.items() if v is not None}


BAD_RECORDS = [
    ({"answers": None}, "answers", "missing"),
    ({"answers": "x"}, "answers", "must be a list"),
    ({"answers": [{"num_tokens": 1}]}, "answers[0]", "string 'text'"),
    ({"answers": [{"text": "x"}]}, "answers[0].finished", "missing"),
    ({"answers": [{"text": "x", "finished": "yes"}]}, "answers[0].finished", "must be true or false"),
    ({"prompt": None}, "prompt", "missing"),
    ({"case_id": 3}, "case_id", "must be a string"),
    ({"prison_time": "7"}, "prison_time", "integer"),
    ({"fact": ""}, "fact", "non-empty"),
    ({"first_draws": 2}, "first_draws", r"integer in \[0, 0\]"),
    ({"first_draws": True}, "first_draws", "integer"),
]


@pytest.mark.parametrize("override, field, message", BAD_RECORDS)
def test_bad_sample_record_names_record_and_field(tmp_path, override, field, message):
    path = tmp_path / "samples.jsonl"
    files.write_jsonl(path, [sample_line(THEFT_7, [ans("盗窃", 7)]), sample_line(THEFT_7, [], **override)])
    with pytest.raises(files.InputError, match=rf"samples.jsonl: record 1: field '{re.escape(field)}'.*{message}"):
        run(path, tmp_path / "sft.jsonl", FilterParams())
    assert not (tmp_path / "sft.jsonl").exists()  # no half-written output


def test_read_sampled_case_roundtrip():
    got = read_sampled_case(sample_line(INNOCENT, ["a", "b"]), "s.jsonl", 0)
    assert got == SampledCase(INNOCENT.case_id, INNOCENT, "P", ("a", "b"), (True, True), 2)
    assert read_sampled_case(sample_line(INNOCENT, ["a", "b"], first_draws=1), "s.jsonl", 0).first_draws == 1


def test_corrupt_and_empty_samples_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(sample_line(THEFT_7, [])) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(files.InputError, match=r"samples.jsonl:2: corrupt JSONL line"):
        run(path, tmp_path / "sft.jsonl", FilterParams())
    path.write_text("", encoding="utf-8")
    with pytest.raises(files.InputError, match="no sampled cases"):
        run(path, tmp_path / "sft.jsonl", FilterParams())
    assert not (tmp_path / "sft.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("raw, field, message", [
    ({"weighting": "sqrt"}, "filter.weighting", "unknown weighting 'sqrt', expected one of ('inverse_n', 'uniform')"),
    ({"term_tolerance": -1}, "filter.term_tolerance", "must be >= 0, got -1")])
def test_stage_rejects_bad_params(tmp_path, monkeypatch, capsys, raw, field, message):
    from stages import filter as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({"filter": raw}), encoding="utf-8")
    files.write_jsonl(tmp_path / R1["samples"], [sample_line(THEFT_7, [ans("盗窃", 7)])])
    with pytest.raises(SystemExit) as exc:
        files.run_stage(stage.main)
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"error: params.yaml: field '{field}': {message}\n"
    # refused before any work: nothing written
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        R1["samples"], "params.yaml"]


@pytest.mark.slow
def test_stage_writes_sft_metrics_and_plot(tmp_path, monkeypatch):
    from stages import filter as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("filter:\n  term_tolerance: 1\n", encoding="utf-8")
    files.write_jsonl(tmp_path / R1["samples"], [
        sample_line(THEFT_7, [ans("盗窃", 7), ans("盗窃", 8), ans("盗窃 ", 8), "nope"]),
        sample_line(MURDER_DEATH, [ans("故意杀人", "XT"), ans("故意杀人", 10001), ans("故意杀人", 240), "nope"]),
        sample_line(INNOCENT, [ans("盗窃", 7)] * 4),
    ])
    stage.main()
    sft = [json.loads(line) for line in (tmp_path / R1["sft"]).read_text("utf-8").splitlines()]
    assert [(r["prison_time"], r["response"], r["weight"]) for r in sft] == [
        (7, ans("盗窃", 7), 0.5), (7, ans("盗窃", 8), 0.5), (DEATH, ans("故意杀人", "XT"), 1.0)]
    metrics = json.loads((tmp_path / R1["filter_metrics"]).read_text("utf-8"))
    assert {k: metrics[k] for k in ("total_accepted", "sft_examples", "duplicates_removed",
                                    "samples_with_no_correct")} == {
        "total_accepted": 4, "sft_examples": 3, "duplicates_removed": 1, "samples_with_no_correct": 1}
    assert metrics["format_error_rate"] == pytest.approx(2 / 12, abs=1e-6)
    # the results only: the stage's time and memory go to its own file
    assert set(metrics) == set(summarise([]))
    timing = json.loads((tmp_path / R1["filter_time"]).read_text("utf-8"))
    assert timing["wall_seconds"] >= 0 < timing["peak_rss_mb"] and not set(timing) & set(metrics)
    with open(tmp_path / R1["filter_plot"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"accepted": str(k), "cases": str(c)} for k, c in enumerate([1, 1, 0, 1, 0])]
