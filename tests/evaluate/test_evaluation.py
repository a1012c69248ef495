"""Tests for lawshift.evaluate.evaluation and stage `eval`: scoring, metrics from hand-made predictions, prompts from
both
articles shapes, resumable generation, and the stage end to end on the tiny model (base and base + adapter),
including `dvc metrics diff` between two committed experiments."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import EV, FOLDER, JUDGE, REPO, CountingTokenizer, read_json, run, sample_tokenizer, set_params

from lawshift.core import models, paths
from lawshift.core.files import InputError
from lawshift.core.params import load_params
from lawshift.engines.generation import GenerationSettings
from lawshift.engines.hf_backend import HFBackend
from lawshift.evaluate import evalmetrics as evm
from lawshift.evaluate import evaluation as ev
from lawshift.task import prompts
from lawshift.task.answers import LIFE, NO_VIOLATION
from lawshift.task.data import Case, discover_folders

LOW, HIGH = 36, 120

# One folder per label type (names from the benchmark's label.json).
LABEL_FOLDER = {"V": "action_explicit_extend", "NV": "subject_reallocated_reduce", "TU": "term_up",
                "TD": "term_down", "XT": "term_extremity_in", "NX": "term_extremity_out"}
THEFT_24 = Case("事实甲", ("264-0-0",), "盗窃", 24)
HARM_60 = Case("事实乙", ("234-0-0",), "故意伤害", 60)
ROBBERY_48 = Case("事实丙", ("263-0-0",), "抢劫", 48)
MURDER_180 = Case("事实丁", ("232-0-0",), "故意杀人", 180)
MURDER_LIFE = Case("事实戊", ("232-0-0",), "故意杀人", LIFE)


def ans(body: str) -> str:
    return f"<think>推理</think><answer> {body} </answer>"


# (label, split, index, sample, gold, answer text, success, charge_correct, term_exact, term_error)
# Hand-scored with term_low=36, term_high=120. Gold checks apply to the original split only.
PREDICTIONS = [
    ("V", "original", 0, 0, THEFT_24, ans("盗窃 | 24"), True, True, True, 0),
    ("V", "original", 1, 0, THEFT_24, ans("抢劫 | 30"), True, False, False, 6),
    ("V", "poisoned", 0, 0, THEFT_24, ans(NO_VIOLATION), False, None, None, None),
    ("V", "poisoned", 1, 0, THEFT_24, "没有答案", False, None, None, None),
    ("NV", "original", 0, 0, THEFT_24, ans("盗窃罪 | 24"), True, True, True, 0),
    ("NV", "poisoned", 0, 0, THEFT_24, ans(NO_VIOLATION), True, None, None, None),
    ("TU", "original", 0, 0, HARM_60, ans("故意伤害 | 60"), True, True, True, 0),
    ("TU", "original", 1, 0, HARM_60, ans("故意伤害 | 12"), False, True, False, -48),
    ("TU", "poisoned", 0, 0, HARM_60, ans("故意伤害 | 120"), True, None, None, None),
    ("TU", "poisoned", 1, 0, HARM_60, ans("故意伤害 | 119"), False, None, None, None),
    ("TD", "original", 0, 0, ROBBERY_48, ans("抢劫 | XT"), False, True, False, None),
    ("TD", "poisoned", 0, 0, ROBBERY_48, ans("抢劫 | 36"), True, None, None, None),
    ("XT", "original", 0, 0, MURDER_180, ans("故意杀人 | 120"), True, True, False, -60),
    ("XT", "poisoned", 0, 0, MURDER_180, ans("故意杀人 | 无期徒刑"), True, None, None, None),
    # two sampled answers per prompt: their success is averaged before the prompts are
    ("NX", "original", 0, 0, MURDER_LIFE, ans("故意杀人 | XT"), True, True, True, None),
    ("NX", "original", 0, 1, MURDER_LIFE, ans("故意杀人 | 240"), False, True, False, None),
    ("NX", "poisoned", 0, 0, MURDER_LIFE, ans("故意杀人 | 36"), True, None, None, None),
    ("NX", "poisoned", 0, 1, MURDER_LIFE, "<think>没写完", False, None, None, None),
    # train-set check: exact answers; not part of the LawShift figures (format_valid included)
    (None, "train", 3, 0, THEFT_24, ans("盗窃 | 24"), True, None, None, None),
    (None, "train", 5, 0, THEFT_24, "胡言乱语", False, None, None, None),
]


def item_for(label, split, index, case) -> ev.EvalItem:
    folder = LABEL_FOLDER[label] if label else None
    pid = f"{folder}/{split}/{index}" if folder else f"train/{index}"
    return ev.EvalItem(pid, folder, label, split, index, case, prompt="")


CUT = "<think>没写完"  # the one answer that stopped at the length limit


def hand_records() -> list[dict]:
    return [ev.score_answer(item_for(label, split, i, case), text, j, LOW, HIGH) | {"finished": text != CUT}
            for label, split, i, j, case, text, *_ in PREDICTIONS]


@pytest.mark.parametrize("row", PREDICTIONS, ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}-{r[3]}")
def test_score_answer(row):
    label, split, i, j, case, text, success, charge_ok, term_ok, err = row
    rec = ev.score_answer(item_for(label, split, i, case), text, j, LOW, HIGH)
    assert (rec["success"], rec["charge_correct"], rec["term_exact"], rec["term_error"]) == (
        success, charge_ok, term_ok, err)
    assert rec["answer"] == text and rec["sample"] == j and rec["case_id"] == case.case_id
    assert (rec["parse"] is None) == (text in ("没有答案", "<think>没写完", "胡言乱语"))


def _means(metrics: dict) -> dict:
    """The metrics less pass@k and majority vote (tested on their own below)."""
    if not isinstance(metrics, dict):
        return metrics
    return {k: _means(v) for k, v in metrics.items()
            if k not in ("pass_at_k", "majority", "train_pass_at_k", "train_majority", "pass_at")}


def test_pass_at_every_k_from_1_to_k():
    """pass@j for j = 1 .. k: pass@1 is the mean, pass@k the pass_at_k figure, and the curve never falls."""
    records = hand_records()
    records += [r | {"sample": 1} for r in records]  # two draws per prompt, the same answers
    records = [r | {"success": False} if r["sample"] == 1 and r["split"] == "train" else r for r in records]
    m = evm.compute_metrics(records)
    assert set(m["pass_at"]) == {"train", "original", "poisoned"} and m["k"] == 2
    assert m["pass_at"]["train"] == {"1": m["train_exact"], "2": m["train_pass_at_k"]}
    for split in ("original", "poisoned"):
        curve = m["pass_at"][split]
        assert curve["1"] == m["overall"][split] and curve["2"] == m["overall"]["pass_at_k"][split]
        assert curve["1"] <= curve["2"]


def test_compute_metrics_hand_made():
    full = evm.compute_metrics(hand_records())
    metrics = _means(full)
    # original: V 1+1, NV 1, TU 1+0, TD 0, XT 1, NX (1+0)/2 -> 5.5 of 8 prompts
    # poisoned: V 0+0, NV 1, TU 1+0, TD 1, XT 1, NX (1+0)/2 -> 4.5 of 8 prompts
    # format: 2 unparseable of 18 LawShift answers (the train answers do not count); truncated: 1 of 18 (NX)
    assert metrics == {
        "k": 1,  # the fewest answers a prompt has
        "overall": {"original": 0.6875, "poisoned": 0.5625, "gap": 0.125, "format_valid": round(16 / 18, 6),
                    "truncated": round(1 / 18, 6)},
        "by_label": {
            "NV": {"original": 1.0, "poisoned": 1.0, "gap": 0.0, "format_valid": 1.0, "truncated": 0.0, "n": 1},
            "NX": {"original": 0.5, "poisoned": 0.5, "gap": 0.0, "format_valid": 0.75, "truncated": 0.25, "n": 1},
            "TD": {"original": 0.0, "poisoned": 1.0, "gap": -1.0, "format_valid": 1.0, "truncated": 0.0, "n": 1},
            "TU": {"original": 0.5, "poisoned": 0.5, "gap": 0.0, "format_valid": 1.0, "truncated": 0.0, "n": 2},
            "V": {"original": 1.0, "poisoned": 0.0, "gap": 1.0, "format_valid": 0.75, "truncated": 0.0, "n": 2},
            "XT": {"original": 1.0, "poisoned": 1.0, "gap": 0.0, "format_valid": 1.0, "truncated": 0.0, "n": 1},
        },
        "folders": {
            "action_explicit_extend": {"label": "V", "original": 1.0, "poisoned": 0.0, "n": 2},
            "subject_reallocated_reduce": {"label": "NV", "original": 1.0, "poisoned": 1.0, "n": 1},
            "term_down": {"label": "TD", "original": 0.0, "poisoned": 1.0, "n": 1},
            "term_extremity_in": {"label": "XT", "original": 1.0, "poisoned": 1.0, "n": 1},
            "term_extremity_out": {"label": "NX", "original": 0.5, "poisoned": 0.5, "n": 1},
            "term_up": {"label": "TU", "original": 0.5, "poisoned": 0.5, "n": 2},
        },
        # charge: all original prompts but V/1 -> 7/8; exact term: V/0, NV/0, TU/0 and half of NX/0 -> 3.5/8
        "charge_accuracy": 0.875,
        "term_exact_accuracy": 0.4375,
        "train_exact": 0.5,
        "train_truncated": 0.0,
    }
    # k = 1: pass@1 is the mean; the majority vote differs where a prompt has two answers (NX): original, a tie
    # goes to the first answer (right); poisoned, the cut answer does not parse, so the one that parses decides
    assert full["overall"]["pass_at_k"] == {"original": 0.6875, "poisoned": 0.5625}
    assert full["overall"]["majority"] == {"original": 0.75, "poisoned": 0.625}
    assert full["folders"]["term_extremity_out"]["majority"] == {"original": 1.0, "poisoned": 1.0}
    assert full["train_pass_at_k"] == full["train_majority"] == 0.5
    # records that do not say whether they finished (a re-scored published log): no truncated share, not 0
    unknown = evm.compute_metrics([{k: v for k, v in r.items() if k != "finished"} for r in hand_records()])
    assert unknown["overall"]["truncated"] is None and unknown["train_truncated"] is None


def test_compute_metrics_unequal_splits_and_no_train():
    records = [r for r in hand_records() if r["split"] != "train" and r["id"] != "term_up/poisoned/1"]
    metrics = evm.compute_metrics(records)
    assert _means(metrics["folders"]["term_up"]) == {"label": "TU", "original": 0.5, "poisoned": 1.0, "n": 2,
                                                     "n_poisoned": 1}
    assert metrics["train_exact"] is None and metrics["train_pass_at_k"] is None and metrics["train_majority"] is None


@pytest.mark.parametrize("n,c,k,expected", [
    (3, 0, 3, 0.0), (3, 1, 3, 1.0), (3, 3, 3, 1.0),  # k = n: whether any draw succeeded
    (3, 1, 1, 1 / 3), (8, 5, 1, 5 / 8),  # k = 1: the mean
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
    (10, 7, 4, 1.0),  # fewer than k failures: every k-subset holds a success
])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert evm.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        evm.pass_at_k(n, c, k)


RIGHT, WRONG, OTHER = ans("盗窃 | 24"), ans("盗窃 | 30"), ans("抢劫 | 24")


def train_records(*prompts: list[str]) -> list[dict]:
    """Train-check records of THEFT_24 (gold 盗窃, 24 months), one prompt per list of answer texts, in draw order."""
    return [ev.score_answer(item_for(None, "train", i, THEFT_24), text, j, LOW, HIGH)
            for i, texts in enumerate(prompts) for j, text in enumerate(texts)]


@pytest.mark.parametrize("texts,expected", [
    ([RIGHT, WRONG, WRONG], False),  # the wrong answer has two votes
    ([WRONG, RIGHT, RIGHT], True),
    ([RIGHT, WRONG], True),  # a tie: the answer seen first
    ([WRONG, RIGHT], False),
    ([RIGHT, WRONG, OTHER, WRONG, RIGHT], True),  # 2-2-1: the first of the two leaders
    (["胡言乱语", WRONG, RIGHT, RIGHT], True),  # unparsed answers do not vote
    (["胡言乱语", "没有答案"], False),  # nothing parsed: no majority answer, a failure
    ([f"  {RIGHT}\n", WRONG, RIGHT], True),  # votes go by the parsed answer, not the text
])
def test_majority_vote(texts, expected):
    assert evm.majority_success(train_records(texts)) is expected


def test_mean_pass_at_k_and_majority_over_prompts():
    # three prompts of k = 3 draws: (right, wrong, wrong), (wrong, wrong, other), (right, right, wrong)
    records = train_records([RIGHT, WRONG, WRONG], [WRONG, WRONG, OTHER], [RIGHT, RIGHT, WRONG])
    m = evm.compute_metrics(records)
    assert m["k"] == 3
    assert m["train_exact"] == round((1 / 3 + 0 + 2 / 3) / 3, 6)
    assert m["train_pass_at_k"] == round(2 / 3, 6)  # two prompts with a right draw
    assert m["train_majority"] == round(1 / 3, 6)  # only the third prompt's majority is right
    # pass@2 from the same draws: 1 - C(2,2)/C(3,2) = 2/3 for one right of three, 1 for two right
    assert evm.compute_metrics(records, k=2)["train_pass_at_k"] == round((2 / 3 + 0 + 1) / 3, 6)
    # draw order decides ties only: shuffled records give the same figures
    assert evm.compute_metrics(list(reversed(records))) == m


GOLD_CHECKS = [
    # (answer text, gold, (charge right, exact term))
    (ans("盗窃 | 24"), THEFT_24, (True, True)),
    (ans("盗窃 | 25"), THEFT_24, (True, False)),
    (ans("V | 24"), THEFT_24, (False, True)),  # the short form names no charge
    (ans(NO_VIOLATION), THEFT_24, (False, False)),
    ("", THEFT_24, (False, False)),
    (ans("故意杀人 | XT"), MURDER_LIFE, (True, True)),
    (ans(NO_VIOLATION), Case("f", (), NO_VIOLATION, 0), (True, None)),
    (ans("盗窃 | 3"), Case("f", (), NO_VIOLATION, 0), (False, None)),
    (ans("盗窃 | 3"), Case("f", (), "", 0), (None, None)),
]


@pytest.mark.parametrize("text,gold,expected", GOLD_CHECKS)
def test_gold_checks(text, gold, expected):
    from lawshift.task.answers import parse_answer

    assert ev.gold_checks(parse_answer(text), gold) == expected


def test_train_subset_is_seeded_and_fixed():
    a = ev.train_subset_indices(62, 8, seed=42)
    assert a == ev.train_subset_indices(62, 8, seed=42) == sorted(a) and len(set(a)) == 8
    assert a != ev.train_subset_indices(62, 8, seed=43)
    assert ev.train_subset_indices(5, 8, seed=0) == [0, 1, 2, 3, 4]
    assert ev.train_subset_indices(62, 0, seed=0) == []


# ---------------------------------------------------------------------------------------------------------------
# Prompts and generation on the tiny model


@pytest.fixture(scope="module")
def backend(tiny) -> HFBackend:
    import torch

    return HFBackend(tiny.model, tiny.tokenizer, torch.device("cpu"))


def to_list_shape(path: Path) -> None:
    articles = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps([{"id": k, "content": v} for k, v in articles.items()], ensure_ascii=False),
                    encoding="utf-8")


def test_list_shaped_articles_give_same_prompts_and_predictions(data_copy, sample_root, tiny, backend):
    tok = tiny.tokenizer
    name = "action_explicit_extend"
    for split in ("original", "poisoned"):
        to_list_shape(data_copy / name / f"articles_{split}.json")
    assert isinstance(json.loads((data_copy / name / "articles_original.json").read_text()), list)
    obj, _ = ev.build_items(discover_folders(sample_root, [name]), tok, JUDGE)
    lst, _ = ev.build_items(discover_folders(data_copy, [name]), tok, JUDGE)
    assert [(i.id, i.prompt) for i in obj] == [(i.id, i.prompt) for i in lst]
    assert len(obj) == 80 and "354-0-0" in obj[0].prompt
    picks = [0, 1, 40, 41]  # two cases of each split
    settings = GenerationSettings(max_new_tokens=48)
    runs = [list(ev.generate_records(backend, [[items[k] for k in picks]], settings, ev.item_seeds(items, 0), LOW,
                                     HIGH)) for items in (obj, lst)]
    assert runs[0] == runs[1]
    assert [r["answer"] for r in runs[0]] and all(r["answer"] for r in runs[0])


def test_poisoned_prompt_shows_old_statute_on_request(sample_root, tiny):
    tok = tiny.tokenizer
    folders = discover_folders(sample_root, ["action_explicit_extend"])
    plain = {i.id: i.prompt for i in ev.build_items(folders, tok, JUDGE)[0]}
    both = {i.id: i.prompt for i in ev.build_items(folders, tok, JUDGE, show_old_statute=True)[0]}
    new = folders[0].articles("poisoned")["354-0-0"]
    old = folders[0].articles("original")["354-0-0"]
    assert both["action_explicit_extend/original/3"] == plain["action_explicit_extend/original/3"]
    assert old not in plain["action_explicit_extend/poisoned/3"]
    assert old in both["action_explicit_extend/poisoned/3"] and new in both["action_explicit_extend/poisoned/3"]


def test_missing_articles_are_counted_or_refused(data_copy, tiny):
    tok = tiny.tokenizer
    (data_copy / "action_explicit_extend" / "articles_poisoned.json").write_text("{}", encoding="utf-8")
    folders = discover_folders(data_copy, ["action_explicit_extend"])
    items, missing = ev.build_items(folders, tok, JUDGE)
    assert missing == 40 and "354-0-0" not in items[40].prompt and "354-0-0" in items[0].prompt
    with pytest.raises(InputError, match=r"poisoned.json: record 0: field 'relevant_articles'"):
        ev.build_items(folders, tok, JUDGE, strict_articles=True)


def test_prompts_of_the_stage_and_the_context_guard(project, tiny):
    """`prompts`: both splits of the chosen folder, then the training subset, checked against the context before
    any weights load."""
    project(n_train=6, n_test=4)
    p = load_params()
    config = models.load_config(str(tiny.path))
    items, lengths, missing = ev.prompts(p, tiny.tokenizer, config)
    assert [it.id for it in items][:8] == [f"{FOLDER}/{s}/{i}" for s in ("original", "poisoned") for i in range(4)]
    assert [it.split for it in items[8:]] == ["train", "train"] and missing == 0
    assert lengths == [len(tiny.tokenizer(it.prompt, add_special_tokens=False)["input_ids"]) for it in items]
    p.eval.max_new_tokens = 4000
    with pytest.raises(InputError, match=r"params.yaml: field 'eval.max_new_tokens'.*context is 2048"):
        ev.prompts(p, tiny.tokenizer, config)
    p.eval.max_new_tokens = 2048 - max(lengths)  # exactly fills the context: allowed
    ev.prompts(p, tiny.tokenizer, config)


def test_prompt_lengths_never_hold_every_token_list(monkeypatch):
    """The stage's prompt lengths come a chunk of prompts at a time (task.prompts.token_lengths): tokenising them
    all in one call kept every token list, ~45 KB a prompt at full LawShift size (benchmarks/driver.py)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(prompts, "LENGTH_CHUNK", 32)
    tok = CountingTokenizer(sample_tokenizer())
    items, lengths, missing = ev.prompts(load_params(REPO / "params.yaml"), tok, SimpleNamespace(
        max_position_embeddings=1 << 20))
    assert len(items) == 2 * 80 + 62 and missing == 0
    assert tok.calls and max(tok.calls) <= 32 and sum(tok.calls) == len(items)
    assert lengths == [len(tok.inner(it.prompt, add_special_tokens=False)["input_ids"]) for it in items]


