"""Shared fixtures: the real LawShift sample, one tiny-model fixture and one small-project fixture.

* `tiny_base` (a path) and `tiny` (that model loaded: path, tokenizer, model on the CPU) are the same small tiny
  Qwen2 base, warm-started briefly so it mostly answers in format; built once per session.
* `project` (a factory, `make_project()`) lays out a small project as a stage sees it: the repo's params.yaml with
  small sizes, a LawShift root with the first records of the real files, models/base; optionally dvc.yaml, the
  stage scripts and git, for `dvc repro`.

Every test that runs a subprocess, a stage or a training loop is marked `slow` (those that use the tiny model too, by
the hook below: it is warm-started by a training loop): `pytest -m "not slow"` is the quick loop while editing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import lawshift  # noqa: F401  (first: pins torch's CPU numerics before anything imports torch)
from lawshift.core import paths
from lawshift.task.prompts import load_prompt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A shell starts a background job (`make test &`) with Ctrl-C ignored, and the stages these tests start would inherit
# that: the tests that send SIGINT need it to reach them as it does from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lawshift-sample"
JUDGE_FILE = REPO / "prompts" / "judge.yaml"  # the default judge prompt (params sample.prompt / eval.prompt)
JUDGE = load_prompt(JUDGE_FILE)
FOLDER = "action_explicit_extend"
ROOT = "data/small"  # the small project's LawShift root, relative to the project
ARTICLES = f"{ROOT}/criminal_law_articles.json"
# Sizes that keep each stage run to seconds on the tiny model.
SMALL = {
    "data": {"root": ROOT, "train_articles": ARTICLES},
    "model": {"tiny": {"hidden_size": 64, "intermediate_size": 256, "vocab_size": 2000,
                       "max_position_embeddings": 2048, "warmup_steps": 120}},
    "sample": {"num_samples": 2, "max_new_tokens": 48, "batch_size": 2, "device": "cpu", "min_accepted": 0},
    "train": {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "max_steps": 6, "num_train_epochs": 1,
              "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "warmup_steps": 0,
              "logging_steps": 1, "save_steps": 1, "save_total_limit": 2, "max_length": 1024, "device": "cpu"},
    "eval": {"folders": [FOLDER], "max_new_tokens": 48, "train_subset": 2, "batch_size": 2, "device": "cpu",
             "num_samples": 1, "temperature": 0.0},
    "grpo": {"batch_size": 4, "device": "cpu", "save_steps": 1},  # 2 cases x 2 answers a step
}
# Round 1's files and the eval files of the base and of round 1's model (lawshift/core/paths.py).
R1 = paths.round_files("round1")
EV = {name: paths.eval_files(name) for name in ("base", "round1")}
# Subprocesses: offline, one thread each (the tiny model gains nothing from more; parallel runs would contend),
# this checkout's package first.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO),
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def seeds(prompts, seed: int = 0) -> list[int]:
    """Each prompt's first stream as the stages derive it: prompt i is case i of a run seeded `seed`."""
    from lawshift.engines.generation import stream_seed

    return [stream_seed(seed, i) for i in range(len(prompts))]


class SeedLog:
    """Passes every call on to the real backend and notes the prompts and seeds it was given, call by call."""

    def __init__(self, backend):
        self.backend, self.name, self.device, self.seeds, self.calls = backend, backend.name, "cpu", [], []

    def generate(self, prompts, settings, seeds):
        self.seeds.extend(seeds)
        self.calls.append(list(zip(prompts, seeds, strict=True)))
        return self.backend.generate(prompts, settings, seeds)


