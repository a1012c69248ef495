"""Robustness and safety, the way researchers meet them: their own data, their own models, runs left for hours.

* Bad input: every case of the table runs the real stage (`python stages/<stage>.py` in a temporary project with its
  own params.yaml, data and models/base) and must exit non-zero with one `error: …` line naming the file (and the
  record, field or line), no traceback, and no file written, changed or left behind.
* Kills: the train and eval stages are SIGKILLed for real once they have written progress (a checkpoint, a batch of
  predictions); nothing DVC would take for a result is left, and the rerun ends where an uninterrupted run ends.
  The sample stage's kill test is tests/test_sampling.py::test_ctrl_c_then_sigkill_then_rerun_yields_every_case_once.
* Untrusted text: model answers survive every file the pipeline writes and reads back (parse_answer is fuzzed in
  tests/test_answers.py, the markdown report in tests/test_report.py).
* Untrusted models: no code paths that execute what a model repo or a data file contains; pickle weights only with
  `model.allow_pickle`; the context-size guard of each stage is in the bad-input table.

The stage runs of the table are started together (a few at a time) and each case then checks its own result.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lawshift.answers import format_answer
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.files import read_jsonl, write_jsonl
from lawshift.params import ModelParams, load_params
from lawshift.prompts import build_messages, render_prompt

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lawshift-sample"
FOLDER = "action_explicit_extend"
ROOT = "data/small"
TRAIN_SET = f"{ROOT}/training_set.json"
ARTICLES = f"{ROOT}/criminal_law_articles.json"
SMALL_CONTEXT = 300  # positions of the small-context model: the prompts fit (<= 292 tokens), an answer does not

# Sizes that keep each stage run to seconds on the tiny model (cf. tests/test_pipeline.py).
OVERRIDES = {
    "data": {"root": ROOT, "train_articles": ARTICLES},
    "sample": {"num_samples": 2, "max_new_tokens": 48, "batch_size": 2, "device": "cpu"},
    "train": {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "max_steps": 6, "per_device_train_batch_size": 2,
              "gradient_accumulation_steps": 1, "warmup_steps": 0, "logging_steps": 1, "save_steps": 1,
              "save_total_limit": 2, "max_length": 1024, "device": "cpu"},
    "eval": {"folders": [FOLDER], "max_new_tokens": 48, "train_subset": 2, "batch_size": 2, "device": "cpu"},
}
# One thread per run: the tiny model gains nothing from more, and parallel runs would only contend.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def _merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def set_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = _merge(yaml.safe_load(path.read_text(encoding="utf-8")), changes)
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def make_project(root: Path, base: Path, n_train: int = 6, n_test: int = 4) -> Path:
    """A project as a stage sees it: the repo's params.yaml with small sizes, a small LawShift root (the first
    records of the real files), models/base. Stage scripts run from the repo, with this as working directory."""
    data = root / ROOT
    (data / FOLDER).mkdir(parents=True)
    shutil.copy(SAMPLE / "criminal_law_articles.json", data)
    dump(data / "training_set.json", read(SAMPLE / "training_set.json")[:n_train])
    for split in ("original", "poisoned"):
        shutil.copy(SAMPLE / FOLDER / f"articles_{split}.json", data / FOLDER)
        dump(data / FOLDER / f"{split}.json", read(SAMPLE / FOLDER / f"{split}.json")[:n_test])
    shutil.copytree(base, root / "models" / "base")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    set_params(root, OVERRIDES)
    load_params(root / "params.yaml")  # the starting point is valid: each case breaks exactly one thing
    return root


def stage_cmd(stage: str) -> list[str]:
    return [sys.executable, str(REPO / "stages" / f"{stage}.py"), *(["base"] if stage == "eval" else [])]


def run_stage(project: Path, stage: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(stage_cmd(stage), cwd=project, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(project: Path) -> dict[str, tuple[int, int]]:
    """Every file under the project with its size and mtime: shows files written, changed, removed or left over."""
    return {p.relative_to(project).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in project.rglob("*") if p.is_file()}


def declared_outputs(stage: str) -> list[str]:
    """The outs and metrics dvc.yaml declares for `stage` (eval as eval@base)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    spec = spec.get("do", spec)
    entries = [next(iter(e)) if isinstance(e, dict) else e for e in spec.get("outs", []) + spec.get("metrics", [])]
    return [e.replace("${key}", "base") for e in entries]


