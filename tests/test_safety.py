"""Safety with untrusted models and untrusted text.

* Untrusted models: no code path executes what a model repo or a data file contains (a scan of every source file,
  itself tested on snippets); pickle weights load only with `model.allow_pickle`; remote code is off in every
  params file. The context-size guard of each stage is in the bad-input table (tests/test_bad_inputs.py).
* Untrusted text: model answers survive every file the pipeline writes and reads back (parse_answer is fuzzed in
  tests/task/test_answers.py, the markdown report in tests/evaluate/test_report.py).
"""

from __future__ import annotations

import ast
import json
import re
import shutil

import pytest
from conftest import REPO, SAMPLE

from lawshift.core.files import read_jsonl
from lawshift.core.params import ModelParams, load_params
from lawshift.task.answers import format_answer
from lawshift.task.data import training_cases

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
    from lawshift.core.params import FilterParams
    from lawshift.sample.filtering import run
    from lawshift.sample.samples import PartialFile, Tally
    from lawshift.sample.sampling import partial_path
    from lawshift.train.sftdata import read_sft

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
    assert not partial_path(out).exists()

    outcomes = run(out, tmp_path / "sft.jsonl", FilterParams())
    assert [o.kept for o in outcomes] == [1, 1]
    assert [r.response for r in read_sft(tmp_path / "sft.jsonl")] == [t[0] for t in texts]


@pytest.mark.parametrize("noise", NOISE.values(), ids=NOISE.keys())
def test_model_text_survives_the_eval_partial_file(tmp_path, noise):
    from lawshift.evaluate.evaluation import PartialLog

    path = tmp_path / "predictions_base.jsonl.partial"
    log = PartialLog(path, {"run": 1})
    assert log.load() == {}  # a fresh journal
    records = [{"id": f"train/{b}", "answer": f"<answer>{noise}盗窃{noise}|7</answer>{noise}"} for b in range(3)]
    for b, rec in enumerate(records):
        log.append(b, [rec])
    log.journal.close()
    with open(path, "ab") as f:  # a kill tore the next batch inside a 3-byte character
        f.write(json.dumps({"batch": 3, "records": [{"answer": "盗窃"}]}, ensure_ascii=False).encode()[:-5])
    assert PartialLog(path, {"run": 1}).load() == {b: [rec] for b, rec in enumerate(records)}


# ---- untrusted models ------------------------------------------------------------------------------------------

SOURCES = sorted([*(REPO / "lawshift").rglob("*.py"), *(REPO / "stages").glob("*.py")])
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


def test_the_scan_covers_every_module():
    names = {p.relative_to(REPO).as_posix() for p in SOURCES}
    assert {"lawshift/core/journal.py", "lawshift/train/objective.py", "lawshift/core/paths.py",
            "lawshift/train/sftdata.py",
            "lawshift/train/training.py", "lawshift/core/models.py", "stages/eval.py", "stages/train.py"} <= names


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
    assert len(files) >= 2
    for path in files:
        model = load_params(path).model
        assert model.trust_remote_code is False and model.allow_pickle is False, path


def test_pickle_weights_load_only_when_a_param_allows_it(tmp_path, tiny):
    """A repo with only pytorch_model.bin: the tokenizer and config load (no weights in them), the model is refused
    with a message naming model.allow_pickle, and loads once it is allowed."""
    import torch

    from lawshift.core import models
    from lawshift.core.files import InputError

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny.path, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(tiny.model.state_dict(), pickled / "pytorch_model.bin")

    assert models.load_tokenizer(str(pickled)).eos_token == "<|im_end|>"
    assert models.load_config(str(pickled)).max_position_embeddings == 2048
    with pytest.raises(InputError, match=r"field 'model.base': only pickle weights .* model.allow_pickle: true"):
        models.load_model(str(pickled), device=torch.device("cpu"))
    allowed = models.load_model(str(pickled), device=torch.device("cpu"), allow_pickle=True)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(allowed(input_ids=ids).logits, tiny.model(input_ids=ids).logits)