class CountingBackend:
    """The real tiny backend, counting the prompts it is asked to answer."""

    name = "hf"

    def __init__(self, inner):
        self.inner, self.prompts = inner, 0

    def generate(self, prompts, settings, seeds):
        self.prompts += len(prompts)
        return self.inner.generate(prompts, settings, seeds)


def test_interrupted_run_resumes_to_same_records(sample_root, tiny, backend, tmp_path, capsys):
    items = ev.build_items(discover_folders(sample_root, ["action_implicit_expand"]), tiny.tokenizer, JUDGE)[0][::8]
    assert len(items) == 10
    groups = ev.batches(items, [len(i.prompt) for i in items], batch_size=4)
    settings = GenerationSettings(n=2, temperature=0.8, top_p=0.95, max_new_tokens=24)
    seeds = ev.item_seeds(items, 7)
    whole = list(ev.generate_records(backend, groups, settings, seeds, LOW, HIGH))
    assert len(whole) == 2 * len(items)

    path = tmp_path / "p.jsonl.partial"
    partial = ev.PartialLog(path, {"run": 1})
    assert partial.journal.path == path
    run_ = ev.generate_records(backend, groups, settings, seeds, LOW, HIGH, partial)
    first = [next(run_) for _ in range(2 * len(groups[0]))]  # interrupted after the first batch
    run_.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"batch": 1, "records": [{"id"')  # a batch torn by the interruption
    counting = CountingBackend(backend)
    resumed = list(ev.generate_records(counting, groups, settings, seeds, LOW, HIGH, partial))
    assert resumed == whole and first == whole[:len(first)]
    assert counting.prompts == len(items) - len(groups[0])
    assert "dropped a torn last line" in capsys.readouterr().err
    partial.journal.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(groups)  # the header, then each batch once
    assert [json.loads(line)["batch"] for line in lines[1:]] == list(range(len(groups)))

    # a corrupt line is an error naming it, never skipped
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"p.jsonl.partial:2"):
        ev.PartialLog(path, {"run": 1}).load()
    for bad, why in (("[1, 2]", "a record must be a JSON object"), ('{"batch": "0", "records": []}',
                                                                   "not a batch of records")):
        path.write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n", encoding="utf-8")
        with pytest.raises(InputError, match=rf"p.jsonl.partial:2: {why}"):
            ev.PartialLog(path, {"run": 1}).load()

    # other inputs: nothing is reused, and stderr says which setting changed
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert ev.PartialLog(path, {"run": 1}).load().keys() == set(range(len(groups)))
    stale = ev.PartialLog(path, {"run": 2})
    assert stale.load() == {}
    assert "written with different settings (run); starting afresh" in capsys.readouterr().err
    stale.remove()
    assert not path.exists()


def test_answer_all_resumes_into_item_order(sample_root, tiny, backend, tmp_path):
    """The stage's path: the journal's batches, then the rest, spooled and read back in item order."""
    items = ev.build_items(discover_folders(sample_root, ["action_implicit_expand"]), tiny.tokenizer, JUDGE)[0][::8]
    groups = ev.batches(items, [len(i.prompt) for i in items], batch_size=3)
    settings = GenerationSettings(n=2, temperature=0.8, top_p=0.95, max_new_tokens=16)
    seeds = ev.item_seeds(items, 3)
    whole = list(ev.generate_records(backend, groups, settings, seeds, LOW, HIGH))
    by_item = [[r for r in whole if r["id"] == it.id] for it in items]
    assert [it.id for it in groups[0]] != [it.id for it in items[:3]]  # batches are not in item order

    partial = ev.PartialLog(tmp_path / "p.partial", {"run": 1})
    assert partial.load() == {}
    next(ev.new_groups(backend, groups, settings, seeds, LOW, HIGH, partial))  # interrupted after one batch
    partial.journal.close()
    counting = CountingBackend(backend)
    partial = ev.PartialLog(tmp_path / "p.partial", {"run": 1})
    spool = ev.answer_all(counting, items, groups, settings, seeds, LOW, HIGH, partial, tmp_path / "out")
    assert list(spool) == by_item and counting.prompts == len(items) - len(groups[0])
    spool.close()


# ---------------------------------------------------------------------------------------------------------------
# Stage eval end to end


def stage_main():
    """main() of stages/eval.py, run in-process (the tiny model loads in a fraction of a second this way)."""
    spec = importlib.util.spec_from_file_location("stage_eval", REPO / "stages" / "eval.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage.main


# The stage on one whole folder (40 cases a split) and 4 training cases, 20 prompts a batch.
STAGE = {"n_train": 6, "n_test": 40, "params": {"eval": {"train_subset": 4, "batch_size": 20}}}


def set_eval(**changes) -> None:
    set_params(Path.cwd(), {"eval": changes})
    load_params()  # still valid


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_stage_base_then_sft(project):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    project(**STAGE)
    base = EV["base"]
    main = stage_main()
    main("base")
    metrics = read_json(base["metrics"])
    assert set(metrics) == {"k", "overall", "by_label", "folders", "charge_accuracy", "term_exact_accuracy",
                            "train_exact", "train_pass_at_k", "train_majority", "train_truncated", "pass_at"}
    assert set(metrics["overall"]) == {"original", "poisoned", "gap", "pass_at_k", "majority", "format_valid",
                                       "truncated"}
    assert metrics["k"] == 1 and metrics["train_pass_at_k"] == metrics["train_majority"] == metrics["train_exact"]
    assert metrics["folders"]["action_explicit_extend"]["n"] == 40 and metrics["overall"]["format_valid"] > 0.5
    preds = read_jsonl(base["predictions"])
    assert len(preds) == 84 and {p["split"] for p in preds} == {"original", "poisoned", "train"}
    assert preds == sorted(preds, key=lambda p: (p["split"] == "train", p["split"], p["index"]))
    assert evm.compute_metrics(preds) == metrics
    report = Path(base["report"]).read_text()
    assert "| action_explicit_extend | V" in report.replace("  ", " ").replace("  ", " ")
    assert "84 prompts, 1 answer(s) each; 0 cited article id(s) not found" in report
    assert Path(base["folders_plot"]).read_text().startswith("bar,folder,split,accuracy\n")
    assert Path(base["term_errors_plot"]).read_text().startswith("term_error_months,answers,share\n")
    assert not Path(base["predictions"] + ".partial").exists()
    # the stage's time in its own file (metrics/time/base/eval.json), none of it in the metrics
    timing = read_json(base["time"])
    assert base["time"] == "metrics/time/base/eval.json" and {"wall_seconds", "peak_rss_mb"} <= set(timing)
    assert not set(timing) & set(metrics)
    assert timing["wall_seconds"] > 0 and not Path("metrics/eval_base_time.json").exists()

    main("base")  # greedy: a rerun reproduces the metrics exactly
    assert read_json(base["metrics"]) == metrics

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(paths.BASE)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(EV["round1"]["adapter"])
    main("round1")
    sft = read_jsonl(EV["round1"]["predictions"])
    assert [p["id"] for p in sft] == [p["id"] for p in preds]
    assert [p["answer"] for p in sft] != [p["answer"] for p in preds]  # the adapter was applied
    for key in ("metrics", "report", "folders_plot", "term_errors_plot", "time"):
        assert Path(EV["round1"][key]).is_file(), key
    assert read_json(base["metrics"]) == metrics  # eval@round1 writes only its own files


@pytest.mark.slow
@pytest.mark.parametrize("name,match", [("nope", "unknown model 'nope'"),
                                        ("round1", "no adapter_model.safetensors")])
def test_stage_refuses_bad_model(project, name, match):
    project()
    with pytest.raises(InputError, match=match):
        stage_main()(name)
    assert not Path("metrics").exists() and not Path("outputs").exists()


@pytest.mark.slow
def test_stage_refuses_prompt_beyond_context(project):
    project()
    set_eval(max_new_tokens=4000)
    with pytest.raises(InputError, match="eval.max_new_tokens.*context is 2048"):
        stage_main()("base")
    assert not Path("metrics").exists() and not Path("outputs").exists()


def git_commit(root: Path, message: str, *files: str) -> None:
    run(["git", "add", *files], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message], root)


@pytest.mark.slow
def test_dvc_metrics_diff_between_experiments(project):
    """Two experiments committed one after the other: `dvc metrics diff` lists the overall figures."""
    root = project(dvc=True, **STAGE)
    main = stage_main()
    main("base")
    before = read_json(EV["base"]["metrics"])
    git_commit(root, "exp 1", "dvc.yaml", "params.yaml", EV["base"]["metrics"])
    # Experiment 2: answers cut off after 4 tokens never parse, so both overall figures drop to 0.
    set_eval(max_new_tokens=4)
    main("base")
    after = read_json(EV["base"]["metrics"])
    assert after["overall"]["original"] == after["overall"]["poisoned"] == 0.0 < before["overall"]["original"]
    table = run(["dvc", "metrics", "diff"], root)
    rows = {line.split()[1]: line.split() for line in table.splitlines() if EV["base"]["metrics"] in line}
    for key in ("overall.original", "overall.poisoned"):
        assert key in rows, table
        assert float(rows[key][2]) == pytest.approx(before["overall"][key.split(".")[1]], abs=1e-4)
        assert float(rows[key][3]) == 0.0
    # the time file differs between the runs but is not a result: it is no row of the eval metrics
    assert not any(key.startswith(("wall_seconds", "peak_rss_mb")) for key in rows)