# ---- inputs the later stages read ----------------------------------------------------------------------------


def sampled_records(project: Path, right: bool) -> list[dict]:
    """outputs/samples.jsonl records for the project's training cases, two answers each, all right or all wrong."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(project / "models" / "base")
    lookup = ArticleLookup(load_articles(project / ARTICLES), ARTICLES)
    records = []
    for i, case in enumerate(training_cases(project / ROOT)):
        prompt = render_prompt(tokenizer, build_messages(case.fact, lookup.for_case(case, i)))
        # wrong: another charge and another term, so even a no-violation gold cannot match
        charge, term = (case.charge, case.prison_time) if right else (case.charge + "甲", case.prison_time + 5)
        texts = [f"<think>第{j}种推理。</think>{format_answer(charge, term)}" for j in range(2)]
        answers = [{"text": t, "num_tokens": 20, "finished": True, "parse": None} for t in texts]
        records.append({"index": i, "case_id": case.case_id, **case.to_dict(), "prompt": prompt,
                        "prompt_tokens": 250, "generated_tokens": 40, "answers": answers})
    return records


def with_samples(project: Path, right: bool = True) -> None:
    write_jsonl(project / "outputs" / "samples.jsonl", sampled_records(project, right))


def with_sft(project: Path) -> None:
    """outputs/sft.jsonl as the real filter stage writes it from right answers."""
    with_samples(project)
    done = run_stage(project, "filter")
    assert done.returncode == 0, done.stderr[-2000:]


# ---- the bad-input table --------------------------------------------------------------------------------------


def edit_json(rel: str, change: Callable) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        data = read(project / rel)
        change(data)
        dump(project / rel, data)
    return apply


def write_bytes(rel: str, content: bytes) -> Callable[[Path], None]:
    return lambda project: (project / rel).write_bytes(content)


def params(changes: dict) -> Callable[[Path], None]:
    return lambda project: set_params(project, changes)


def remove(rel: str) -> Callable[[Path], None]:
    return lambda project: (project / rel).unlink()


def pickle_only_base(project: Path) -> None:
    """models/base holding its weights as pickle (pytorch_model.bin) instead of safetensors."""
    base = project / "models" / "base"
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(b"pickle weights are refused before they are opened")


def small_context(project: Path) -> None:
    edit_json("models/base/config.json", lambda c: c.update(max_position_embeddings=SMALL_CONTEXT))(project)


def base_pointer(target: str) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        shutil.rmtree(project / "models" / "base")
        dump(project / "models" / "base" / "base.json", {"name_or_path": target})
    return apply


def corrupt_samples_line(project: Path) -> None:
    with_samples(project)
    path = project / "outputs" / "samples.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[2] = lines[2][: len(lines[2]) // 2]  # line 3 of 6: cut in half, as a bad copy or a full disk leaves it
    path.write_text("\n".join(lines), encoding="utf-8")


def no_accepted_answers(project: Path) -> None:
    """The real filter stage on answers that are all wrong: it succeeds with an empty outputs/sft.jsonl."""
    with_samples(project, right=False)
    done = run_stage(project, "filter")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (project / "outputs" / "sft.jsonl").read_text() == ""
    assert read(project / "metrics" / "filter.json")["total_accepted"] == 0


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
                                                  lambda project: shutil.rmtree(project / "models" / "base")),
        ("lawshift-test/no-such-model", "field 'model.base'", "local Hugging Face cache only"),
        env={**OFFLINE_UNSET, "HF_HOME": "{project}/.hf-empty"}),  # no offline flag set: the stage sets it itself
    Bad("pickle_weights", "sample", pickle_only_base, ("models/base", "field 'model.base'", "model.allow_pickle")),
    # the resource guard: the model's context is checked before any work
    Bad("context_sample", "sample", small_context,
        ("params.yaml", "field 'sample.max_new_tokens'", f"context is {SMALL_CONTEXT} tokens")),
    Bad("context_train", "train", then(with_sft, small_context),
        ("params.yaml", "field 'train.max_length'", f"1024 tokens needed but the model's context is {SMALL_CONTEXT}")),
    Bad("context_eval", "eval", small_context,
        ("params.yaml", "field 'eval.max_new_tokens'", f"context is {SMALL_CONTEXT} tokens")),
    # what one stage hands the next
    Bad("samples_corrupt_middle_line", "filter", corrupt_samples_line,
        ("outputs/samples.jsonl:3", "corrupt JSONL line")),
    Bad("zero_accepted_reaches_train", "train", no_accepted_answers,
        ("outputs/sft.jsonl", "no accepted answers", "metrics/filter.json")),
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


def _run_case(case: Bad, project: Path, base: Path) -> tuple:
    make_project(project, base)
    case.breaks(project)
    before = snapshot(project)
    start = time.monotonic()
    proc = run_stage(project, case.stage, env=_case_env(case, project), timeout=240)
    return proc, before, snapshot(project), time.monotonic() - start


@pytest.fixture(scope="module")
def table_runs(tiny_base, tmp_path_factory, request) -> dict[str, Future]:
    """Starts the stage run of every selected table case, two at a time (the CI runner has 2 cores)."""
    chosen = {item.callspec.params["case"].id for item in request.session.items
              if item.module is request.module and item.originalname == "test_bad_input"}
    root = tmp_path_factory.mktemp("bad_input")
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {case.id: pool.submit(_run_case, case, root / case.id, tiny_base) for case in TABLE if case.id in chosen}
    yield runs
    pool.shutdown(cancel_futures=True)


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.slow
@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_bad_input(case, table_runs):
    proc, before, after, seconds = table_runs[case.id].result()
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
    assert len(TABLE) >= 15
    assert {"invalid_json", "not_utf8", "training_set_missing", "training_set_empty", "record_without_fact",
            "prison_time_string", "prison_time_negative", "relevant_articles_not_list", "articles_neither_shape",
            "unknown_article_strict", "folder_missing_poisoned", "param_misspelled", "param_wrong_type",
            "model_path_missing", "samples_corrupt_middle_line", "zero_accepted_reaches_train", "context_sample",
            "context_train", "context_eval"} <= ids


# ---- killed for real -------------------------------------------------------------------------------------------


def kill_when(project: Path, stage: str, ready: Callable[[], bool], timeout: float = 240) -> str:
    """Start the stage, SIGKILL it as soon as `ready()` holds; returns its output. Fails if it ended by itself."""
    log_path = project / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(stage_cmd(stage), cwd=project, env=ENV, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        status = proc.wait()
    output = log_path.read_text()
    log_path.unlink()
    assert status == -signal.SIGKILL, f"the stage was not killed mid-run (exit {status}):\n{output[-3000:]}"
    return output


def start(project: Path, stage: str) -> subprocess.Popen:
    """The stage in the background, its output in <project>/<stage>.log (a pipe nobody reads would stall it)."""
    with open(project / f"{stage}.log", "w") as log:
        return subprocess.Popen(stage_cmd(stage), cwd=project, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, project: Path, stage: str) -> None:
    status = proc.wait(timeout=300)
    assert status == 0, (project / f"{stage}.log").read_text()[-3000:]


def temp_leftovers(project: Path) -> list[str]:
    return sorted(p.relative_to(project).as_posix() for p in project.rglob(".*.tmp"))


def loss_rows(project: Path) -> list[tuple[int, float]]:
    path = project / "dvclive" / "train" / "plots" / "metrics" / "loss.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    return [(int(r["step"]), float(r["loss"])) for r in rows]


@pytest.mark.slow
def test_train_killed_at_a_checkpoint_resumes_to_the_uninterrupted_adapter(tmp_path, tiny_base):
    import torch
    from safetensors.torch import load_file

    killed, straight = (make_project(tmp_path / name, tiny_base) for name in ("killed", "straight"))
    for project in (killed, straight):
        with_sft(project)
    steps = OVERRIDES["train"]["max_steps"]
    reference = start(straight, "train")  # the uninterrupted run, alongside

    ckpts = killed / "checkpoints" / "sft"
    kill_when(killed, "train", lambda: any(ckpts.glob("checkpoint-*/trainer_state.json")))
    # Killed after its first checkpoint: no adapter, no metrics, nothing half-written that DVC could record.
    assert not (killed / "models" / "sft").exists() and not (killed / "metrics" / "train.json").exists()
    assert temp_leftovers(killed) == []

    rerun = run_stage(killed, "train")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    finish(reference, straight, "train")
    metrics = read(killed / "metrics" / "train.json")
    assert metrics["resumed_from"].startswith("checkpoint-") and metrics["steps"] == steps
    assert read(straight / "metrics" / "train.json")["resumed_from"] is None
    # The same adapter as the run that was never interrupted, and one loss curve with every step once.
    resumed, reference_weights = (load_file(p / "models" / "sft" / "adapter_model.safetensors")
                                  for p in (killed, straight))
    assert resumed.keys() == reference_weights.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], reference_weights[key])
    curve, reference_curve = loss_rows(killed), loss_rows(straight)
    assert [s for s, _ in curve] == list(range(1, steps + 1)) == [s for s, _ in reference_curve]
    assert [loss for _, loss in curve] == pytest.approx([loss for _, loss in reference_curve], rel=1e-4)
    assert not ckpts.exists() and temp_leftovers(killed) == []


def test_what_a_kill_tears_in_the_train_files_is_dropped_on_resume(tmp_path):
    """A kill can cut short the last checkpoint's trainer_state.json, the fingerprint marker, or a DVCLive row."""
    from lawshift.training import prepare_checkpoints, truncate_live

    ckpt = tmp_path / "checkpoints" / "sft"
    assert prepare_checkpoints(ckpt, "fp") is None
    for step, state in ((2, '{"global_step": 2}'), (3, '{"global_st')):  # checkpoint-3: killed while saving
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert prepare_checkpoints(ckpt, "fp") == ckpt / "checkpoint-2"
    (ckpt / "fingerprint.json").write_text('{"fingerp')  # unreadable: nothing here can be trusted to match
    assert prepare_checkpoints(ckpt, "fp") is None and not list(ckpt.glob("checkpoint-*"))
    assert prepare_checkpoints(ckpt, "fp") is None  # and the new marker is whole

    metrics = tmp_path / "dvclive" / "train" / "plots" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "loss.tsv").write_text("timestamp\tstep\tloss\n1\t1\t2.5\n2\t2\t2.25\n3\t3\t2.0\n4\t")
    truncate_live(tmp_path / "dvclive" / "train", 2)
    assert (metrics / "loss.tsv").read_text() == "timestamp\tstep\tloss\n1\t1\t2.5\n2\t2\t2.25\n"
    assert temp_leftovers(tmp_path) == []


