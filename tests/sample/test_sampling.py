"""Tests for lawshift.sample.sampling and stages/sample.py: the partial file (the journal of lawshift/core/journal.py,
with the
case checks sampling adds), settings, records, batching, the results and time files, and a real Ctrl-C and SIGKILL in
the middle of a sampling run followed by a rerun."""

from __future__ import annotations

import copy
import dataclasses
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    ENV,
    JUDGE,
    R1,
    REPO,
    SAMPLE,
    CountingTokenizer,
    SeedLog,
    interrupt_when,
    read_json,
    sample_tokenizer,
    seeds,
    stage_cmd,
)

from lawshift.core.codedeps import code_digest
from lawshift.core.files import InputError, file_digest, json_digest
from lawshift.core.journal import header
from lawshift.core.params import SampleParams, load_params
from lawshift.engines.generation import (
    MAX_CASES,
    SEED_STRIDE,
    Completion,
    GenerationSettings,
    PromptResult,
    stream_seed,
)
from lawshift.engines.hf_backend import HFBackend
from lawshift.sample.samples import PartialFile, Tally, case_record, extra_record, parse_dict
from lawshift.sample.sampling import (
    SAMPLING_KEYS,
    Job,
    RunStats,
    build_prompts,
    case_prompts,
    longest_first,
    metrics,
    output_path,
    partial_path,
    run_info,
    run_settings,
    sample,
    shard_indices,
)
from lawshift.task import prompts
from lawshift.task.answers import Answer, parse_answer
from lawshift.task.data import ArticleLookup, load_articles, training_cases
from lawshift.task.scoring import is_correct

CASES = training_cases(SAMPLE)
CPU = torch.device("cpu")
RIGHT, WRONG = "<answer> 容留他人吸毒 | 7 </answer>", "<answer> 容留他人吸毒 | 70 </answer>"


# --- shards, seeds, order ----------------------------------------------------------------------------------------
# (the sample params' own rules are tests/core/test_params.py's RULES table: they fail at load)

@pytest.mark.parametrize("n_cases, shard, shards, expected", [
    (5, 0, 1, [0, 1, 2, 3, 4]), (5, 0, 2, [0, 2, 4]), (5, 1, 2, [1, 3]), (2, 1, 3, [1])])
def test_shards_split_the_cases(n_cases, shard, shards, expected):
    assert shard_indices(n_cases, SampleParams(shard_index=shard, num_shards=shards)) == expected


def test_empty_shard_is_a_param_error():
    with pytest.raises(InputError) as exc:
        shard_indices(2, SampleParams(shard_index=2, num_shards=3))
    assert str(exc.value) == "params.yaml: field 'sample.shard_index': shard 2 of 3 gets none of the 2 cases"


@pytest.mark.parametrize("out, shard, shards, expected", [
    (R1["samples"], 0, 1, "outputs/round1/samples.jsonl"),
    (R1["samples"], 1, 4, "outputs/round1/samples.shard1-of-4.jsonl"),
    (R1["sample_metrics"], 0, 2, "metrics/round1/sample.shard0-of-2.json"),
    (R1["sample_time"], 1, 2, "metrics/time/round1/sample.shard1-of-2.json"),
    (Path("/abs/x.jsonl"), 0, 1, "/abs/x.jsonl"),
])
def test_output_path_names_each_shards_file(out, shard, shards, expected):
    assert output_path(SampleParams(shard_index=shard, num_shards=shards), out) == Path(expected)


def test_partial_path():
    assert partial_path(Path(R1["samples"])) == Path("outputs/round1/samples.jsonl.partial")
    assert partial_path(Path("outputs/samples.shard1-of-4.jsonl")) == Path("outputs/samples.shard1-of-4.jsonl.partial")


def vllm_children(first: int, n: int) -> list[int]:
    """The seeds vLLM gives the n child requests of a request seeded `first` (vllm/v1/engine/parallel_sampling.py:
    child j gets seed + j; a single answer keeps the seed)."""
    return [first] if n == 1 else [first + j for j in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 42, 2**40 + 3])