class CountingTokenizer:
    """A real tokenizer that records how many texts each call tokenises (the prompt-length guards)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def apply_chat_template(self, *args, **kwargs):
        return self.inner.apply_chat_template(*args, **kwargs)

    def __call__(self, texts, **kwargs):
        self.calls.append(len(texts) if isinstance(texts, list) else 1)
        return self.inner(texts, **kwargs)


def sample_tokenizer(vocab_size: int = 600):
    """A small real tokenizer (the tiny base's kind) trained on the sample and the judge prompt: seconds, no model."""
    from lawshift.train.tiny import build_tokenizer, corpus_texts

    return build_tokenizer(corpus_texts(SAMPLE / "training_set.json", SAMPLE / "criminal_law_articles.json", JUDGE),
                           vocab_size)


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` recursively (in place); returns `base`."""
    for key, value in over.items():
        base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dump_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def set_params(project: Path, changes: dict) -> dict:
    """Merge `changes` into the project's params.yaml; returns the new params."""
    path = Path(project) / "params.yaml"
    params = merge(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, changes)
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return params


def small_root(dst: Path, n_train: int = 6, n_test: int = 4, folders: tuple[str, ...] = (FOLDER,)) -> Path:
    """A LawShift root with the first records of each real file."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE / "criminal_law_articles.json", dst)
    dump_json(dst / "training_set.json", read_json(SAMPLE / "training_set.json")[:n_train])
    for folder in folders:
        for split in ("original", "poisoned"):
            (dst / folder).mkdir(exist_ok=True)
            shutil.copy(SAMPLE / folder / f"articles_{split}.json", dst / folder)
            dump_json(dst / folder / f"{split}.json", read_json(SAMPLE / folder / f"{split}.json")[:n_test])
    return dst


def stage_cmd(stage: str, *args: str) -> list[str]:
    """The command of a stage script of this checkout (`eval` alone means eval@base)."""
    args = args or (("base",) if stage == "eval" else ())
    return [sys.executable, str(REPO / "stages" / f"{stage}.py"), *args]


def run_stage(project: Path, stage: str, *args: str, env: dict | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a stage script in `project` as DVC would (its own process, the project as working directory)."""
    return subprocess.run(stage_cmd(stage, *args), cwd=project, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def interrupt_when(cmd: list[str], cwd: Path, ready: Callable[[], bool], sig: int, env: dict | None = None,
                   log: Path | None = None, timeout: float = 300) -> int:
    """Run `cmd`, freeze it (SIGSTOP) the moment `ready()` holds, then deliver `sig` and let it go on (SIGCONT), so
    the signal lands where the test saw the run, however busy the machine. It runs at normal priority: at the lowest
    a loaded machine starves it past the timeout. Returns its exit status; a run that ends, or outlasts `timeout`,
    before `ready()` holds fails the test with its log's tail."""
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None or not ready():
            proc.kill()
            proc.wait()
            tail = Path(log).read_text(encoding="utf-8")[-2000:] if log else ""
            pytest.fail(f"{cmd[1:]} exited {proc.returncode} before the point the test interrupts at\n{tail}")
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        return proc.wait(timeout=timeout)


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> str:
    """Run a command (dvc, git) in `cwd` with the test environment; fail with its output unless it succeeds."""
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def pytest_collection_modifyitems(items) -> None:
    """A test that needs the tiny model needs its warm-start, a training loop (half a minute on 2 cores): slow,
    like the tests that run a stage or a subprocess."""
    for item in items:
        if "tiny_base" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@dataclass
class Tiny:
    path: Path
    tokenizer: object
    model: object


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The real LawShift records shipped with the repo (read-only: copy before changing)."""
    return SAMPLE


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the LawShift sample."""
    dst = tmp_path / "lawshift"
    shutil.copytree(SAMPLE, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A small tiny Qwen2 base, warm-started briefly so it mostly answers in format. Saved like models/base."""
    from lawshift.core.params import TinyParams
    from lawshift.task.data import ArticleLookup, load_articles, training_cases
    from lawshift.train.tiny import build_model, build_tokenizer, corpus_texts, warm_start

    out = tmp_path_factory.mktemp("tiny_base")
    judge = JUDGE
    spec = TinyParams(vocab_size=2000, hidden_size=64, intermediate_size=256, max_position_embeddings=2048)
    tokenizer = build_tokenizer(corpus_texts(SAMPLE / "training_set.json", SAMPLE / "criminal_law_articles.json",
                                             judge), spec.vocab_size, spec.max_position_embeddings)
    model = build_model(tokenizer, spec, seed=0)
    arts_path = SAMPLE / "criminal_law_articles.json"
    lookup = ArticleLookup(load_articles(arts_path), str(arts_path))
    warm_start(model, tokenizer, training_cases(SAMPLE), lookup, judge, steps=150, batch_size=8, lr=3e-3, noise=0.5,
               seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_base) -> Tiny:
    """`tiny_base` loaded on the CPU (eval mode). Tests that sample with it run torch on one thread: the tiny
    model's matmuls are too small to split, and on a busy 2-core runner threads only contend."""
    import torch

    from lawshift.core import models

    torch.set_num_threads(1)
    device = torch.device("cpu")
    return Tiny(tiny_base, models.load_tokenizer(str(tiny_base)), models.load_model(str(tiny_base), device=device))


@pytest.fixture
def project(tmp_path, tiny_base, monkeypatch) -> Callable[..., Path]:
    """A factory for a small project in a temporary folder, which becomes the working directory:

        root = project()                                  # params.yaml (SMALL sizes), data/small, models/base
        root = project(n_train=12, params={...})          # more cases; more param changes
        root = project(base=False)                        # no models/base
        root = project(dvc=True)                          # + dvc.yaml, stages/, lawshift/ and a git repo: dvc repro
    """
    def make(n_train: int = 6, n_test: int = 4, params: dict | None = None, base: bool = True,
             dvc: bool = False) -> Path:
        root = tmp_path / "project"
        if dvc:  # the tracked files of this checkout, as a clone would have them
            tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
            for rel in tracked.stdout.splitlines():
                if (REPO / rel).is_file() and not rel.startswith(("data/", "models/", "outputs/")):
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / rel, root / rel)
        root.mkdir(exist_ok=True)
        shutil.copytree(REPO / "prompts", root / "prompts", dirs_exist_ok=True)
        small_root(root / ROOT, n_train, n_test)
        if base:
            shutil.copytree(tiny_base, root / "models" / "base")
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        set_params(root, merge(json.loads(json.dumps(SMALL)), params or {}))
        from lawshift.core.params import load_params

        load_params(root / "params.yaml")  # the starting point is valid
        if dvc:
            for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
                subprocess.run(cmd, cwd=root, check=True, capture_output=True)
        monkeypatch.chdir(root)
        return root

    return make