def prediction_outputs(project: Path) -> dict[str, bytes]:
    """eval@base's results as dvc.yaml declares them, with their bytes (None where absent).

    The stage's time record (metrics/eval_base_time.json) is declared too; it is a result only in that it exists.
    """
    outs = {out: (project / out).read_bytes() if (project / out).is_file() else None
            for out in declared_outputs("eval")}
    timing = outs.pop("metrics/eval_base_time.json")
    return outs | {"metrics/eval_base_time.json": None if timing is None else b"present"}


@pytest.mark.slow
def test_eval_killed_mid_run_resumes_to_the_uninterrupted_predictions(tmp_path, tiny_base):
    killed, straight = (make_project(tmp_path / name, tiny_base) for name in ("killed", "straight"))
    reference = start(straight, "eval")
    partial = killed / "outputs" / "predictions_base.jsonl.partial"

    def batches_saved() -> int:  # complete lines after the header
        raw = partial.read_bytes() if partial.is_file() else b""
        return max(raw.count(b"\n") - 1, 0)

    kill_when(killed, "eval", lambda: batches_saved() >= 1)
    saved = batches_saved()
    assert saved >= 1 and all(v is None for v in prediction_outputs(killed).values())
    assert temp_leftovers(killed) == []

    rerun = run_stage(killed, "eval")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    finish(reference, straight, "eval")
    # Greedy decoding: the resumed run's predictions, metrics, report and plots are the uninterrupted run's, byte
    # for byte, and the partial file is gone.
    outputs = prediction_outputs(killed)
    assert all(v is not None for v in outputs.values()) and outputs == prediction_outputs(straight)
    predictions = [json.loads(line) for line in outputs["outputs/predictions_base.jsonl"].splitlines()]
    assert len(predictions) == len({p["id"] for p in predictions}) == 2 * 4 + 2  # every prompt exactly once
    assert not partial.exists() and temp_leftovers(killed) == []