def test_streams_never_collide_under_vllms_child_rule(seed):
    # 20,000 cases x 64 answers of one run: every (case, answer) its own stream, also as torch's CPU generator
    # (Mersenne Twister) sees a seed: by its low 32 bits only
    streams = [s for i in range(20000) for s in vllm_children(stream_seed(seed, i), 64)]
    assert len({s % 2**32 for s in streams}) == len(streams) == 20000 * 64
    assert all(0 <= stream_seed(seed, i) < 2**32 for i in (0, 1, MAX_CASES - 1))
    assert stream_seed(seed, 10) == stream_seed(seed, 10) != stream_seed(seed + 1, 10)
    for index in (-1, MAX_CASES):
        with pytest.raises(ValueError, match="case index"):
            stream_seed(seed, index)


def test_the_last_case_keeps_all_its_streams():
    # the top of the layout: the last case's last answer is still not another case's stream
    last = {s % 2**32 for s in vllm_children(stream_seed(0, MAX_CASES - 1), SEED_STRIDE)}
    first = {s % 2**32 for s in vllm_children(stream_seed(0, 0), SEED_STRIDE)}
    assert len(last) == SEED_STRIDE and not last & first


def test_a_round_samples_from_the_round_before_it_on_streams_of_its_own():
    from lawshift.core.params import params_from_dict
    from lawshift.sample.sampling import policy, streams

    p = params_from_dict({"rounds": {"round1": {}, "round2": {"policy": "round1"}, "round3": {"policy": "round2"}}})
    assert [policy(p, r) for r in p.rounds] == [None, "models/round1", "models/round2"]  # None: the base alone
    assert [streams(r) for r in p.rounds] == ["", "round2", "round3"]
    firsts = {r: {stream_seed(0, i, streams(r)) + j for i in range(62) for j in range(32)} for r in p.rounds}
    assert not firsts["round1"] & firsts["round2"] and not firsts["round2"] & firsts["round3"]
    assert stream_seed(0, 5, "") == stream_seed(0, 5)  # round 1 keeps the run's own streams
    with pytest.raises(InputError, match="no round 'round4'"):
        policy(p, "round4")


