"""The SFT data side (lawshift/train/sftdata.py): outputs/sft.jsonl read and validated, encoded with the prompt masked
and
`<|im_end|>` trained, over-long answers dropped with their case's weight kept, and the Trainer's dataset and collator.

`make_records` and `write_jsonl` are also used by tests/train/test_objective.py and tests/train/test_training.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import JUDGE, SAMPLE

from lawshift.core.files import InputError
from lawshift.task.answers import format_answer
from lawshift.task.data import ArticleLookup, load_articles, training_cases
from lawshift.task.prompts import render_prompt
from lawshift.train.examples import IGNORE, collate, end_of_turn_id
from lawshift.train.sftdata import Collator, SftDataset, SftRecord, build_examples, filter_metrics_of, read_sft


def make_records(tokenizer, counts: list[int]) -> list[dict]:
    """sft.jsonl records for the first len(counts) real training cases: case k has counts[k] accepted answers."""
    cases = training_cases(SAMPLE)
    arts_path = SAMPLE / "criminal_law_articles.json"
    lookup = ArticleLookup(load_articles(arts_path), str(arts_path))
    records = []
    for k, n in enumerate(counts):
        case = cases[k]
        arts = lookup.for_case(case, k)
        prompt = render_prompt(tokenizer, JUDGE.messages(case.fact, arts))
        for j in range(n):
            # distinct answers, like sampled ones: the reasoning and the term differ
            response = f"<think>依据法条，量刑第{j}种。</think>{format_answer(case.charge, case.prison_time + j)}"
            records.append({**case.to_dict(), "case_id": case.case_id, "prompt": prompt, "response": response,
                            "num_correct_for_this_sample": n, "weight": 1 / n})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def sft_records(tokenizer, counts: list[int]) -> list[SftRecord]:
    return [SftRecord(r["case_id"], r["prompt"], r["response"], r["weight"]) for r in make_records(tokenizer, counts)]


# ---- reading outputs/sft.jsonl ---------------------------------------------------------------------------------

GOOD = {"case_id": "c1", "prompt": "p", "response": "r", "weight": 0.5}
BAD_RECORDS = [
    ([1, 2], None, "expected an object"),
    ({k: v for k, v in GOOD.items() if k != "weight"}, "weight", "missing"),
    ({**GOOD, "weight": 0}, "weight", "positive finite"),
    ({**GOOD, "weight": -0.5}, "weight", "positive finite"),
    ({**GOOD, "weight": True}, "weight", "positive finite"),
    ({**GOOD, "weight": float("nan")}, "weight", "positive finite"),
    ({**GOOD, "weight": float("inf")}, "weight", "positive finite"),
    ({**GOOD, "weight": "1"}, "weight", "positive finite"),
    ({**GOOD, "prompt": ""}, "prompt", "non-empty str"),
    ({**GOOD, "prompt": "   "}, "prompt", "non-empty str"),
    ({**GOOD, "response": 3}, "response", "non-empty str"),
    ({k: v for k, v in GOOD.items() if k != "case_id"}, "case_id", "missing"),
]


@pytest.mark.parametrize("bad,field,message", BAD_RECORDS)
def test_read_sft_names_file_line_and_field(tmp_path, bad, field, message):
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD, bad])
    with pytest.raises(InputError) as err:
        read_sft(path)
    text = str(err.value)
    assert f"{path}:2" in text and message in text
    if field:
        assert f"field '{field}'" in text
    assert "\n" not in text  # the one-line error a stage prints


def test_read_sft_reads_valid_records(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD, {**GOOD, "case_id": "c2", "weight": 2}])
    assert read_sft(path) == [SftRecord("c1", "p", "r", 0.5), SftRecord("c2", "p", "r", 2.0)]
    assert isinstance(read_sft(path)[1].weight, float)


def test_the_filter_metrics_beside_a_rounds_sft_data():
    from lawshift.core import paths

    assert filter_metrics_of(paths.round_files("round1")["sft"]) == "metrics/round1/filter.json"
    assert filter_metrics_of(Path("/x") / paths.round_files("round2")["sft"]) == "metrics/round2/filter.json"
    assert filter_metrics_of("/tmp/sft.jsonl") == "the filter's metrics"


def test_read_sft_empty_points_at_filter_metrics(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [])
    with pytest.raises(InputError, match=r"sft\.jsonl: no accepted answers.*the filter.s metrics"):
        read_sft(path)


# ---- encoding --------------------------------------------------------------------------------------------------


def test_prompt_is_masked_and_end_of_turn_is_trained(tiny):
    tokenizer = tiny.tokenizer
    recs = sft_records(tokenizer, [2, 1])
    data = build_examples(tokenizer, recs, max_length=4096)
    assert (data.records, data.cases, data.dropped_too_long, data.dropped_cases) == (3, 2, 0, 0)
    im_end = end_of_turn_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(im_end) == "<|im_end|>"
    for rec, ex in zip(recs, data.examples, strict=True):
        n_prompt = len(tokenizer(rec.prompt, add_special_tokens=False)["input_ids"])
        answer = tokenizer(rec.response, add_special_tokens=False)["input_ids"] + [im_end]
        assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
        assert ex.labels[n_prompt:] == answer == ex.input_ids[n_prompt:]
        assert ex.labels[-1] == im_end
        assert (ex.weight, ex.group) == (rec.weight, rec.case_id)
    batch = collate(data.examples, tokenizer.pad_token_id)
    short = min(range(len(data.examples)), key=lambda i: len(data.examples[i]))
    pad_from = len(data.examples[short])
    if pad_from < batch["labels"].shape[1]:
        assert (batch["labels"][short, pad_from:] == IGNORE).all()
        assert (batch["attention_mask"][short, pad_from:] == 0).all()


def test_too_long_answers_are_dropped_and_their_case_keeps_its_weight(tiny):
    tokenizer = tiny.tokenizer
    recs = sft_records(tokenizer, [8, 1])
    # same prompt for case A: make two of its answers longer than the limit
    limit = max(len(tokenizer(r.prompt + r.response)["input_ids"]) for r in recs) + 8
    recs[0] = replace(recs[0], response=recs[0].response + "很长" * limit)
    recs[1] = replace(recs[1], response=recs[1].response + "很长" * limit)
    data = build_examples(tokenizer, recs, max_length=limit)
    assert (data.dropped_too_long, data.dropped_cases, len(data.examples), data.cases) == (2, 0, 7, 2)
    assert all(len(e) <= limit for e in data.examples)  # dropped, never cut
    totals = {}
    for e in data.examples:
        totals[e.group] = totals.get(e.group, 0) + e.weight
    assert sorted(totals.values()) == pytest.approx([1.0, 1.0])
    assert data.weight_sum == pytest.approx(2.0)
    with pytest.raises(InputError, match=r"field 'train.max_length'.*all 9 accepted answers are longer than 10"):
        build_examples(tokenizer, recs, max_length=10)


def test_case_whose_answers_are_all_too_long_is_dropped(tiny):
    tokenizer = tiny.tokenizer
    recs = sft_records(tokenizer, [2, 1])
    limit = max(len(tokenizer(r.prompt + r.response)["input_ids"]) for r in recs) + 8
    recs[2] = replace(recs[2], response=recs[2].response + "很长" * limit)  # case B's only answer
    data = build_examples(tokenizer, recs, max_length=limit)
    assert (data.records, data.cases, data.dropped_too_long, data.dropped_cases) == (3, 1, 1, 1)
    assert {e.group for e in data.examples} == {recs[0].case_id}
    assert data.weight_sum == pytest.approx(1.0)


# ---- what the Trainer reads ------------------------------------------------------------------------------------


def test_dataset_and_collator_give_the_batch_collate_gives(tiny):
    tokenizer = tiny.tokenizer
    examples = build_examples(tokenizer, sft_records(tokenizer, [2, 1]), max_length=4096).examples
    dataset = SftDataset(examples)
    assert len(dataset) == 3
    item = dataset[2]
    assert set(item) == {"input_ids", "labels", "weight", "group"}  # input_ids: what length grouping reads
    assert (item["input_ids"], item["labels"], item["weight"]) == (examples[2].input_ids, examples[2].labels, 1.0)
    batch = Collator(tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    expected = collate(examples, tokenizer.pad_token_id)
    assert set(batch) == set(expected) == {"input_ids", "attention_mask", "labels", "weights"}
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
