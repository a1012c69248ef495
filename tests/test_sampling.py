"""Tests for lawshift.sampling and stages/sample.py: the resumable JSONL, fingerprints, records, batching, and a
real SIGKILL in the middle of a sampling run followed by a rerun."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lawshift import models
from lawshift.answers import parse_answer
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.files import InputError
from lawshift.generation import Completion, GenerationSettings, HFBackend, PromptResult
from lawshift.params import SampleParams
from lawshift.sampling import (
    Job,
    PartialFile,
    Tally,
    batch_seed,
    build_prompts,
    case_record,
    check_params,
    longest_first,
    output_path,
    parse_dict,
    partial_path,
    run_settings,
    sample,
    shard_indices,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lawshift-sample"
CASES = training_cases(SAMPLE)
CPU = torch.device("cpu")
RIGHT, WRONG = "<answer> 容留他人吸毒 | 7 </answer>", "<answer> 容留他人吸毒 | 70 </answer>"


# --- params ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"backend": "tgi"}, "sample.backend"),
    ({"num_samples": 0}, "sample.num_samples"),
    ({"batch_size": 0}, "sample.batch_size"),
    ({"max_new_tokens": 0}, "sample.max_new_tokens"),
    ({"temperature": -0.1}, "sample.temperature"),
    ({"top_p": 0.0}, "sample.top_p"),
    ({"top_p": 1.5}, "sample.top_p"),
    ({"num_shards": 2, "shard_index": 2}, "sample.shard_index"),
    ({"shard_index": -1}, "sample.shard_index"),
])
def test_check_params_names_the_field(change, field):
    with pytest.raises(InputError, match=f"field '{field}'"):
        check_params(dataclasses.replace(SampleParams(), **change))


@pytest.mark.parametrize("n_cases, shard, shards, expected", [
    (5, 0, 1, [0, 1, 2, 3, 4]), (5, 0, 2, [0, 2, 4]), (5, 1, 2, [1, 3]), (2, 1, 3, [1])])
def test_shards_split_the_cases(n_cases, shard, shards, expected):
    assert shard_indices(n_cases, SampleParams(shard_index=shard, num_shards=shards)) == expected


def test_empty_shard_and_shard_file_names():
    with pytest.raises(InputError, match="gets none of the 2 cases"):
        shard_indices(2, SampleParams(shard_index=2, num_shards=3))
    assert output_path(SampleParams()) == Path("outputs/samples.jsonl")
    assert output_path(SampleParams(shard_index=1, num_shards=4)) == Path("outputs/samples.shard1-of-4.jsonl")
    assert partial_path(Path("outputs/samples.jsonl")) == Path("outputs/samples.jsonl.partial")


def test_batch_seed_depends_on_seed_and_first_case_only():
    assert batch_seed(42, 8) == batch_seed(42, 8)
    seeds = {batch_seed(s, i) for s in (0, 1, 42) for i in range(0, 64, 8)}
    assert len(seeds) == 24 and all(0 <= s < 2**32 for s in seeds)


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


def test_partial_header_append_and_resume(tmp_path):
    path = tmp_path / "samples.jsonl.partial"
    pf, tally = open_partial(path)
    assert pf.resumed == 0 and tally.cases == 0
    assert json.loads(lines(path)[0]) == {"fingerprint": pf.fp, "settings": SETTINGS}
    pf.append([record(0), record(1)])
    pf.append([record(3)])
    pf.close()
    pf, tally = open_partial(path)
    assert sorted(pf.done) == [0, 1, 3] and pf.resumed == 3
    right = sum(CASES[i].charge == "容留他人吸毒" and CASES[i].prison_time == 7 for i in (0, 1, 3))
    assert (tally.cases, tally.answers, tally.correct, tally.generated_tokens) == (3, 6, right, 42)
    pf.append([record(2)])
    out = tmp_path / "samples.jsonl"
    final = pf.finalize(out, [0, 1, 2, 3])
    assert [json.loads(x)["index"] for x in lines(out)] == [0, 1, 2, 3]  # training-set order, no header
    assert final.cases == 4 and not path.exists()


def test_torn_last_line_is_dropped_and_redone(tmp_path, capsys):
    path = tmp_path / "samples.jsonl.partial"
    pf, _ = open_partial(path)
    pf.append([record(0), record(1)])
    pf.close()
    whole = path.read_bytes()
    with open(path, "ab") as f:  # what a write killed half-way leaves behind
        f.write((json.dumps(record(2), ensure_ascii=False) + "\n").encode()[:50])
    pf, _ = open_partial(path)
    assert sorted(pf.done) == [0, 1]
    assert "samples.jsonl.partial:4: dropped a torn last line" in capsys.readouterr().err
    assert path.read_bytes() == whole  # cut back to the last complete line before appending
    pf.append([record(2)])
    pf.close()
    assert [json.loads(x).get("index") for x in lines(path)] == [None, 0, 1, 2]


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "corrupt line"),
    ('{"index": 1, "case_id": "0000"}', "record for a case this run does not sample"),
    ('{"index": 99, "case_id": "0000"}', "record for a case this run does not sample"),
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
    with pytest.raises(InputError, match=f"samples.jsonl.partial:3: .*{message}"):
        open_partial(path)


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
    assert pf.resumed == 0 and tally.cases == 0
    assert f"{why}; starting afresh" in capsys.readouterr().err
    assert len(lines(path)) == 1 and json.loads(lines(path)[0])["fingerprint"] == pf.fp


# --- sampling with the tiny model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_base):
    tokenizer = models.load_tokenizer(str(tiny_base))
    model = models.load_model(str(tiny_base), device=CPU)
    # One thread: the tiny model's matmuls are too small to split, and on a busy 2-core runner threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_base, tokenizer, model
    torch.set_num_threads(threads)


def make_job(tiny, sp: SampleParams, n_cases: int = 6) -> Job:
    base, tokenizer, _ = tiny
    arts = SAMPLE / "criminal_law_articles.json"
    indices = list(range(n_cases))
    prompts = build_prompts(CASES, indices, ArticleLookup(load_articles(arts), str(arts)), tokenizer,
                            SAMPLE / "training_set.json")
    return Job(CASES, indices, prompts, run_settings(sp, str(base), SAMPLE / "training_set.json", arts, prompts))


SP = SampleParams(num_samples=3, temperature=0.8, top_p=0.95, max_new_tokens=48, batch_size=2, seed=7)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """One complete run on 6 cases; also records the input shape of every forward pass of the model."""
    _, tokenizer, model = tiny
    prefill_tokens, decode_rows = [], []

    def record_rows(module, args, kwargs):  # a forward pre-hook: sees every forward pass, changes nothing
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            prefill_tokens.append(ids.numel())
        else:
            decode_rows.append(ids.shape[0])

    handle = model.register_forward_pre_hook(record_rows, with_kwargs=True)
    try:
        out = tmp_path_factory.mktemp("run") / "samples.jsonl"
        stats = sample(make_job(tiny, SP), HFBackend(model, tokenizer, CPU), SP, out)
    finally:
        handle.remove()
    return out, stats, (prefill_tokens, decode_rows)


def test_several_cases_per_call_and_one_prefill_per_prompt(uninterrupted):
    out, _, (prefill_tokens, decode_rows) = uninterrupted
    # every prompt is prefilled once, not once per answer
    assert sum(prefill_tokens) == sum(json.loads(x)["prompt_tokens"] for x in lines(out))
    # 6 cases in batches of 2: the n = 3 answers of both cases are decoded together; finished ones leave the batch
    assert max(decode_rows) == 2 * SP.num_samples and min(decode_rows) < 2 * SP.num_samples


def test_records_hold_prompt_labels_answers_parses_and_token_counts(tiny, uninterrupted):
    _, tokenizer, _ = tiny
    out, stats, _ = uninterrupted
    recs = [json.loads(x) for x in lines(out)]
    assert [r["index"] for r in recs] == list(range(6)) and not partial_path(out).exists()
    job = make_job(tiny, SP)
    for r, case, prompt in zip(recs, CASES, job.prompts, strict=False):
        assert set(r) == {"index", "case_id", "fact", "relevant_articles", "charge", "prison_time", "prompt",
                          "prompt_tokens", "generated_tokens", "answers"}
        assert (r["case_id"], r["fact"], r["relevant_articles"], r["charge"], r["prison_time"]) == (
            case.case_id, case.fact, list(case.relevant_articles), case.charge, case.prison_time)
        assert r["prompt"] == prompt
        assert r["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
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


def partial_from(full: Path, out: Path, job: Job, n_lines: int) -> None:
    """The partial file for `out` that a run killed after its first batches leaves: header plus the records of
    those batches, taken from the uninterrupted run's output `full`."""
    pf = PartialFile(partial_path(out), job.settings, {i: CASES[i].case_id for i in job.indices}, Tally())
    pf.append([json.loads(x) for x in lines(full)[:n_lines]])
    pf.close()