def test_prompt_lengths_never_hold_every_token_list(monkeypatch):
    """The stage's prompt lengths come a chunk of prompts at a time (task.prompts.token_lengths): tokenising all of a
    shard's prompts in one call kept every token list, ~40 KB a case at full LawShift size (benchmarks/driver.py)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(prompts, "LENGTH_CHUNK", 16)
    tok = CountingTokenizer(sample_tokenizer())
    p = load_params(REPO / "params.yaml", overrides={"sample": {"shard_index": 1, "num_shards": 2}})
    cases, indices, texts, lengths, lookup = case_prompts(p, tok)
    assert len(cases) == 62 and indices == list(range(1, 62, 2)) and lookup.missing == 0
    assert texts == build_prompts(cases, indices, lookup, tok.inner, SAMPLE / "training_set.json", JUDGE)
    assert tok.calls == [16, 15]
    assert lengths == [len(ids) for ids in tok.inner(texts, add_special_tokens=False)["input_ids"]]


def test_longest_first_keeps_prompts_with_their_cases():
    indices, prompts = longest_first([3, 4, 5], ["b", "ccc", "a"], [2, 3, 1])
    assert (indices, prompts) == ([4, 3, 5], ["ccc", "b", "a"])


# --- the partial file --------------------------------------------------------------------------------------------

def record(i: int, texts=(RIGHT, WRONG)) -> dict:
    comps = [Completion(t, 7, True) for t in texts]
    return case_record(i, CASES[i], f"prompt {i}", PromptResult(11, comps))


IDS = {i: CASES[i].case_id for i in range(6)}
SETTINGS = {"model": "m", "temperature": 0.8, "seed": 1}


def open_partial(path: Path, settings=SETTINGS, ids=IDS) -> tuple[PartialFile, Tally]:
    tally = Tally()
    return PartialFile(path, settings, ids, tally), tally


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_partial_header_append_and_resume(tmp_path, capsys):
    path = tmp_path / "samples.jsonl.partial"
    pf, tally = open_partial(path)
    assert pf.resumed == 0 and tally.cases == 0 and pf.done == {}
    assert json.loads(lines(path)[0]) == {"fingerprint": json_digest(SETTINGS), "settings": SETTINGS}
    assert path.read_bytes() == header(SETTINGS)  # the journal's header, nothing else yet
    pf.append([record(0), record(1)])
    pf.append([record(3)])
    pf.close()
    pf, tally = open_partial(path)
    assert sorted(pf.done) == [0, 1, 3] and pf.resumed == 3
    right = sum(CASES[i].charge == "容留他人吸毒" and CASES[i].prison_time == 7 for i in (0, 1, 3))
    assert (tally.cases, tally.answers, tally.correct, tally.generated_tokens) == (3, 6, right, 42)
    data = path.read_bytes()
    for i, (offset, length) in pf.done.items():  # each case's span is its record's line
        assert json.loads(data[offset:offset + length]) == record(i)
    pf.append([record(2)])
    out = tmp_path / "samples.jsonl"
    final = pf.finalize(out, [0, 1, 2, 3])
    assert [json.loads(x)["index"] for x in lines(out)] == [0, 1, 2, 3]  # training-set order, no header
    assert [json.loads(x) for x in lines(out)] == [record(i) for i in range(4)]
    assert final.cases == 4 and final.answers == 8 and not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.jsonl"]
    assert capsys.readouterr().err == ""


def test_finalize_of_a_shard_keeps_the_header(tmp_path):
    path = tmp_path / "samples.shard1-of-2.jsonl.partial"
    pf, _ = open_partial(path)
    pf.append([record(3), record(1)])
    out = tmp_path / "samples.shard1-of-2.jsonl"
    final = pf.finalize(out, [1, 3], keep_header=True)
    assert out.read_bytes().splitlines(keepends=True)[0] == header(SETTINGS)
    assert [json.loads(x)["index"] for x in lines(out)[1:]] == [1, 3]
    assert final.cases == 2 and not path.exists()


def extra(i: int, first: int, texts=(RIGHT,)) -> dict:
    return extra_record(i, CASES[i], first, PromptResult(11, [Completion(t, 5, True) for t in texts]))


def test_further_draws_are_journaled_counted_and_merged_in_draw_order(tmp_path):
    path = tmp_path / "samples.jsonl.partial"
    pf, _ = open_partial(path)
    pf.append([record(0, (WRONG, WRONG)), record(1)])
    pf.append([extra(0, 2, (WRONG, RIGHT))])
    right0 = CASES[0].charge == "容留他人吸毒" and CASES[0].prison_time == 7  # RIGHT is right for case 0
    assert (pf.drawn[0], pf.accepted[0], pf.drawn[1]) == (4, int(right0), 2)
    pf.close()
    pf, tally = open_partial(path)  # resumed: the same counts, further draws included
    assert (pf.drawn[0], sorted(pf.extras), tally.cases) == (4, [0], 2)
    pf.append([extra(0, 4, (RIGHT,))])
    out = tmp_path / "samples.jsonl"
    final = pf.finalize(out, [0, 1])
    recs = [json.loads(x) for x in lines(out)]
    assert [a["text"] for a in recs[0]["answers"]] == [WRONG, WRONG, WRONG, RIGHT, RIGHT]
    assert recs[0]["first_draws"] == 2 and recs[0]["generated_tokens"] == 14 + 10 + 5
    assert recs[1] == record(1)  # a case without further draws is written as recorded
    assert (final.cases, final.answers, final.resampled, final.extra_answers) == (2, 7, 1, 3)


@pytest.mark.parametrize("lines_, message", [
    ([extra(0, 2)], "further draws of case 0 out of order"),  # before the case's own record
    ([record(0), extra(0, 3)], "further draws of case 0 out of order"),  # a gap: draws 2 missing
])
def test_further_draws_out_of_order_are_an_error(tmp_path, lines_, message):
    path = tmp_path / "samples.jsonl.partial"
    path.write_bytes(header(SETTINGS) + b"".join(json.dumps(r).encode() + b"\n" for r in lines_))
    with pytest.raises(InputError, match=message):
        open_partial(path)


def test_torn_last_line_is_dropped_and_redone(tmp_path, capsys):
    path = tmp_path / "samples.jsonl.partial"
    pf, _ = open_partial(path)
    pf.append([record(0), record(1)])
    pf.close()
    whole = path.read_bytes()
    with open(path, "ab") as f:  # what a write killed half-way leaves behind
        f.write((json.dumps(record(2), ensure_ascii=False) + "\n").encode()[:50])
    pf, tally = open_partial(path)
    assert sorted(pf.done) == [0, 1] and pf.resumed == 2 and tally.cases == 2
    assert capsys.readouterr().err == f"sample: {path}:4: dropped a torn last line (an interrupted write)\n"
    assert path.read_bytes() == whole  # cut back to the last complete line before appending
    pf.append([record(2)])
    pf.close()
    assert [json.loads(x).get("index") for x in lines(path)] == [None, 0, 1, 2]


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "corrupt line"),
    ("[0, 1]", "a record must be a JSON object"),
    ('{"index": 1, "case_id": "0000"}', "field 'case_id': record for a case this run does not sample"),
    ('{"index": 99, "case_id": "0000"}', "field 'case_id': record for a case this run does not sample"),
    ('{"case_id": "0000"}', "field 'case_id': record for a case this run does not sample"),
    (None, "case 0 recorded twice"),
    (json.dumps({"index": 1, "case_id": CASES[1].case_id}), "malformed case record"),
])
def test_bad_line_inside_the_partial_is_an_error_with_its_line(tmp_path, bad_line, message):
    path = tmp_path / "samples.jsonl.partial"
    pf, _ = open_partial(path)
    pf.append([record(0)])
    pf.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write((bad_line or json.dumps(record(0), ensure_ascii=False)) + "\n")
        f.write(json.dumps(record(2), ensure_ascii=False) + "\n")
    before = path.read_bytes()
    with pytest.raises(InputError) as exc:
        open_partial(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:3: {message}") and "delete the file to start afresh" in msg and "\n" not in msg
    assert path.read_bytes() == before  # never skipped, never cut


@pytest.mark.parametrize("content, why", [
    (b"", "no readable header line"),
    (b'{"fingerprint": "ab', "no readable header line"),  # killed while the header was written
    (b'{"index": 0}\n', "no readable header line"),
    (None, "written with different settings (seed, temperature)"),
])
def test_partial_that_cannot_be_continued_starts_afresh(tmp_path, capsys, content, why):
    path = tmp_path / "samples.jsonl.partial"
    if content is None:
        pf, _ = open_partial(path, {"model": "m", "temperature": 0.7, "seed": 2})
        pf.append([record(0), record(1)])
        pf.close()
    else:
        path.write_bytes(content)
    pf, tally = open_partial(path)
    assert pf.resumed == 0 and tally.cases == 0 and pf.done == {}
    assert capsys.readouterr().err == f"sample: {path}: {why}; starting afresh\n"
    assert len(lines(path)) == 1 and json.loads(lines(path)[0])["fingerprint"] == json_digest(SETTINGS)


# --- what the stage writes -----------------------------------------------------------------------------------------

STATS = RunStats(Tally(cases=3, answers=6, correct=2, format_errors=1, unfinished=1, prompt_tokens=30,
                       generated_tokens=90), resumed_cases=1, new_tokens=60, generate_seconds=2.0)


def test_metrics_are_the_results_only():
    stats = dataclasses.replace(STATS, tally=dataclasses.replace(STATS.tally, covered_first=1, covered=2,
                                                                 resampled=1, extra_answers=2))
    assert metrics(stats, missing_articles=4) == {
        "cases": 3, "answers_generated": 6, "generated_tokens": 90, "prompt_tokens": 30, "missing_articles": 4,
        "correct_exact": 2, "format_errors": 1, "unfinished_answers": 1, "coverage_first": round(1 / 3, 6),
        "coverage": round(2 / 3, 6), "cases_resampled": 1, "extra_answers": 2}


def test_run_info_is_how_the_run_went():
    # throughput of this run's generate calls only: 60 new tokens (not the 90 with resumed cases) in 2 s
    assert run_info(STATS, "hf", "cpu") == {"tokens_per_second": 30.0, "backend": "hf", "device": "cpu",
                                            "resumed_cases": 1}
    everything_resumed = dataclasses.replace(STATS, resumed_cases=3, new_tokens=0, generate_seconds=0.0)
    assert run_info(everything_resumed, "vllm", "cuda")["tokens_per_second"] is None
    # the time file and the results share no key: `dvc metrics diff` across machines differs in the time file only
    assert not set(run_info(STATS, "hf", "cpu")) & set(metrics(STATS, 0))


def test_run_settings_hold_what_decides_the_records(tmp_path):
    arts = SAMPLE / "criminal_law_articles.json"
    train = SAMPLE / "training_set.json"
    sp = SampleParams()
    settings = run_settings(sp, "org/model", train, arts, ["a", "b"], 0)
    assert set(settings) == {"code", "model", "adapter", "streams", "training_set", "articles", "prompts", "seed",
                             *SAMPLING_KEYS}
    assert settings["adapter"] is None and settings["streams"] == ""
    assert settings["code"] == code_digest("sample")  # a partial made by other code is not continued
    assert settings["model"] == "hub:org/model"  # a hub id stands for itself
    assert settings["training_set"] == file_digest(train) and settings["articles"] == file_digest(arts)
    assert settings["training_set"] != settings["articles"] and len(settings["training_set"]) == 64
    assert {k: settings[k] for k in SAMPLING_KEYS} == {k: getattr(sp, k) for k in SAMPLING_KEYS}
    same = [dataclasses.replace(sp, device="cuda:1"), dataclasses.replace(sp, gpu_memory_utilization=0.5),
            dataclasses.replace(sp, tensor_parallel_size=4)]
    assert all(run_settings(s, "org/model", train, arts, ["a", "b"], 0) == settings for s in same)
    other = [run_settings(sp, "org/other", train, arts, ["a", "b"], 0),
             run_settings(sp, "org/model", arts, arts, ["a", "b"], 0),
             run_settings(sp, "org/model", train, train, ["a", "b"], 0),
             run_settings(sp, "org/model", train, arts, ["a", "c"], 0),
             run_settings(sp, "org/model", train, arts, ["a", "b", "c"], 0),
             *(run_settings(dataclasses.replace(sp, **{k: v}), "org/model", train, arts, ["a", "b"], 0)
               for k, v in [("temperature", 0.5), ("top_p", 0.5), ("num_samples", 2),
                            ("max_new_tokens", 7), ("batch_size", 3), ("backend", "vllm"), ("min_accepted", 1),
                            ("max_samples", 16)]),
             run_settings(sp, "org/model", train, arts, ["a", "b"], 1),
             run_settings(sp, "org/model", train, arts, ["a", "b"], 0, adapter="org/adapter"),
             run_settings(sp, "org/model", train, arts, ["a", "b"], 0, family="round2")]
    assert all(json_digest(o) != json_digest(settings) for o in other)


# --- sampling with the tiny model --------------------------------------------------------------------------------

SEED = 7


def make_job(tiny, sp: SampleParams, n_cases: int = 6) -> Job:
    arts = SAMPLE / "criminal_law_articles.json"
    indices = shard_indices(n_cases, sp)
    prompts = build_prompts(CASES, indices, ArticleLookup(load_articles(arts), str(arts)), tiny.tokenizer,
                            SAMPLE / "training_set.json", JUDGE)
    settings = run_settings(sp, str(tiny.path), SAMPLE / "training_set.json", arts, prompts, SEED)
    return Job(CASES, indices, prompts, settings, SEED)


def backend_of(tiny) -> HFBackend:
    return HFBackend(tiny.model, tiny.tokenizer, CPU)


SP = SampleParams(num_samples=3, temperature=0.8, top_p=0.95, max_new_tokens=48, batch_size=2)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """One complete run on 6 cases; also records the input shape of every forward pass of the model."""
    prefill_tokens, decode_rows = [], []

    def record_rows(module, args, kwargs):  # a forward pre-hook: sees every forward pass, changes nothing
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            prefill_tokens.append(ids.numel())
        else:
            decode_rows.append(ids.shape[0])

    handle = tiny.model.register_forward_pre_hook(record_rows, with_kwargs=True)
    try:
        out = tmp_path_factory.mktemp("run") / "samples.jsonl"
        stats = sample(make_job(tiny, SP), backend_of(tiny), SP, out)
    finally:
        handle.remove()
    return out, stats, (prefill_tokens, decode_rows)


@pytest.mark.parametrize("changes", [{"batch_size": 3}, {"batch_size": 4}, {"shard_index": 0, "num_shards": 2},
                                     {"shard_index": 1, "num_shards": 2}, {"backend": "vllm", "chunk_size": 4},
                                     {"backend": "vllm", "chunk_size": 0}], ids=str)
def test_a_case_has_the_same_streams_and_answers_whatever_the_grouping(tiny, uninterrupted, tmp_path, changes):
    """Batch size, vLLM chunking and sharding change which cases share a call, never a case's streams: its seed comes
    from (seed, its index) only, so its answers are the same as in the uninterrupted run (batch 2, one shard)."""
    sp = dataclasses.replace(SP, **changes)
    log = SeedLog(backend_of(tiny))
    job = make_job(tiny, sp)
    sample(job, log, sp, tmp_path / "samples.jsonl")
    size = (sp.chunk_size or len(job.indices)) if sp.backend == "vllm" else sp.batch_size
    assert [len(call) for call in log.calls] == [min(size, len(job.indices) - k)
                                                 for k in range(0, len(job.indices), size)]
    seen = {job.prompts[job.indices.index(i)]: i for i in job.indices}
    assert {seen[prompt]: seed for call in log.calls for prompt, seed in call} == {
        i: stream_seed(SEED, i) for i in job.indices}
    whole = {rec["index"]: rec for rec in map(json.loads, lines(uninterrupted[0]))}
    out = tmp_path / "samples.jsonl"
    recs = [json.loads(x) for x in lines(out)[1 if sp.num_shards > 1 else 0:]]  # a shard's file keeps its header
    assert recs == [whole[i] for i in sorted(job.indices)]


@pytest.mark.slow
def test_several_cases_per_call_and_one_prefill_per_prompt(uninterrupted):
    out, _, (prefill_tokens, decode_rows) = uninterrupted
    # every prompt is prefilled once, not once per answer
    assert sum(prefill_tokens) == sum(json.loads(x)["prompt_tokens"] for x in lines(out))
    # 6 cases in batches of 2: the n = 3 answers of both cases are decoded together; finished ones leave the batch
    assert max(decode_rows) == 2 * SP.num_samples and min(decode_rows) < 2 * SP.num_samples


@pytest.mark.slow
def test_records_hold_prompt_labels_answers_parses_and_token_counts(tiny, uninterrupted):
    out, stats, _ = uninterrupted
    recs = [json.loads(x) for x in lines(out)]
    assert [r["index"] for r in recs] == list(range(6)) and not partial_path(out).exists()
    job = make_job(tiny, SP)
    for r, case, prompt in zip(recs, CASES, job.prompts, strict=False):
        assert set(r) == {"index", "case_id", "fact", "relevant_articles", "charge", "prison_time", "prompt",
                          "prompt_tokens", "generated_tokens", "first_draws", "answers"}
        assert r["first_draws"] == SP.num_samples
        assert (r["case_id"], r["fact"], r["relevant_articles"], r["charge"], r["prison_time"]) == (
            case.case_id, case.fact, list(case.relevant_articles), case.charge, case.prison_time)
        assert r["prompt"] == prompt
        assert r["prompt_tokens"] == len(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert len(r["answers"]) == SP.num_samples
        for a in r["answers"]:
            assert set(a) == {"text", "num_tokens", "finished", "parse"}
            assert a["parse"] == parse_dict(a["text"])
            assert 0 < a["num_tokens"] <= SP.max_new_tokens
            assert a["finished"] or a["num_tokens"] == SP.max_new_tokens
        assert r["generated_tokens"] == sum(a["num_tokens"] for a in r["answers"])
    assert sum(a["parse"] is not None for r in recs for a in r["answers"]) > 0  # the warm-started base answers
    assert stats.tally.cases == 6 and stats.tally.answers == 18 and stats.resumed_cases == 0
    assert stats.new_tokens == stats.tally.generated_tokens == sum(r["generated_tokens"] for r in recs)
    assert stats.generate_seconds > 0


def partial_from(full: Path, out: Path, job: Job, n_lines: int) -> None:
    """The partial file for `out` that a run killed after its first batches leaves: header plus the records of
    those batches, taken from the uninterrupted run's output `full`."""
    pf = PartialFile(partial_path(out), job.settings, {i: CASES[i].case_id for i in job.indices}, Tally())
    pf.append([json.loads(x) for x in lines(full)[:n_lines]])
    pf.close()


