"""Bad input, the way researchers meet it: their own data, their own models, their own params.

Every case of the table runs the real stage entry point (`python stages/<stage>.py` in a small project with its own
params.yaml, data and models/base, tests/conftest.py `project`) and must exit 2 with one `error: …` line naming the
file (and the record, field or line), no traceback, and no file written, changed or left behind: no declared output
(as dvc.yaml declares it, `${…}` resolved by DVC itself), no temp file, no partial file.

The helpers that write the inputs of the later stages (`with_samples`, `with_sft`) and `declared_outputs` are also
used by tests/test_kills.py.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ARTICLES, ENV, EV, FOLDER, JUDGE, R1, REPO, ROOT, dump_json, read_json, run_stage, set_params

from lawshift.core import paths
from lawshift.core.files import write_jsonl
from lawshift.task.answers import format_answer
from lawshift.task.data import ArticleLookup, load_articles, training_cases
from lawshift.task.prompts import render_prompt

TRAIN_SET = f"{ROOT}/training_set.json"
SMALL_CONTEXT = 300  # positions of the small-context model: the prompts fit (<= 292 tokens), an answer does not


def snapshot(project: Path) -> dict[str, tuple[int, int]]:
    """Every file under the project with its size and mtime: shows files written, changed, removed or left over."""
    return {p.relative_to(project).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in project.rglob("*") if p.is_file()}


@functools.cache
def _dvc_outputs() -> dict[str, tuple[str, ...]]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {stage.name: tuple(str(out.def_path) for out in stage.outs) for stage in repo.index.stages}


STAGE_NAMES = {"base": "base", "sample": "sample@round1", "filter": "filter@round1", "train": "train@round1",
               "eval": "eval_base"}
TIME_FILES = {"base": paths.BASE_TIME, "sample": R1["sample_time"], "filter": R1["filter_time"],
              "train": R1["train_time"], "eval": EV["base"]["time"]}


def declared_outputs(stage: str) -> list[str]:
    """The outs, metrics and plots dvc.yaml declares for the script `stage` (round1's stage; eval as eval@base),
    with the `${…}` from lawshift/core/paths.py (dvc.yaml's vars) and the rounds resolved by DVC itself."""
    return list(_dvc_outputs()[STAGE_NAMES[stage]])


def test_declared_outputs_are_resolved_paths():
    assert set(declared_outputs("eval")) == {EV["base"][k] for k in ("predictions", "report", "folders_plot",
                                                                      "term_errors_plot", "metrics", "time")}
    live = f"{R1['live']}/plots/metrics"
    assert set(declared_outputs("train")) == {R1["adapter"], f"{live}/loss.tsv", f"{live}/learning_rate.tsv",
                                              R1["train_plot"], R1["train_metrics"], R1["train_time"]}
    for stage in STAGE_NAMES:
        outs = declared_outputs(stage)
        assert outs and not any("${" in out for out in outs), (stage, outs)
        assert TIME_FILES[stage] in outs


# ---- inputs the later stages read ----------------------------------------------------------------------------


def sampled_records(project: Path, right: bool) -> list[dict]:
    """outputs/samples.jsonl records for the project's training cases, two answers each, all right or all wrong."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(project / paths.BASE)
    lookup = ArticleLookup(load_articles(project / ARTICLES), ARTICLES)
    records = []
    for i, case in enumerate(training_cases(project / ROOT)):
        prompt = render_prompt(tokenizer, JUDGE.messages(case.fact, lookup.for_case(case, i)))
        # wrong: another charge and another term, so even a no-violation gold cannot match
        charge, term = (case.charge, case.prison_time) if right else (case.charge + "甲", case.prison_time + 5)
        texts = [f"<think>第{j}种推理。</think>{format_answer(charge, term)}" for j in range(2)]
        answers = [{"text": t, "num_tokens": 20, "finished": True, "parse": None} for t in texts]
        records.append({"index": i, "case_id": case.case_id, **case.to_dict(), "prompt": prompt,
                        "prompt_tokens": 250, "generated_tokens": 40, "answers": answers})
    return records


def with_samples(project: Path, right: bool = True) -> None:
    write_jsonl(project / R1["samples"], sampled_records(project, right))


def with_sft(project: Path) -> None:
    """outputs/sft.jsonl as the real filter stage writes it from right answers."""
    with_samples(project)
    done = run_stage(project, "filter")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (project / R1["sft"]).read_text(encoding="utf-8").count("\n") > 0


# ---- the bad-input table --------------------------------------------------------------------------------------


def edit_json(rel: str, change: Callable) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        data = read_json(project / rel)
        change(data)
        dump_json(project / rel, data)
    return apply


def write_bytes(rel: str, content: bytes) -> Callable[[Path], None]:
    return lambda project: (project / rel).write_bytes(content)


def params(changes: dict) -> Callable[[Path], None]:
    return lambda project: set_params(project, changes)


def remove(rel: str) -> Callable[[Path], None]:
    return lambda project: (project / rel).unlink()


def pickle_only_base(project: Path) -> None:
    """models/base holding its weights as pickle (pytorch_model.bin) instead of safetensors."""
    base = project / paths.BASE
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(b"pickle weights are refused before they are opened")


def small_context(project: Path) -> None:
    edit_json(f"{paths.BASE}/config.json", lambda c: c.update(max_position_embeddings=SMALL_CONTEXT))(project)


def base_pointer(target: str) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        shutil.rmtree(project / paths.BASE)
        dump_json(project / paths.BASE / "base.json", {"name_or_path": target})
    return apply


def corrupt_samples_line(project: Path) -> None:
    with_samples(project)
    path = project / R1["samples"]
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[2] = lines[2][: len(lines[2]) // 2]  # line 3 of 6: cut in half, as a bad copy or a full disk leaves it
    path.write_text("\n".join(lines), encoding="utf-8")


def no_accepted_answers(project: Path) -> None:
    """The real filter stage on answers that are all wrong: it succeeds with an empty outputs/sft.jsonl."""
    with_samples(project, right=False)
    done = run_stage(project, "filter")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (project / R1["sft"]).read_text() == ""
    assert read_json(project / R1["filter_metrics"])["total_accepted"] == 0


def then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        for step in steps:
            step(project)
    return apply


@dataclass(frozen=True)
class Bad:
    id: str
    stage: str
    breaks: Callable[[Path], None]
    expect: tuple[str, ...]  # in the error line, in this order: the file first, then record / field / reason
    env: dict = field(default_factory=dict)  # changes to ENV; None values unset a variable


OFFLINE_UNSET = {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}

TABLE = [
    # the researcher's training data (sample stage)
    Bad("invalid_json", "sample", write_bytes(TRAIN_SET, b'[{"fact": "x",\n'),
        (TRAIN_SET + ":2", "invalid JSON")),
    Bad("not_utf8", "sample", write_bytes(TRAIN_SET, '[{"fact": "被告人"}]'.encode("gb18030")),
        (TRAIN_SET, "not valid UTF-8")),
    Bad("training_set_missing", "sample", remove(TRAIN_SET), (TRAIN_SET, "file not found")),
    Bad("training_set_empty", "sample", write_bytes(TRAIN_SET, b"[]"), (TRAIN_SET, "no cases")),
    Bad("record_without_fact", "sample", edit_json(TRAIN_SET, lambda d: d[2].pop("fact")),
        (TRAIN_SET, "record 2", "field 'fact'", "missing")),
    Bad("prison_time_string", "sample", edit_json(TRAIN_SET, lambda d: d[1].update(prison_time="7")),
        (TRAIN_SET, "record 1", "field 'prison_time'", "'7'")),
    Bad("prison_time_negative", "sample", edit_json(TRAIN_SET, lambda d: d[4].update(prison_time=-3)),
        (TRAIN_SET, "record 4", "field 'prison_time'", "-3")),
    Bad("relevant_articles_not_list", "sample",
        edit_json(TRAIN_SET, lambda d: d[0].update(relevant_articles="354-0-0")),
        (TRAIN_SET, "record 0", "field 'relevant_articles'", "list")),
    Bad("articles_neither_shape", "sample", write_bytes(ARTICLES, b'"354-0-0"'),
        (ARTICLES, "JSON object {id: text} or a list")),
    Bad("unknown_article_strict", "sample", then(
        params({"data": {"strict_articles": True}}),
        edit_json(TRAIN_SET, lambda d: d[3]["relevant_articles"].append("999-9-9"))),
        (TRAIN_SET, "record 3", "field 'relevant_articles'", "'999-9-9'")),
    # params.yaml
    Bad("param_misspelled", "filter", params({"filter": {"term_tolerence": 2}}),
        ("params.yaml", "field 'filter.term_tolerence'", "did you mean 'term_tolerance'")),
    Bad("param_wrong_type", "sample", params({"sample": {"num_samples": "eight"}}),
        ("params.yaml", "field 'sample.num_samples'", "expected int")),
    # models
    Bad("model_path_missing", "eval", base_pointer("./no/such/model"),
        ("./no/such/model", "field 'model.base'", "does not exist")),
    Bad("hub_id_not_cached_offline", "base", then(params({"model": {"base": "lawshift-test/no-such-model"}}),
                                                  lambda project: shutil.rmtree(project / paths.BASE)),
        ("lawshift-test/no-such-model", "field 'model.base'", "local Hugging Face cache"),
        env={**OFFLINE_UNSET, "HF_HOME": "{project}/.hf-empty"}),  # no offline flag set: the stage sets it itself
    Bad("pickle_weights", "sample", pickle_only_base, (paths.BASE, "field 'model.base'", "model.allow_pickle")),
    # the resource guard: the model's context is checked before any work
    Bad("context_sample", "sample", small_context,
        ("params.yaml", "field 'sample.max_new_tokens'", f"context is {SMALL_CONTEXT} tokens")),
    Bad("context_train", "train", then(with_sft, small_context),
        ("params.yaml", "field 'train.max_length'", f"1024 tokens needed but the model's context is {SMALL_CONTEXT}")),
    Bad("context_eval", "eval", small_context,
        ("params.yaml", "field 'eval.max_new_tokens'", f"context is {SMALL_CONTEXT} tokens")),
    # what one stage hands the next
    Bad("samples_corrupt_middle_line", "filter", corrupt_samples_line,
        (f"{R1['samples']}:3", "corrupt JSONL line")),
    Bad("zero_accepted_reaches_train", "train", no_accepted_answers,
        (R1["sft"], "no accepted answers", R1["filter_metrics"])),
    # the benchmark folders (eval stage)
    Bad("folder_missing_poisoned", "eval", remove(f"{ROOT}/{FOLDER}/poisoned.json"),
        (f"{ROOT}/{FOLDER}/poisoned.json", "file not found")),
]


def _case_env(case: Bad, project: Path) -> dict:
    env = dict(ENV)
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value.format(project=project)
    return env


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.slow
@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_bad_input(case, project):
    root = project()
    case.breaks(root)
    before = snapshot(root)
    start = time.monotonic()
    proc = run_stage(root, case.stage, env=_case_env(case, root), timeout=240)
    seconds = time.monotonic() - start
    after = snapshot(root)
    line = error_line(proc.stderr)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert line.startswith(f"error: {case.expect[0]}"), proc.stderr[-3000:]  # the file comes first
    at = 0
    for fragment in case.expect:  # file first, then record / field / reason, in that order
        found = line.find(fragment, at)
        assert found >= 0, f"{fragment!r} not in order in: {line}"
        at = found + len(fragment)
    assert "Retrying" not in proc.stderr  # nothing reached for the network
    # Nothing written, changed, removed or left over: no declared output, no temp file, no partial file.
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    for out in declared_outputs(case.stage):
        assert out not in after and not any(p.startswith(out + "/") for p in after), out
    assert seconds < 120  # a fast, clear failure: no download retries, no model work before the check


def test_table_covers_the_issue():
    """At least 15 cases, and at least one for each kind of bad input the robustness issue lists."""
    ids = {c.id for c in TABLE}
    assert len(TABLE) >= 15 and len(ids) == len(TABLE)
    assert {"invalid_json", "not_utf8", "training_set_missing", "training_set_empty", "record_without_fact",
            "prison_time_string", "prison_time_negative", "relevant_articles_not_list", "articles_neither_shape",
            "unknown_article_strict", "folder_missing_poisoned", "param_misspelled", "param_wrong_type",
            "model_path_missing", "samples_corrupt_middle_line", "zero_accepted_reaches_train", "context_sample",
            "context_train", "context_eval"} <= ids
    assert {c.stage for c in TABLE} == {"base", "sample", "filter", "train", "eval"}  # every stage's entry point