# ---- untrusted text --------------------------------------------------------------------------------------------

# Line ends json.dumps(ensure_ascii=False) leaves raw but str.splitlines() splits at, other line ends, pipes, tags.
NOISE = {"line_separator": "\u2028", "paragraph_separator": "\u2029", "next_line": "\x85", "vertical_tab": "\x0b",
         "form_feed": "\x0c", "file_group_record_separators": "\x1c\x1d\x1e", "cr": "\r", "crlf": "\r\n",
         "blank_line": "\n\n", "table_pipes": "| 盗窃 | 7 |", "nested_tags": "<answer><answer>x</answer>"}


def sample_record(index: int, case, texts: list[str]) -> dict:
    answers = [{"text": t, "num_tokens": 9, "finished": True, "parse": None} for t in texts]
    return {"index": index, "case_id": case.case_id, **case.to_dict(), "prompt": f"prompt {index}",
            "prompt_tokens": 5, "generated_tokens": 9 * len(texts), "answers": answers}


@pytest.mark.parametrize("noise", NOISE.values(), ids=NOISE.keys())
def test_model_text_survives_sample_filter_and_train_files(tmp_path, noise):
    """An answer holding any of these goes through samples.jsonl.partial -> samples.jsonl -> sft.jsonl and is read
    back unchanged, where a splitlines() reader would report a corrupt line or cut the record."""
    from lawshift.filtering import run
    from lawshift.params import FilterParams
    from lawshift.sampling import PartialFile, Tally, partial_path
    from lawshift.training import read_sft

    cases = training_cases(SAMPLE)[:2]
    texts = [[f"<think>{noise}先看{noise}事实</think>{format_answer(c.charge, c.prison_time)}"] for c in cases]
    out = tmp_path / "samples.jsonl"
    ids = {i: c.case_id for i, c in enumerate(cases)}
    first = PartialFile(partial_path(out), {"run": 1}, ids, Tally())
    first.append([sample_record(0, cases[0], texts[0])])
    first.close()
    resumed = PartialFile(partial_path(out), {"run": 1}, ids, Tally())  # read back after an interruption
    assert resumed.resumed == 1
    resumed.append([sample_record(1, cases[1], texts[1])])
    resumed.finalize(out, [0, 1])
    assert [rec["answers"][0]["text"] for _, rec in read_jsonl(out)] == [t[0] for t in texts]

    outcomes = run(out, tmp_path / "sft.jsonl", FilterParams())
    assert [o.kept for o in outcomes] == [1, 1]
    assert [r.response for r in read_sft(tmp_path / "sft.jsonl")] == [t[0] for t in texts]


