"""No stale partial reused: a partial result made by other code is never continued.

Every resumable file's header carries the digest of the code that wrote it (lawshift/core/codedeps.py): the sample and
eval journals and the train checkpoints' journal. End to end: the sample stage of a copy of the repository is
killed after it saved some cases, one module it runs is changed in the copy, and the rerun starts afresh and says
why in one line; without the change the rerun continues.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, R1, REPO, interrupt_when, read_json

from lawshift.core import codedeps
from lawshift.core.codedeps import code_digest
from lawshift.core.files import file_digest
from lawshift.task.data import LABELS


def copy_repo(dst: Path) -> Path:
    for part in ("lawshift", "stages"):
        shutil.copytree(REPO / part, dst / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def records(partial: Path) -> int:
    raw = partial.read_bytes() if partial.exists() else b""
    return max(0, raw[:raw.rfind(b"\n") + 1].count(b"\n") - 1)


def kill_after_some_cases(code: Path, root: Path, env: dict) -> None:
    """Run the copy's sample stage in `root` and SIGKILL it the moment the journal holds a case or more."""
    partial = root / (R1["samples"] + ".partial")
    status = interrupt_when([sys.executable, str(code / "stages" / "sample.py")], root,
                            lambda: records(partial) >= 1, signal.SIGKILL, env=env)
    assert status == -signal.SIGKILL and 1 <= records(partial) and not (root / R1["samples"]).exists()


@pytest.mark.slow
@pytest.mark.parametrize("change", [True, False], ids=["code changed", "code as it was"])
def test_a_partial_from_other_code_is_not_continued(project, tmp_path, change):
    root = project(n_train=12, params={"sample": {"num_samples": 4}})
    code = copy_repo(tmp_path / "code")
    env = {**ENV, "PYTHONPATH": str(code)}
    kill_after_some_cases(code, root, env)
    saved = records(root / (R1["samples"] + ".partial"))
    if change:  # a module the sample stage runs, changed in a way that changes no answer
        scoring = code / "lawshift" / "task" / "scoring.py"
        scoring.write_text(scoring.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")
    rerun = subprocess.run([sys.executable, str(code / "stages" / "sample.py")], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    said = [line for line in rerun.stderr.splitlines() if "starting afresh" in line]
    resumed = read_json(root / R1["sample_time"])["resumed_cases"]
    if change:
        assert said == [f"sample: {R1['samples']}.partial: written with different settings (code); starting afresh"]
        assert resumed == 0
    else:
        assert said == [] and resumed == saved
    assert read_json(root / R1["sample_metrics"])["cases"] == 12


def test_every_resumable_header_carries_its_stage_code(tmp_path):
    """The settings each stage journals hold the digest of its code; eval's also the label table's."""
    from lawshift.core.params import Params, SampleParams, TrainParams
    from lawshift.evaluate import evaluation
    from lawshift.sample import sampling
    from lawshift.train import training

    data = tmp_path / "d.json"
    data.write_text("[]", encoding="utf-8")
    assert sampling.run_settings(SampleParams(), "hub/id", data, data, ["p"], 0)["code"] == code_digest("sample")
    assert training.run_settings("hub/id", data, TrainParams(), 0)["code"] == code_digest("train")
    settings = evaluation.run_settings(Params(), [], "hub/id", None)
    assert (settings["code"], settings["labels"]) == (code_digest("eval"), file_digest(LABELS))
    assert "lawshift/task/labels.json" in codedeps.code_files("eval")
