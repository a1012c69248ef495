"""Tests for lawshift.sample.merge: two real shards of a sampling run on the tiny model merge into every case once; the
merge refuses shards that do not make one complete run, with one line naming the file; the sharded stage end to
end (two `stages/sample.py` processes, `python -m lawshift.sample.merge`, `stages/filter.py`)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ENV, JUDGE, R1, ROOT, SeedLog, dump_json, read_json, run, run_stage, small_root, stage_cmd

from lawshift.core import files
from lawshift.core.files import InputError, file_digest
from lawshift.core.params import FilterParams, SampleParams
from lawshift.engines.generation import Completion, PromptResult
from lawshift.engines.hf_backend import HFBackend
from lawshift.sample import filtering, merge
from lawshift.sample.samples import PartialFile, Tally, case_record
from lawshift.sample.sampling import (
    Job,
    build_prompts,
    output_path,
    partial_path,
    run_settings,
    sample,
    shard_indices,
)
from lawshift.task.data import ArticleLookup, load_articles, training_cases

CPU = torch.device("cpu")
N_CASES = 7  # odd: the two shards get 4 and 3 cases


@pytest.fixture
def root(tmp_path) -> Path:
    """A folder whose LawShift root (conftest.ROOT) has the first N_CASES training cases; no model."""
    small_root(tmp_path / ROOT, n_train=N_CASES)
    return tmp_path


def train_file(root: Path) -> Path:
    return root / ROOT / "training_set.json"


def samples(root: Path) -> Path:
    return root / R1["samples"]


@pytest.mark.slow
def test_two_real_shards_merge_into_every_case_once(tiny, root):
    cases, arts = training_cases(root / ROOT), root / ROOT / "criminal_law_articles.json"
    out = samples(root)
    shard_files, seeds = [], []
    for i in (0, 1):
        sp = SampleParams(num_samples=3, max_new_tokens=32, batch_size=2, shard_index=i, num_shards=2)
        indices = shard_indices(len(cases), sp)
        prompts = build_prompts(cases, indices, ArticleLookup(load_articles(arts), str(arts)), tiny.tokenizer,
                                train_file(root), JUDGE)
        job = Job(cases, indices, prompts, run_settings(sp, str(tiny.path), train_file(root), arts, prompts, 7), 7)
        backend = SeedLog(HFBackend(tiny.model, tiny.tokenizer, CPU))
        sample(job, backend, sp, output_path(sp, out))
        shard_files.append(output_path(sp, out))
        seeds.append(set(backend.seeds))
    assert [p.name for p in shard_files] == ["samples.shard0-of-2.jsonl", "samples.shard1-of-2.jsonl"]
    assert not seeds[0] & seeds[1]  # the shards of one run draw with different streams

    tally = merge.merge(shard_files, cases, train_file(root), out)
    merged = out.read_bytes().splitlines(keepends=True)
    recs = [json.loads(x) for x in merged]
    assert [r["index"] for r in recs] == list(range(N_CASES))  # every case once, in training-set order
    assert [r["case_id"] for r in recs] == [c.case_id for c in cases]
    shard_lines = {x for p in shard_files for x in p.read_bytes().splitlines(keepends=True)[1:]}
    assert set(merged) == shard_lines and len(merged) == len(shard_lines)  # records verbatim, headers dropped
    assert tally.cases == N_CASES and tally.answers == 3 * N_CASES
    assert tally.generated_tokens == sum(r["generated_tokens"] for r in recs)
    # the filter stage reads the merged file as it reads a single process's
    outcomes = filtering.run(out, root / R1["sft"], FilterParams())
    assert len(outcomes) == N_CASES


# --- refusals ------------------------------------------------------------------------------------------------------

def fake_record(i: int, cases) -> dict:
    answer = Completion("<answer> 盗窃 | 7 </answer>", 9, True)
    return case_record(i, cases[i], f"prompt {i}", PromptResult(11, [answer]))


def write_shard(root: Path, i: int, n: int, indices=None, **changed) -> Path:
    """A finished shard file as a sharded run writes it (header kept), from made-up answers."""
    cases = training_cases(root / ROOT)
    sp = SampleParams(shard_index=i, num_shards=n)
    indices = shard_indices(len(cases), sp) if indices is None else indices
    settings = {"model": "m", "training_set": file_digest(train_file(root)), "seed": 42, "prompts": f"p{i}",
                "shard_index": i, "num_shards": n} | changed
    out = output_path(sp, samples(root))
    pf = PartialFile(partial_path(out), settings, {k: cases[k].case_id for k in indices}, Tally())
    pf.append([fake_record(k, cases) for k in indices])
    pf.finalize(out, indices, keep_header=True)
    return out


def run_merge(root: Path, shard_paths: list[Path]):
    return merge.merge(shard_paths, training_cases(root / ROOT), train_file(root), samples(root))


def test_merge_of_made_up_shards(root):
    shard_paths = [write_shard(root, 1, 2), write_shard(root, 0, 2)]
    tally = run_merge(root, shard_paths)
    assert tally.cases == N_CASES and tally.answers == N_CASES
    cases = training_cases(root / ROOT)
    assert [json.loads(x) for x in samples(root).read_text(encoding="utf-8").splitlines()] == [
        fake_record(k, cases) for k in range(N_CASES)]  # training-set order, records verbatim, no header
    assert all(p.is_file() for p in shard_paths)  # the shard files stay


def test_no_shard_files_to_merge(root):
    with pytest.raises(InputError) as exc:
        run_merge(root, [])
    assert str(exc.value) == f"{samples(root).parent}: no shard files (samples.shard*-of-*.jsonl) to merge"


def append(raw: bytes):
    def damage(path: Path) -> None:
        with open(path, "ab") as f:
            f.write(raw)
    return damage


def drop_last_record(path: Path) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))


def strip_header(path: Path) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[1:]))


def repeat_first_record(path: Path) -> None:
    append(path.read_bytes().splitlines(keepends=True)[1])(path)


def wrong_case_id(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[-1]) | {"case_id": "0" * 64}
    path.write_bytes(b"".join(lines[:-1]) + (json.dumps(rec, ensure_ascii=False) + "\n").encode())


def malformed_answer(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[-1])
    del rec["answers"][0]["finished"]
    path.write_bytes(b"".join(lines[:-1]) + (json.dumps(rec, ensure_ascii=False) + "\n").encode())


# (shards to write as (i, n, options), what to do to the last one, message); every case is a real way to go wrong.
# Shard 1 of 2 holds cases 1, 3, 5 on lines 2-4 after its header.
REFUSALS = [
    ([(0, 2, {})], None, r"samples.shard1-of-2.jsonl: missing: shard 1 of 2 \(missing: 1\)$"),
    ([(0, 3, {})], None, r"samples.shard1-of-3.jsonl: missing: shard 1 of 3 \(missing: 1, 2\)$"),
    ([(0, 2, {}), (1, 3, {})], None, r"samples.shard1-of-3.jsonl: shard of a 3-shard run, but .* 2-shard run"),
    ([(0, 2, {}), (1, 2, {"seed": 43})], None, r"samples.shard1-of-2.jsonl:1: written with other settings .*\(seed\)"),
    ([(0, 2, {}), (1, 2, {"model": "other"})], None, r"written with other settings .*\(model\)"),
    ([(0, 2, {}), (1, 2, {"code": "other"})], None, r"written with other settings .*\(code\)"),
    ([(0, 2, {}), (1, 2, {"indices": [1, 3, 5, 0]})], None, r"shard1-of-2.jsonl:5: case 0 is not this shard's "
                                                            r"\(shard 0's\)"),
    ([(0, 2, {}), (1, 2, {})], drop_last_record, r"shard1-of-2.jsonl: 1 of its 3 cases missing \(5\)"),
    ([(0, 2, {"training_set": "0" * 64}), (1, 2, {"training_set": "0" * 64})], None,
     r"shard0-of-2.jsonl:1: sampled from another training set"),
    ([(0, 2, {}), (1, 2, {})], wrong_case_id, r"shard1-of-2.jsonl:4: field 'case_id': not the case_id of case 5 of "),
    ([(0, 2, {}), (1, 2, {})], repeat_first_record, r"shard1-of-2.jsonl:5: case 1 recorded twice \(also line 2\)"),
    ([(0, 2, {}), (1, 2, {})], append(b"{not json\n"), r"shard1-of-2.jsonl:5: corrupt line"),
    ([(0, 2, {}), (1, 2, {})], append(b"[1, 2]\n"), r"shard1-of-2.jsonl:5: a record must be a JSON object"),
    ([(0, 2, {}), (1, 2, {})], append(b'{"index": true, "case_id": "x"}\n'),
     r"shard1-of-2.jsonl:5: a record needs an integer index and a string case_id"),
    ([(0, 2, {}), (1, 2, {})], append('{"index": 7, "case_id": "被'.encode()[:-1]),  # torn inside a character
     r"shard1-of-2.jsonl:5: incomplete last line"),
    ([(0, 2, {}), (1, 2, {})], strip_header, r"shard1-of-2.jsonl:1: no header line"),
    ([(0, 2, {}), (1, 2, {})], malformed_answer, r"shard1-of-2.jsonl:4: malformed case record"),
]


@pytest.mark.parametrize("shards, damage, message", REFUSALS)
def test_merge_refuses_what_is_not_one_complete_run(root, shards, damage, message):
    shard_paths = []
    for i, n, options in shards:
        changed = {k: v for k, v in options.items() if k != "indices"}
        shard_paths.append(write_shard(root, i, n, options.get("indices"), **changed))
    if damage:
        damage(shard_paths[-1])
    with pytest.raises(InputError, match=message) as exc:
        run_merge(root, shard_paths)
    assert "\n" not in str(exc.value)
    assert not samples(root).exists()  # nothing half-written
    assert sorted(p.name for p in samples(root).parent.iterdir()) == sorted(p.name for p in shard_paths)


def test_same_shard_twice_and_renamed_shard(root):
    first = write_shard(root, 0, 2)
    second = write_shard(root, 1, 2)
    with pytest.raises(InputError, match="shard 0 given twice"):
        run_merge(root, [first, first, second])
    # the two files' names swapped
    first.rename(first.with_name("swap"))
    second.rename(first)
    first.with_name("swap").rename(second)
    with pytest.raises(InputError, match=r"shard0-of-2.jsonl:1: header says shard 1 of 2, the file name shard 0 of 2"):
        run_merge(root, [first, second])
    with pytest.raises(InputError, match=r"samples.jsonl: not a shard file: the name must end in \.shard\{i\}-of-"):
        merge.read_shard(samples(root))


# --- what the merge writes for metrics -----------------------------------------------------------------------------

SHARD_INFO = {"tokens_per_second": 100.0, "backend": "hf", "device": "cpu", "resumed_cases": 2, "wall_seconds": 5.0,
              "peak_rss_mb": 300.0}


def test_merged_metrics_sum_the_counts():
    tally = Tally(cases=7, answers=21, correct=3, format_errors=2, unfinished=1, prompt_tokens=70,
                  generated_tokens=600)
    both = merge.merged_metrics(tally, [{"missing_articles": 1}, {"missing_articles": 2, "cases": 99}])
    assert both == {"cases": 7, "answers_generated": 21, "generated_tokens": 600, "prompt_tokens": 70,
                    "correct_exact": 3, "format_errors": 2, "unfinished_answers": 1, "shards": 2,
                    "missing_articles": 3, "coverage_first": 0.0, "coverage": 0.0, "cases_resampled": 0,
                    "extra_answers": 0}  # counts from the merged records, not from the shards' files
    # a shard's metrics missing: the counts only, nothing guessed
    partial = merge.merged_metrics(tally, [{"missing_articles": 1}, None])
    assert partial == {k: v for k, v in both.items() if k != "missing_articles"}


def test_merged_run_info_combines_throughput_time_and_memory():
    other = SHARD_INFO | {"tokens_per_second": 50.04, "wall_seconds": 9.0, "peak_rss_mb": 250.0, "resumed_cases": 1}
    assert merge.merged_run_info([SHARD_INFO, other]) == {
        "tokens_per_second": 150.0,  # side by side: the sum
        "backend": "hf", "device": "cpu", "resumed_cases": 3,
        "wall_seconds": 9.0, "peak_rss_mb": 300.0}  # the largest shard's
    assert merge.merged_run_info([SHARD_INFO, other | {"tokens_per_second": None}])["tokens_per_second"] == 100.0
    assert merge.merged_run_info([SHARD_INFO, None]) == {}  # a shard's time file missing: nothing copied
    assert merge.merged_run_info([]) == {}


@pytest.mark.slow
@pytest.mark.parametrize("with_files", [True, False], ids=["shard_files", "no_shard_files"])
def test_main_writes_metrics_and_time_from_the_shards(root, monkeypatch, capsys, with_files):
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"root": ROOT}}), encoding="utf-8")
    for i in (0, 1):
        write_shard(root, i, 2)
        if with_files:
            sp = SampleParams(shard_index=i, num_shards=2)
            dump_json(output_path(sp, R1["sample_metrics"]), {"cases": 99, "missing_articles": i + 1})
            dump_json(output_path(sp, R1["sample_time"]), SHARD_INFO | {"wall_seconds": 5.0 + i})
    merge.main([])
    recs = [json.loads(x) for x in samples(root).read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in recs] == list(range(N_CASES))
    results = read_json(root / R1["sample_metrics"])
    assert results["cases"] == N_CASES and results["shards"] == 2 and results["answers_generated"] == N_CASES
    time_file = root / R1["sample_time"]
    if with_files:
        assert results["missing_articles"] == 3
        assert read_json(time_file) == SHARD_INFO | {"tokens_per_second": 200.0, "resumed_cases": 4,
                                                     "wall_seconds": 6.0}
    else:
        assert "missing_articles" not in results and not time_file.exists()
    assert f"merge: 2 shards, {N_CASES} cases -> {R1['samples']}" in capsys.readouterr().out


@pytest.mark.slow
def test_no_shards_and_the_one_line_error(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"root": ROOT}}), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        files.run_stage(lambda: merge.main([]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: outputs/round1: no shard files (samples.shard*-of-*.jsonl) to merge\n"


# --- the documented commands, as separate processes ----------------------------------------------------------------

@pytest.mark.slow
def test_sharded_stage_merge_and_filter(project):
    root = project(n_train=N_CASES)
    shards = [subprocess.Popen(stage_cmd("sample", "--shard-index", str(i), "--num-shards", "2"), cwd=root, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for proc in shards:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "once all are: python -m lawshift.sample.merge" in out
    infos = []
    for i in (0, 1):
        sp = SampleParams(shard_index=i, num_shards=2)
        assert read_json(root / output_path(sp, R1["sample_metrics"]))["cases"] == len(shard_indices(N_CASES, sp))
        infos.append(read_json(root / output_path(sp, R1["sample_time"])))
        assert (root / output_path(sp, R1["samples"])).is_file()

    run([sys.executable, "-m", "lawshift.sample.merge"], cwd=root)
    recs = [json.loads(x) for x in samples(root).read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in recs] == list(range(N_CASES))
    results = read_json(root / R1["sample_metrics"])
    assert results["cases"] == N_CASES and results["shards"] == 2 and results["missing_articles"] == 0
    assert "tokens_per_second" not in results  # throughput lives in the time file
    timing = read_json(root / R1["sample_time"])
    assert timing["tokens_per_second"] == round(sum(m["tokens_per_second"] for m in infos), 1) > 0
    assert timing["wall_seconds"] == max(m["wall_seconds"] for m in infos)
    proc = run_stage(root, "filter")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(root / R1["filter_metrics"])["total_samples"] == N_CASES


def test_shard_settings_differ_only_in_the_shard(root):
    """What the stage fingerprints for two shards of one run differs in the shard index and prompts only."""
    arts = root / ROOT / "criminal_law_articles.json"
    a = run_settings(SampleParams(shard_index=0, num_shards=2), "m", train_file(root), arts, ["x"], 0)
    b = run_settings(dataclasses.replace(SampleParams(), shard_index=1, num_shards=2), "m", train_file(root),
                     arts, ["y"], 0)
    assert {k for k in a if a[k] != b[k]} == set(merge.PER_SHARD)
