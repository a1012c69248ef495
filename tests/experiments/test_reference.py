"""lawshift.experiments.reference (make reference): a profile run as a DVC experiment, params.yaml byte-identical
afterwards.

The runs are on the stand-in DVC project of tests/dvc_standin.py, with a stand-in profile (the default params with
another seed, a third round and the tiny base's other warm-start) in place of profiles/reference.yaml.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import ENV, REPO, interrupt_when
from dvc_standin import standin_project

from lawshift.core.files import InputError
from lawshift.experiments.compare import runs_from_show
from lawshift.experiments.reference import free_name, overrides


@pytest.mark.parametrize(("taken", "name"), [((), "reference"), (("seed-1",), "reference"),
                                              (("reference",), "reference-2"),
                                              (("reference", "reference-2", "reference-4"), "reference-3")])
def test_free_name(taken, name):
    assert free_name(set(taken)) == name


@pytest.mark.parametrize(("root", "want"), [("/data/LawShift", "/data/LawShift"), ("/data/LawShift/", "/data/LawShift"),
                                             ("LawShift", "LawShift"), ("/", "/")])
def test_overrides(root, want):
    articles = f"{want.rstrip('/')}/criminal_law_articles.json"
    assert overrides(root) == ["-S", f"data.root={want}", "-S", f"data.train_articles={articles}"]


@pytest.fixture
def standin(tmp_path):
    """The stand-in project with a committed stand-in profile, and a LawShift root outside it."""
    root = standin_project(tmp_path / "p")
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["seed"] = 7
    params["model"]["tiny"]["warmup_steps"] = 300
    params["rounds"]["round3"] = {"policy": "round2", "keep_previous": False}
    (root / "profiles").mkdir()
    (root / "profiles" / "reference.yaml").write_text("# stand-in\n" + yaml.safe_dump(params, sort_keys=False),
                                                      encoding="utf-8")
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "profile"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    (tmp_path / "LawShift").mkdir()
    return root, tmp_path / "LawShift"


def reference(root, lawshift, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lawshift.experiments.reference", str(lawshift)], cwd=root,
                          env={**ENV, **env},
                          capture_output=True, text=True, timeout=600)


def experiments(root) -> dict:
    """name -> params of each experiment of HEAD, from `dvc exp show --json`."""
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, env=ENV,
                                      capture_output=True, text=True, check=True).stdout)
    return {r.name: r.params for r in runs_from_show(shown)[2:]}


@pytest.mark.slow
def test_runs_the_profile_and_restores_params(standin):
    root, lawshift = standin
    before = (root / "params.yaml").read_bytes()
    done = reference(root, lawshift)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (root / "params.yaml").read_bytes() == before
    exp = experiments(root)["reference"]
    assert exp["seed"] == 7 and exp["model.tiny.warmup_steps"] == 300 and exp["rounds.round3.policy"] == "round2"
    assert exp["data.root"] == str(lawshift)
    assert exp["data.train_articles"] == f"{lawshift}/criminal_law_articles.json"
    assert "experiment 'reference'" in done.stdout.splitlines()[-1]
    # a second run does not trip over the first's name
    again = reference(root, lawshift)
    assert again.returncode == 0, again.stderr[-2000:]
    assert set(experiments(root)) == {"reference", "reference-2"}
    assert (root / "params.yaml").read_bytes() == before


@pytest.mark.slow
def test_refuses_a_dirty_params_file_and_a_missing_root(standin):
    root, lawshift = standin
    edited = (root / "params.yaml").read_bytes() + b"# an edit\n"
    (root / "params.yaml").write_bytes(edited)
    refused = reference(root, lawshift)
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1 and "params.yaml: uncommitted changes" in refused.stderr
    assert (root / "params.yaml").read_bytes() == edited
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=root, check=True)
    missing = reference(root, lawshift / "nowhere")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1 and "no such directory" in missing.stderr
    assert experiments(root) == {}


@pytest.mark.slow
def test_restores_params_when_the_run_fails(standin):
    root, lawshift = standin
    before = (root / "params.yaml").read_bytes()
    failed = reference(root, lawshift, STANDIN_FAIL="1")
    assert failed.returncode != 0 and "the stand-in stage fails" in failed.stderr
    assert (root / "params.yaml").read_bytes() == before
    assert "params.yaml restored" in failed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_restores_params_when_interrupted(standin, sig, tmp_path):
    """Ctrl-C or SIGTERM to the command while a stage runs: passed on to DVC, which stops the stage and exits (well
    before the stage's two minutes), and params.yaml is back."""
    root, lawshift = standin
    before = (root / "params.yaml").read_bytes()
    held = tmp_path / "held"
    rc = interrupt_when([sys.executable, "-m", "lawshift.experiments.reference", str(lawshift)], root, held.exists, sig,
                        env={**ENV, "STANDIN_HOLD": str(held)}, log=tmp_path / "log", timeout=90)
    assert rc != 0
    assert (root / "params.yaml").read_bytes() == before
    assert "params.yaml restored" in (tmp_path / "log").read_text(encoding="utf-8")


# ---- the stack: GPU (.venv-gpu, vLLM) or CPU, chosen without touching CUDA -----------------------------------------

def test_the_stack_follows_the_gpus_found(tmp_path, monkeypatch):
    from lawshift.experiments import reference

    proc = tmp_path / "gpus"
    (proc / "0000:01:00.0").mkdir(parents=True)
    assert reference.detect_gpus(proc) == (1, str(proc))
    monkeypatch.setattr(reference.shutil, "which", lambda _: None)
    assert reference.detect_gpus(tmp_path / "none") == (0, f"no {tmp_path / 'none'}, no nvidia-smi")
    monkeypatch.setattr(reference, "NVIDIA", proc)
    stack, why = reference.choose_stack({})
    assert stack == "gpu" and "1 NVIDIA GPU(s) found" in why
    assert "the GPU stack (.venv-gpu" in reference.describe(stack, why) and "vLLM" in reference.describe(stack, why)
    monkeypatch.setattr(reference, "NVIDIA", tmp_path / "none")
    assert reference.choose_stack({})[0] == "cpu"
    assert reference.choose_stack({"LAWSHIFT_STACK": "gpu"}) == ("gpu", "LAWSHIFT_STACK=gpu")
    with pytest.raises(InputError, match="LAWSHIFT_STACK: 'tpu': must be cpu or gpu"):
        reference.choose_stack({"LAWSHIFT_STACK": "tpu"})


def test_choosing_the_stack_loads_no_torch():
    """Detecting a GPU must not initialise CUDA: the choice imports neither torch nor vLLM (it reads /proc or runs
    nvidia-smi), so `make reference` holds no CUDA state when the run starts."""
    code = ("import sys; from lawshift.experiments.reference import choose_stack; choose_stack(); "
            "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env={**ENV, "LAWSHIFT_STACK": ""}, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("sets", "needs"), [((), None), (("sample.backend=vllm",), "sample.backend=vllm"),
                                             (("eval.device=cuda:0",), "eval.device=cuda:0"),
                                             (("train.num_train_epochs=1",), None)])