@pytest.mark.slow
def test_resumed_run_draws_the_same_answers_as_an_uninterrupted_one(tiny, uninterrupted, tmp_path):
    full, done, _ = uninterrupted
    job = make_job(tiny, SP)
    out = tmp_path / "samples.jsonl"
    partial_from(full, out, job, 4)  # two complete batches of 2
    stats = sample(job, backend_of(tiny), SP, out)
    assert stats.resumed_cases == 4 and stats.tally.cases == 6
    assert out.read_bytes() == full.read_bytes()
    assert stats.tally == done.tally  # the counts cover the resumed cases too
    assert stats.new_tokens == sum(json.loads(x)["generated_tokens"] for x in lines(full)[4:])


RESAMPLE = dataclasses.replace(SP, num_samples=2, min_accepted=2, max_samples=6)


def accepted(rec: dict) -> list[bool]:
    """Per answer: finished and exactly right (what resampling counts)."""
    case = CASES[rec["index"]]
    return [a["finished"] and is_correct(None if a["parse"] is None else Answer(**a["parse"]), case, 0)
            for a in rec["answers"]]


@pytest.fixture(scope="module")
def resampled(tiny, tmp_path_factory):
    """A run with resampling on: 2 first draws, then 2 more while a case has fewer than 2 accepted, up to 6."""
    log = SeedLog(backend_of(tiny))
    out = tmp_path_factory.mktemp("resampled") / "samples.jsonl"
    stats = sample(make_job(tiny, RESAMPLE), log, RESAMPLE, out)
    return out, stats, log


