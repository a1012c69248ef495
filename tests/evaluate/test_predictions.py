"""Tests for lawshift.evaluate.predictions: the spool puts batch-order answers back in prompt order, and one pass over
it
writes the predictions and everything the metrics, report and term-error plot need, as from all records at once."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lawshift.core import files
from lawshift.evaluate import evalmetrics
from lawshift.evaluate.evaluation import EvalItem, score_answer
from lawshift.evaluate.predictions import EXAMPLES, Spool, write_predictions
from lawshift.evaluate.report import term_error_plot, term_error_table
from lawshift.task.data import Case

THEFT = Case("x", [], "盗窃", 24)
ANSWERS = ["<answer> 盗窃 | 24 </answer>", "<answer> 盗窃 | 30 </answer>", "<answer> 不违规 </answer>",
           "没写完", "<answer> 诈骗 | 500 </answer>", "<answer> 盗窃 | 18 </answer>", "<think>| \n</think>"]


def items() -> list[EvalItem]:
    out = [EvalItem(f"{folder}/{split}/{i}", folder, label, split, i, THEFT, "")
           for folder, label in (("action_explicit_extend", "V"), ("term_up", "TU"))
           for split in ("original", "poisoned") for i in range(4)]
    return out + [EvalItem(f"train/{i}", None, None, "train", i, THEFT, "") for i in range(3)]


def scored(its: list[EvalItem], k: int, seed: int = 0) -> list[list[dict]]:
    """Each item's k records, answers drawn from ANSWERS by a seeded choice; `finished` varies too."""
    rng = random.Random(seed)
    return [[score_answer(it, rng.choice(ANSWERS), j, 36, 120) | {"finished": rng.random() < 0.8, "num_tokens": 9}
             for j in range(k)] for it in its]


def spooled(tmp_path: Path, its: list[EvalItem], per_item: list[list[dict]], batch: int = 4) -> Spool:
    """The records added as eval adds them: in batches, longest first, i.e. in no useful order."""
    spool = Spool([it.id for it in its], tmp_path)
    order = list(range(len(its)))
    random.Random(1).shuffle(order)
    for s in range(0, len(order), batch):
        spool.add([r for i in order[s:s + batch] for r in per_item[i]])
    return spool


@pytest.mark.parametrize("k", [1, 3])
def test_one_pass_writes_what_all_records_give(tmp_path, k):
    its = items()
    per_item = scored(its, k)
    records = [r for rs in per_item for r in rs]
    spool = spooled(tmp_path / "spool", its, per_item)
    assert list(spool) == per_item  # back in item order, and again on a second pass
    got = write_predictions(tmp_path / "p.jsonl", spool, k)
    files.write_jsonl(tmp_path / "all.jsonl", records)
    assert (tmp_path / "p.jsonl").read_bytes() == (tmp_path / "all.jsonl").read_bytes()
    assert got.metrics == evalmetrics.compute_metrics(records, k) and got.answers == len(records)
    assert got.examples == [r for r in records if r["parse"] is None][:EXAMPLES] and len(got.examples) == EXAMPLES
    assert term_error_table(got.errors).equals(term_error_plot(records)) and len(got.errors) >= 2
    assert list((tmp_path / "spool").iterdir()) == []  # the spool's file has no name: nothing to clean up
    spool.close()


def test_header_first_and_no_file_after_a_failure(tmp_path):
    its = items()[:2]
    per_item = scored(its, 2)
    write_predictions(tmp_path / "s.jsonl", per_item, 2, head={"eval_shard": {"index": 0}})
    lines = (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"eval_shard": {"index": 0}} and [json.loads(x) for x in lines[1:]] == [
        r for rs in per_item for r in rs]

    def failing():
        yield per_item[0]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_predictions(tmp_path / "f.jsonl", failing(), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]  # no half-written file, no temp


def test_a_prompt_never_answered_is_an_error(tmp_path):
    its = items()[:3]
    spool = Spool([it.id for it in its], tmp_path)
    spool.add([r for rs in scored(its[:2], 1) for r in rs])
    with pytest.raises(RuntimeError, match="no answers for prompt action_explicit_extend/original/2"):
        list(spool)


def test_builder_takes_prompts_one_at_a_time(tmp_path):
    """MetricsBuilder over prompts in item order equals compute_metrics over the records in any order."""
    its = items()
    per_item = scored(its, 3, seed=5)
    builder = evalmetrics.MetricsBuilder(3)
    for rs in per_item:
        builder.add(list(reversed(rs)))  # draws are put in order by the builder
    records = [r for rs in per_item for r in rs]
    random.Random(2).shuffle(records)
    assert builder.result() == evalmetrics.compute_metrics(
        sorted(records, key=lambda r: [it.id for it in its].index(r["id"])), 3)