@pytest.mark.parametrize("noise", NOISE.values(), ids=NOISE.keys())
def test_model_text_survives_the_eval_partial_file(tmp_path, noise):
    from lawshift.evaluation import PartialLog

    log = PartialLog(tmp_path / "predictions_base.jsonl.partial", "fp")
    log.start({})
    records = [{"id": f"train/{b}", "answer": f"<answer>{noise}盗窃{noise}|7</answer>{noise}"} for b in range(3)]
    for b, rec in enumerate(records):
        log.append(b, [rec])
    with open(log.path, "ab") as f:  # a kill tore the next batch inside a 3-byte character
        f.write(json.dumps({"batch": 3, "records": [{"answer": "盗窃"}]}, ensure_ascii=False).encode()[:-5])
    assert PartialLog(log.path, "fp").load() == {b: [rec] for b, rec in enumerate(records)}


# ---- untrusted models ------------------------------------------------------------------------------------------

SOURCES = sorted([*(REPO / "lawshift").glob("*.py"), *(REPO / "stages").glob("*.py")])
UNSAFE_TEXT = {
    "yaml.load (use yaml.safe_load)": re.compile(
        r"\byaml\.(?:load|load_all|unsafe_load|unsafe_load_all|full_load|full_load_all)\(|yaml\.(?:Unsafe|Full)?Loader\b"),
    "pickle and friends": re.compile(r"^\s*(?:import|from)\s+(?:pickle|cPickle|_pickle|dill|cloudpickle|joblib|shelve|"
                                     r"marshal)\b|\b(?:pickle|dill|cloudpickle|joblib|marshal)\.loads?\(", re.M),
    "eval/exec/compile of text": re.compile(r"(?<![\w.])(?:eval|exec|compile|__import__)\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True\b"),
    "weights_only=False": re.compile(r"weights_only\s*=\s*False\b"),
    "use_safetensors=False": re.compile(r"use_safetensors\s*=\s*False\b"),
}
OFF_BY_DEFAULT = ("trust_remote_code", "allow_pickle")


