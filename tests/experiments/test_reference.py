"""lawshift.experiments.reference (make reference): a profile run as a DVC experiment, params.yaml byte-identical
afterwards.

The runs are on the stand-in DVC project of tests/dvc_standin.py, with a stand-in profile (the default params with
another seed, a third round and the tiny base's other warm-start) in place of profiles/reference.yaml.
"""

import json
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import ENV, interrupt_when
from dvc_standin import standin_project

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