@pytest.mark.slow
def test_resampling_draws_more_only_where_too_few_are_accepted(tiny, resampled):
    out, stats, log = resampled
    recs = [json.loads(x) for x in lines(out)]
    for rec in recs:
        ok, n = accepted(rec), len(rec["answers"])
        assert rec["first_draws"] == 2 and n in (2, 4, 6)
        # it drew again exactly while it had fewer than 2 accepted and fewer than 6 draws
        for drawn in range(2, n, 2):
            assert sum(ok[:drawn]) < 2
        assert sum(ok) >= 2 or n == 6
    assert any(len(r["answers"]) > 2 for r in recs)  # the check above can fail: some cases were resampled
    t = stats.tally
    assert t.resampled == sum(len(r["answers"]) > 2 for r in recs)
    assert t.extra_answers == sum(len(r["answers"]) - 2 for r in recs) and t.answers == 12 + t.extra_answers
    assert t.covered_first == sum(any(accepted(r)[:2]) for r in recs)
    assert t.covered == sum(any(accepted(r)) for r in recs) >= t.covered_first
    # further draws continue the case's streams: draws 2 and 4 are prompted with stream + 2 and stream + 4
    job = make_job(tiny, RESAMPLE)
    index_of = {job.prompts[k]: job.indices[k] for k in range(len(job.indices))}
    firsts = {}
    for call in log.calls:
        for prompt, seed in call:
            firsts.setdefault(index_of[prompt], []).append(seed - stream_seed(SEED, index_of[prompt]))
    assert {i: f for i, f in firsts.items()} == {r["index"]: list(range(0, len(r["answers"]), 2)) for r in recs}