def test_resumed_run_draws_the_same_answers_as_an_uninterrupted_one(tiny, uninterrupted, tmp_path):
    _, tokenizer, model = tiny
    full, _, _ = uninterrupted
    job = make_job(tiny, SP)
    out = tmp_path / "samples.jsonl"
    partial_from(full, out, job, 4)  # two complete batches of 2
    stats = sample(job, HFBackend(model, tokenizer, CPU), SP, out)
    assert stats.resumed_cases == 4 and stats.tally.cases == 6
    assert out.read_bytes() == full.read_bytes()


def test_settings_change_invalidates_the_partial(tiny, uninterrupted, tmp_path, capsys):
    _, tokenizer, model = tiny
    full, _, _ = uninterrupted
    out = tmp_path / "samples.jsonl"
    partial_from(full, out, make_job(tiny, SP), 4)
    hotter = dataclasses.replace(SP, temperature=1.2)
    capsys.readouterr()
    stats = sample(make_job(tiny, hotter), HFBackend(model, tokenizer, CPU), hotter, out)
    assert "written with different settings (temperature); starting afresh" in capsys.readouterr().err
    assert stats.resumed_cases == 0 and stats.new_tokens == stats.tally.generated_tokens
    assert [json.loads(x)["index"] for x in lines(out)] == list(range(6))