def _is_false(node: ast.expr | None) -> bool:
    return node is None or (isinstance(node, ast.Constant) and node.value is False)


def unsafe_uses(source: str) -> list[str]:
    """What in `source` could run code from a model repo or a data file, by name."""
    found = [name for name, pattern in UNSAFE_TEXT.items() if pattern.search(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                found.append(f"torch.load without weights_only=True (line {node.lineno})")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            defaults = [None] * (len(positional) - len(a.defaults)) + a.defaults
            for arg, default in [*zip(positional, defaults, strict=True), *zip(a.kwonlyargs, a.kw_defaults,
                                                                                 strict=True)]:
                if arg.arg in OFF_BY_DEFAULT and not _is_false(default):
                    found.append(f"{node.name}({arg.arg}=...) not off by default (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[p.relative_to(REPO).as_posix() for p in SOURCES])
def test_source_runs_no_code_from_models_or_data(path):
    assert unsafe_uses(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("snippet,flagged", [
    ("raw = yaml.load(text)", True),
    ("raw = yaml.load(text, Loader=yaml.Loader)", True),
    ("raw = yaml.safe_load(text)", False),
    ("import pickle", True),
    ("state = pickle.loads(blob)", True),
    ("allow_pickle = p.model.allow_pickle", False),
    ("value = eval(expr)", True),
    ("exec(code)", True),
    ("model.eval()", False),
    ("spec.loader.exec_module(module)", False),
    ("pattern = re.compile(r'x')", False),
    ("m = AutoModel.from_pretrained(p, trust_remote_code=True)", True),
    ("m = AutoModel.from_pretrained(p, trust_remote_code=trust_remote_code)", False),
    ("state = torch.load(f)", True),
    ("state = torch.load(f, weights_only=False)", True),
    ("state = torch.load(f, map_location='cpu', weights_only=True)", False),
    ("def load(path, trust_remote_code=True): pass", True),
    ("def load(path, *, allow_pickle: bool = True): pass", True),
    ("def load(path, *, allow_pickle: bool, trust_remote_code: bool = False): pass", False),
])
def test_the_source_check_catches_what_it_looks_for(snippet, flagged):
    assert bool(unsafe_uses(snippet)) is flagged


def test_remote_code_and_pickle_are_off_in_every_params_file():
    assert ModelParams().trust_remote_code is False and ModelParams().allow_pickle is False
    files = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]
    for path in files:
        model = load_params(path).model
        assert model.trust_remote_code is False and model.allow_pickle is False, path


def test_pickle_weights_load_only_when_a_param_allows_it(tmp_path, tiny_base):
    """A repo with only pytorch_model.bin: the tokenizer loads (no weights in it), the model is refused with a
    message naming model.allow_pickle, and loads once it is allowed."""
    import torch

    from lawshift import models
    from lawshift.files import InputError

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_base, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    safe = models.load_model(str(tiny_base), device=torch.device("cpu"))
    torch.save(safe.state_dict(), pickled / "pytorch_model.bin")

    assert models.load_tokenizer(str(pickled)).eos_token == "<|im_end|>"
    with pytest.raises(InputError, match=r"field 'model.base': only pickle weights .* model.allow_pickle: true"):
        models.load_model(str(pickled), device=torch.device("cpu"))
    allowed = models.load_model(str(pickled), device=torch.device("cpu"), allow_pickle=True)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(allowed(input_ids=ids).logits, safe(input_ids=ids).logits)