@pytest.mark.slow
def test_first_draws_do_not_depend_on_resampling(tiny, resampled, tmp_path):
    plain_sp = dataclasses.replace(RESAMPLE, min_accepted=0)
    plain = tmp_path / "samples.jsonl"
    sample(make_job(tiny, plain_sp), backend_of(tiny), plain_sp, plain)
    for a, b in zip(map(json.loads, lines(plain)), map(json.loads, lines(resampled[0])), strict=True):
        assert a["answers"] == b["answers"][:2]


@pytest.mark.slow
def test_resampling_resumes_to_the_same_records(tiny, resampled, tmp_path):
    """Killed during the further draws: the first draws of every case and one case's further draws are saved; the
    rerun makes the same file as the uninterrupted run."""
    full = resampled[0]
    recs = [json.loads(x) for x in lines(full)]
    job = make_job(tiny, RESAMPLE)
    out = tmp_path / "samples.jsonl"
    pf = PartialFile(partial_path(out), job.settings, {i: CASES[i].case_id for i in job.indices}, Tally())
    pf.append([{**r, "answers": r["answers"][:2], "generated_tokens": sum(a["num_tokens"] for a in r["answers"][:2])}
               for r in recs])
    more = next(r for r in recs if len(r["answers"]) > 2)
    further = more["answers"][2:4]
    pf.append([{"index": more["index"], "case_id": more["case_id"], "first": 2,
                "generated_tokens": sum(a["num_tokens"] for a in further), "answers": further}])
    pf.close()
    log = SeedLog(backend_of(tiny))
    stats = sample(job, log, RESAMPLE, out)
    assert out.read_bytes() == full.read_bytes()
    assert stats.resumed_cases == len(recs) and stats.tally == resampled[1].tally
    assert all(prompt != more["prompt"] or seed != stream_seed(SEED, more["index"]) + 2
               for call in log.calls for prompt, seed in call)  # its saved draws are not drawn again