# --- the stage, killed for real ----------------------------------------------------------------------------------

def _project(root: Path, tiny_base: Path, n_cases: int) -> None:
    data = root / "data" / "small"
    data.mkdir(parents=True)
    shutil.copy(SAMPLE / "criminal_law_articles.json", data)
    train = json.loads((SAMPLE / "training_set.json").read_text(encoding="utf-8"))[:n_cases]
    (data / "training_set.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    shutil.copytree(tiny_base, root / "models" / "base")
    params = {"data": {"root": "data/small", "train_articles": "data/small/criminal_law_articles.json"},
              "sample": {"num_samples": 4, "max_new_tokens": 48, "batch_size": 2, "device": "cpu"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def _complete_records(path: Path) -> list[bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return raw[:raw.rfind(b"\n") + 1].splitlines()[1:]


def _interrupt(cmd: list[str], cwd: Path, env: dict, partial: Path, more_than: int, sig: int) -> int:
    """Run the stage and send `sig` once the partial file holds more than `more_than` records; returns the status."""
    with open(cwd / "interrupted.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while len(_complete_records(partial)) <= more_than and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(sig)
        return proc.wait()


def test_ctrl_c_then_sigkill_then_rerun_yields_every_case_once(tmp_path, tiny_base):
    n_cases = 12
    _project(tmp_path, tiny_base, n_cases)
    cmd = [sys.executable, str(REPO / "stages" / "sample.py")]
    # One thread: the tiny model gains nothing from more, and on a shared 2-core runner they only contend.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    partial, final = tmp_path / "outputs" / "samples.jsonl.partial", tmp_path / "outputs" / "samples.jsonl"
    log = tmp_path / "interrupted.log"

    assert _interrupt(cmd, tmp_path, env, partial, 0, signal.SIGINT) == 130, log.read_text()
    first = _complete_records(partial)
    assert "Rerun to continue" in log.read_text() and 0 < len(first) < n_cases

    assert _interrupt(cmd, tmp_path, env, partial, len(first), signal.SIGKILL) == -signal.SIGKILL, log.read_text()
    before = _complete_records(partial)
    assert len(first) < len(before) < n_cases and before[:len(first)] == first
    assert not final.exists()

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = final.read_bytes().splitlines()
    recs = [json.loads(x) for x in after]
    assert [r["index"] for r in recs] == list(range(n_cases))  # every case exactly once, in order
    assert [r["case_id"] for r in recs] == [c.case_id for c in CASES[:n_cases]]
    assert set(before) <= set(after)  # what was saved before the kill is kept verbatim
    assert not partial.exists()
    metrics = json.loads((tmp_path / "metrics" / "sample.json").read_text(encoding="utf-8"))
    assert metrics["resumed_cases"] == len(before) and metrics["cases"] == n_cases
    assert metrics["answers_generated"] == 4 * n_cases and metrics["backend"] == "hf"
    assert metrics["generated_tokens"] == sum(r["generated_tokens"] for r in recs)
    assert metrics["missing_articles"] == 0 and metrics["tokens_per_second"] > 0


def test_parse_dict_matches_parse_answer():
    assert parse_dict(RIGHT) == dataclasses.asdict(parse_answer(RIGHT))
    assert parse_dict("no answer") is None


def test_model_generation_config_does_not_change_the_sampling(tiny):
    """Hub models ship sampling defaults (Qwen2.5-Instruct: repetition_penalty 1.1, top_k 20); the answers must
    depend on the sample params only, as with vLLM."""
    _, tokenizer, model = tiny
    backend = HFBackend(model, tokenizer, CPU)
    prompts = make_job(tiny, SP, n_cases=2).prompts
    sampled = GenerationSettings(n=2, temperature=0.8, top_p=0.95, max_new_tokens=24)
    runs = (sampled, dataclasses.replace(sampled, temperature=0.0))
    plain = [backend.generate(prompts, s, seed=3) for s in runs]
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.update(repetition_penalty=1.5, no_repeat_ngram_size=2, top_k=3, typical_p=0.5)
    try:
        assert [backend.generate(prompts, s, seed=3) for s in runs] == plain
    finally:
        model.generation_config = saved