def test_what_needs_a_gpu(tmp_path, sets, needs):
    from lawshift.experiments.reference import needs_gpu

    profile = tmp_path / "p.yaml"
    profile.write_text("sample: {backend: hf, device: auto}\neval: {backend: hf}\n", encoding="utf-8")
    assert needs_gpu(profile, sets) == needs
    profile.write_text("sample: {backend: vllm}\n", encoding="utf-8")
    assert needs_gpu(profile, ["sample.backend=hf"]) is None


WRAPPER = '#!/bin/sh\nPYTHONPATH="{path}" exec "{python}" "$@"\n'


def venv_standin(root, name: str, pythonpath: str) -> None:
    """A venv as make sees it, up to date: bin/python runs this test's interpreter with `pythonpath`."""
    bin_dir = root / name / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(WRAPPER.format(path=pythonpath, python=sys.executable), encoding="utf-8")
    (bin_dir / "python").chmod(0o755)
    (root / name / ".gitignore").write_text("*\n", encoding="utf-8")
    (root / name / ".installed").touch()


@pytest.fixture
def make_standin(standin):
    """The stand-in project with the repository's Makefile, .venv and .venv-gpu up to date: .venv-gpu's python
    finds the stand-in vLLM of tests/vllm_standin, .venv's does not."""
    root, lawshift = standin
    for name in ("Makefile", "requirements.txt", "requirements-gpu.txt", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    venv_standin(root, ".venv", str(REPO))
    venv_standin(root, ".venv-gpu", os.pathsep.join([str(REPO / "tests" / "vllm_standin"), str(REPO)]))
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "make"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root, lawshift


def make_reference(root, lawshift, stack: str, args: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "reference", f"LAWSHIFT={lawshift}", f"ARGS={args}"],
                          cwd=root, env={**ENV, "LAWSHIFT_STACK": stack}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_make_reference_runs_the_gpu_stack_with_vllm_and_passes_overrides_on(make_standin):
    root, lawshift = make_standin
    before = (root / "params.yaml").read_bytes()
    done = make_reference(root, lawshift, "gpu", "-S train.num_train_epochs=1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (chosen,) = [line for line in done.stderr.splitlines() if line.startswith("make reference:")]
    assert "the GPU stack (.venv-gpu" in chosen and "LAWSHIFT_STACK=gpu" in chosen
    exp = experiments(root)["reference"]
    assert (exp["sample.backend"], exp["eval.backend"], exp["train.num_train_epochs"]) == ("vllm", "vllm", 1)
    assert exp["seed"] == 7 and exp["data.root"] == str(lawshift)  # the rest is the profile's
    assert (root / "params.yaml").read_bytes() == before
    # without a GPU: the profile's own backends, in .venv
    cpu = make_reference(root, lawshift, "cpu")
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    assert "the CPU stack (.venv" in cpu.stderr
    assert experiments(root)["reference-2"]["sample.backend"] == "hf"


@pytest.mark.slow
def test_make_reference_refuses_in_one_line(make_standin):
    root, lawshift = make_standin
    asks_vllm = make_reference(root, lawshift, "cpu", "-S sample.backend=vllm")
    assert asks_vllm.returncode != 0
    (line,) = [x for x in asks_vllm.stderr.splitlines() if x.startswith("error:")]
    assert "sample.backend=vllm needs a GPU" in line
    usage = subprocess.run(["make", "--no-print-directory", "reference"], cwd=root, env=ENV, capture_output=True,
                           text=True)
    assert usage.returncode == 2 and usage.stdout.startswith("usage: make reference LAWSHIFT=")
    assert experiments(root) == {}
