"""Tests for lawshift.merge: two real shards of a sampling run on the tiny model merge into every case once; the
merge refuses shards that do not make one complete run, with one line naming the file; the sharded stage end to
end (two `stages/sample.py` processes, `python -m lawshift.merge`, `stages/filter.py`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lawshift import files, filtering, merge, models
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.files import InputError
from lawshift.generation import Completion, HFBackend, PromptResult
from lawshift.params import FilterParams, SampleParams
from lawshift.sampling import (
    Job,
    PartialFile,
    Tally,
    build_prompts,
    case_record,
    file_digest,
    output_path,
    partial_path,
    run_settings,
    sample,
    shard_indices,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lawshift-sample"
CPU = torch.device("cpu")
N_CASES = 7  # odd: the two shards get 4 and 3 cases


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder whose training set is the first N_CASES LawShift training cases."""
    data = tmp_path / "data" / "small"
    data.mkdir(parents=True)
    shutil.copy(SAMPLE / "criminal_law_articles.json", data)
    train = json.loads((SAMPLE / "training_set.json").read_text(encoding="utf-8"))[:N_CASES]
    (data / "training_set.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "outputs").mkdir()
    return tmp_path


def train_file(project: Path) -> Path:
    return project / "data" / "small" / "training_set.json"


class SeedLog:
    """Passes every call on to the real backend and notes the seed it was given."""

    def __init__(self, backend):
        self.backend, self.name, self.seeds = backend, backend.name, []

    def generate(self, prompts, settings, seed):
        self.seeds.append(seed)
        return self.backend.generate(prompts, settings, seed)


@pytest.fixture(scope="module")
def tiny(tiny_base):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from more threads on a shared runner
    yield tiny_base, models.load_tokenizer(str(tiny_base)), models.load_model(str(tiny_base), device=CPU)
    torch.set_num_threads(threads)


def test_two_real_shards_merge_into_every_case_once(tiny, project):
    base, tokenizer, model = tiny
    cases, arts = training_cases(project / "data" / "small"), project / "data" / "small" / "criminal_law_articles.json"
    out = project / "outputs" / "samples.jsonl"
    shard_files, seeds = [], []
    for i in (0, 1):
        sp = SampleParams(num_samples=3, max_new_tokens=32, batch_size=2, seed=7, shard_index=i, num_shards=2)
        indices = shard_indices(len(cases), sp)
        prompts = build_prompts(cases, indices, ArticleLookup(load_articles(arts), str(arts)), tokenizer,
                                train_file(project))
        job = Job(cases, indices, prompts, run_settings(sp, str(base), train_file(project), arts, prompts))
        backend = SeedLog(HFBackend(model, tokenizer, CPU))
        sample(job, backend, sp, output_path(sp, out))
        shard_files.append(output_path(sp, out))
        seeds.append(set(backend.seeds))
    assert [p.name for p in shard_files] == ["samples.shard0-of-2.jsonl", "samples.shard1-of-2.jsonl"]
    assert not seeds[0] & seeds[1]  # the shards of one run draw with different seeds

    tally = merge.merge(shard_files, cases, train_file(project), out)
    merged = out.read_bytes().splitlines(keepends=True)
    recs = [json.loads(x) for x in merged]
    assert [r["index"] for r in recs] == list(range(N_CASES))  # every case once, in training-set order
    assert [r["case_id"] for r in recs] == [c.case_id for c in cases]
    shard_lines = {x for p in shard_files for x in p.read_bytes().splitlines(keepends=True)[1:]}
    assert set(merged) == shard_lines and len(merged) == len(shard_lines)  # records verbatim, headers dropped
    assert tally.cases == N_CASES and tally.answers == 3 * N_CASES
    assert tally.generated_tokens == sum(r["generated_tokens"] for r in recs)
    # the filter stage reads the merged file as it reads a single process's
    outcomes = filtering.run(out, project / "outputs" / "sft.jsonl", FilterParams())
    assert len(outcomes) == N_CASES


# --- refusals ------------------------------------------------------------------------------------------------------

def fake_record(i: int, cases) -> dict:
    answer = Completion("<answer> 盗窃 | 7 </answer>", 9, True)
    return case_record(i, cases[i], f"prompt {i}", PromptResult(11, [answer]))


def write_shard(project: Path, i: int, n: int, indices=None, **changed) -> Path:
    """A finished shard file as a sharded run writes it (header kept), from made-up answers."""
    cases = training_cases(project / "data" / "small")
    sp = SampleParams(shard_index=i, num_shards=n)
    indices = shard_indices(len(cases), sp) if indices is None else indices
    settings = {"model": "m", "training_set": file_digest(train_file(project)), "seed": 42, "prompts": f"p{i}",
                "shard_index": i, "num_shards": n} | changed
    out = output_path(sp, project / "outputs" / "samples.jsonl")
    pf = PartialFile(partial_path(out), settings, {k: cases[k].case_id for k in indices}, Tally())
    pf.append([fake_record(k, cases) for k in indices])
    pf.finalize(out, indices, keep_header=True)
    return out


def run_merge(project: Path, paths: list[Path]):
    cases = training_cases(project / "data" / "small")
    return merge.merge(paths, cases, train_file(project), project / "outputs" / "samples.jsonl")


def test_merge_of_made_up_shards(project):
    assert run_merge(project, [write_shard(project, 1, 2), write_shard(project, 0, 2)]).cases == N_CASES


def corrupt(path: Path) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("{not json\n")


def drop_last_record(path: Path) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))


def strip_header(path: Path) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[1:]))