@pytest.mark.slow
def test_settings_change_invalidates_the_partial(tiny, uninterrupted, tmp_path, capsys):
    full, _, _ = uninterrupted
    out = tmp_path / "samples.jsonl"
    partial_from(full, out, make_job(tiny, SP), 4)
    hotter = dataclasses.replace(SP, temperature=1.2)
    capsys.readouterr()
    stats = sample(make_job(tiny, hotter), backend_of(tiny), hotter, out)
    assert (f"sample: {partial_path(out)}: written with different settings (temperature); starting afresh\n"
            in capsys.readouterr().err)
    assert stats.resumed_cases == 0 and stats.new_tokens == stats.tally.generated_tokens
    assert [json.loads(x)["index"] for x in lines(out)] == list(range(6))


# --- the stage, killed for real ----------------------------------------------------------------------------------

def _complete_records(path: Path) -> list[bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return raw[:raw.rfind(b"\n") + 1].splitlines()[1:]


def _interrupt(cwd: Path, partial: Path, more_than: int, sig: int) -> int:
    """Run the stage and send `sig` once the partial file holds more than `more_than` records; returns the status."""
    return interrupt_when(stage_cmd("sample"), cwd, lambda: len(_complete_records(partial)) > more_than, sig,
                          log=cwd / "interrupted.log")


@pytest.mark.slow
def test_ctrl_c_then_sigkill_then_rerun_yields_every_case_once(project):
    n_cases = 24  # 12 batches: whatever the load, both signals land with batches still to go
    root = project(n_train=n_cases, params={"sample": {"num_samples": 4}})
    partial, final = root / partial_path(Path(R1["samples"])), root / R1["samples"]
    log = root / "interrupted.log"

    assert _interrupt(root, partial, 0, signal.SIGINT) == 130, log.read_text()
    first = _complete_records(partial)
    assert "Rerun to continue" in log.read_text() and 0 < len(first) < n_cases

    assert _interrupt(root, partial, len(first), signal.SIGKILL) == -signal.SIGKILL, log.read_text()
    before = _complete_records(partial)
    assert len(first) < len(before) < n_cases and before[:len(first)] == first
    assert not final.exists()

    rerun = subprocess.run(stage_cmd("sample"), cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = final.read_bytes().splitlines()
    recs = [json.loads(x) for x in after]
    assert [r["index"] for r in recs] == list(range(n_cases))  # every case exactly once, in order
    assert [r["case_id"] for r in recs] == [c.case_id for c in CASES[:n_cases]]
    assert set(before) <= set(after)  # what was saved before the kill is kept verbatim
    assert not partial.exists()
    results = read_json(root / R1["sample_metrics"])
    assert results["cases"] == n_cases
    assert results["answers_generated"] == 4 * n_cases
    assert results["generated_tokens"] == sum(r["generated_tokens"] for r in recs)
    assert results["missing_articles"] == 0
    assert set(results) == set(metrics(STATS, 0))  # results only: no time, device or throughput
    timing = read_json(root / R1["sample_time"])
    assert timing["resumed_cases"] == len(before) and timing["backend"] == "hf" and timing["device"] == "cpu"
    assert timing["tokens_per_second"] > 0 and timing["wall_seconds"] > 0 and timing["peak_rss_mb"] > 0
    assert set(timing) >= set(run_info(STATS, "hf", "cpu")) | {"wall_seconds", "peak_rss_mb"}
    assert not set(timing) & set(results)


def test_parse_dict_matches_parse_answer():
    assert parse_dict(RIGHT) == dataclasses.asdict(parse_answer(RIGHT))
    assert parse_dict("no answer") is None


@pytest.mark.slow
def test_model_generation_config_does_not_change_the_sampling(tiny):
    """Hub models ship sampling defaults (Qwen2.5-Instruct: repetition_penalty 1.1, top_k 20); the answers must
    depend on the sample params only, as with vLLM."""
    model = tiny.model
    backend = backend_of(tiny)
    prompts = make_job(tiny, SP, n_cases=2).prompts
    sampled = GenerationSettings(n=2, temperature=0.8, top_p=0.95, max_new_tokens=24)
    runs = (sampled, dataclasses.replace(sampled, temperature=0.0))
    plain = [backend.generate(prompts, s, seeds(prompts, 3)) for s in runs]
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.update(repetition_penalty=1.5, no_repeat_ngram_size=2, top_k=3, typical_p=0.5)
    try:
        assert [backend.generate(prompts, s, seeds(prompts, 3)) for s in runs] == plain
    finally:
        model.generation_config = saved