# (shards to write as (i, n, options), what to do to the last one, message); every case is a real way to go wrong
REFUSALS = [
    ([(0, 2, {})], None, r"samples.shard1-of-2.jsonl: missing: shard 1 of 2"),
    ([(0, 2, {}), (1, 3, {})], None, r"samples.shard1-of-3.jsonl: shard of a 3-shard run, but .* 2-shard run"),
    ([(0, 2, {}), (1, 2, {"seed": 43})], None, r"samples.shard1-of-2.jsonl:1: written with other settings .*\(seed\)"),
    ([(0, 2, {}), (1, 2, {"model": "other"})], None, r"written with other settings .*\(model\)"),
    ([(0, 2, {}), (1, 2, {"indices": [1, 3, 5, 0]})], None, r"shard1-of-2.jsonl:5: case 0 is not this shard's "
                                                            r"\(shard 0's\)"),
    ([(0, 2, {}), (1, 2, {})], drop_last_record, r"shard1-of-2.jsonl: 1 of its 3 cases missing \(5\)"),
    ([(0, 2, {"training_set": "0" * 64}), (1, 2, {"training_set": "0" * 64})], None,
     r"shard0-of-2.jsonl:1: sampled from another training set"),
    ([(0, 2, {}), (1, 2, {})], corrupt, r"shard1-of-2.jsonl:5: corrupt line"),
    ([(0, 2, {}), (1, 2, {})], strip_header, r"shard1-of-2.jsonl:1: no header line"),
]


@pytest.mark.parametrize("shards, damage, message", REFUSALS)
def test_merge_refuses_what_is_not_one_complete_run(project, shards, damage, message):
    paths = []
    for i, n, options in shards:
        changed = {k: v for k, v in options.items() if k != "indices"}
        paths.append(write_shard(project, i, n, options.get("indices"), **changed))
    if damage:
        damage(paths[-1])
    with pytest.raises(InputError, match=message):
        run_merge(project, paths)
    assert not (project / "outputs" / "samples.jsonl").exists()  # nothing half-written


def test_same_shard_twice_and_renamed_shard(project):
    first = write_shard(project, 0, 2)
    second = write_shard(project, 1, 2)
    with pytest.raises(InputError, match="shard 0 given twice"):
        run_merge(project, [first, first, second])
    # the two files' names swapped
    first.rename(first.with_name("swap"))
    second.rename(first)
    first.with_name("swap").rename(second)
    with pytest.raises(InputError, match=r"shard0-of-2.jsonl:1: header says shard 1 of 2, the file name shard 0 of 2"):
        run_merge(project, [first, second])


def test_no_shards_and_the_one_line_error(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "data/small"}}), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        files.run_stage(lambda: merge.main([]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no shard files (samples.shard*-of-*.jsonl) to merge" in err


def test_merged_metrics_sum_counts_and_combine_throughput():
    tally = Tally(cases=7, answers=21, correct=3, generated_tokens=600)
    shard = {"tokens_per_second": 100.0, "backend": "hf", "device": "cpu", "missing_articles": 1,
             "resumed_cases": 2, "wall_seconds": 5.0, "peak_rss_mb": 300.0}
    both = merge.merged_metrics(tally, [shard, shard | {"tokens_per_second": 50.0, "wall_seconds": 9.0}])
    assert both["cases"] == 7 and both["answers_generated"] == 21 and both["shards"] == 2
    assert (both["tokens_per_second"], both["wall_seconds"], both["missing_articles"]) == (150.0, 9.0, 2)
    assert "tokens_per_second" not in merge.merged_metrics(tally, [shard, None])  # a shard's metrics not copied


# --- the documented commands, as separate processes ----------------------------------------------------------------

@pytest.mark.slow
def test_sharded_stage_merge_and_filter(project, tiny_base):
    shutil.copytree(tiny_base, project / "models" / "base")
    params = {"data": {"root": "data/small", "train_articles": "data/small/criminal_law_articles.json"},
              "sample": {"num_samples": 2, "max_new_tokens": 32, "batch_size": 2, "device": "cpu"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    shards = [subprocess.Popen([sys.executable, str(REPO / "stages" / "sample.py"), "--shard-index", str(i),
                                "--num-shards", "2"], cwd=project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for proc in shards:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "once all are: python -m lawshift.merge" in out
    for i in (0, 1):
        assert (project / "metrics" / f"sample.shard{i}-of-2.json").is_file()

    def run(*cmd):
        done = subprocess.run([sys.executable, *cmd], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    run("-m", "lawshift.merge")
    recs = [json.loads(x) for x in (project / "outputs" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in recs] == list(range(N_CASES))
    metrics = json.loads((project / "metrics" / "sample.json").read_text(encoding="utf-8"))
    assert metrics["cases"] == N_CASES and metrics["shards"] == 2 and metrics["tokens_per_second"] > 0
    run(str(REPO / "stages" / "filter.py"))
    assert json.loads((project / "metrics" / "filter.json").read_text(encoding="utf-8"))


def test_shard_settings_differ_only_in_the_shard(project):
    """What the stage fingerprints for two shards of one run differs in the shard index and prompts only."""
    arts = project / "data" / "small" / "criminal_law_articles.json"
    a = run_settings(SampleParams(shard_index=0, num_shards=2), "m", train_file(project), arts, ["x"])
    b = run_settings(dataclasses.replace(SampleParams(), shard_index=1, num_shards=2), "m", train_file(project),
                     arts, ["y"])
    assert {k for k in a if a[k] != b[k]} == set(merge.PER_SHARD)
