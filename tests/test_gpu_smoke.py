"""The GPU smoke run (benchmarks/gpu_smoke.py, benchmarks/gpu_probe.py) as a faithful rehearsal of `dvc repro`.

Each stage gets the caller's environment, never what the smoke process gained by importing lawshift, torch or vLLM
(vLLM's import sets PYTORCH_NVML_BASED_CUDA_CHECK, which hid a stage's own CUDA touch); the driver's CUDA version is
checked against the GPU set's before anything else; a failed stage ends the run non-zero, naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ENV, REPO

from benchmarks.gpu_probe import cuda_problem, version_fields

STANDIN = REPO / "tests" / "vllm_standin"
GAINED = ("PYTORCH_NVML_BASED_CUDA_CHECK", "TORCHINDUCTOR_COMPILE_THREADS", "VLLM_WORKER_MULTIPROC_METHOD",
          "MKL_CBWR", "ATEN_CPU_CAPABILITY")


@pytest.mark.slow
def test_a_stage_gets_the_shell_environment_not_what_the_smoke_process_imported(tmp_path):
    shell = {k: v for k, v in ENV.items() if k not in GAINED}
    shell |= {"PYTHONPATH": os.pathsep.join([str(REPO), str(STANDIN)]), "USER_SETTING": "kept"}
    code = ("import json, os, sys; from pathlib import Path; import benchmarks.gpu_smoke as smoke; import vllm, torch; "
            "os.environ['GAINED_LATER'] = '1'; "
            "print(json.dumps({'stage': smoke.stage_env(Path('/scratch')), 'now': dict(os.environ)}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=shell, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert {"PYTORCH_NVML_BASED_CUDA_CHECK", "TORCHINDUCTOR_COMPILE_THREADS", "GAINED_LATER"} <= set(got["now"])
    bin_dir = os.path.dirname(sys.executable)
    assert got["stage"] == {**shell, "PYTHONPATH": os.pathsep.join(["/scratch", shell["PYTHONPATH"]]),
                            "PATH": f"{bin_dir}{os.pathsep}{shell['PATH']}"}


@pytest.mark.parametrize("driver, build, problem", [
    ("13.0", {"torch": "2.14.0+cu130", "cuda": "13.0"}, None),
    ("13.1", {"torch": "2.14.0+cu130", "cuda": "13.0"}, None),
    ("13.0", {"torch": "2.14.0+cu130", "cuda": "13.2"}, None),  # minor-version compatibility
    ("12.8", {"torch": "2.14.0+cu130", "cuda": "13.0"},
     "the NVIDIA driver supports CUDA 12.8, the GPU set (torch 2.14.0+cu130) needs CUDA 13.0: install a driver for "
     "CUDA 13.x or newer"),
    (None, {"torch": "2.14.0+cu130", "cuda": "13.0"},
     "no NVIDIA driver found (NVML, nvidia-smi); the GPU set (torch 2.14.0+cu130) needs one that supports CUDA 13.0"),
    ("13.0", {"torch": "2.13.0+cpu", "cuda": None},
     "torch 2.13.0+cpu is a CPU build; install the GPU set (make gpu-venv)"),
    ("13.0", {}, "torch is not installed here; install the GPU set (make gpu-venv)"),
])
def test_the_driver_is_checked_against_the_gpu_set(driver, build, problem):
    assert cuda_problem(driver, build) == problem


@pytest.mark.parametrize("source, fields", [
    ("__version__ = '2.14.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n",
     {"torch": "2.14.0+cu130", "cuda": "13.0"}),
    ("from typing import Optional\n__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n",
     {"torch": "2.13.0+cpu", "cuda": None}),
])
def test_torch_build_is_read_from_version_py_without_importing_torch(source, fields):
    assert version_fields(source) == fields


@pytest.mark.slow
def test_a_failed_stage_ends_the_run_non_zero_naming_it(tmp_path):
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO), str(STANDIN)])}
    cmd = [sys.executable, "-m", "benchmarks", "gpu_smoke", "--allow-cpu", "--workdir", str(tmp_path / "smoke"),
           "--warmup-steps", "-1", "--out", str(tmp_path / "smoke.json")]  # a warm-start of -1 steps: base fails
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED at base (tiny)" in proc.stdout
    assert "field 'model.tiny.warmup_steps': must be >= 0, got -1" in proc.stderr
    result = json.loads((tmp_path / "smoke.json").read_text(encoding="utf-8"))
    assert result["failed"] == "base (tiny)" and result["stages"] == [] and result["vllm"] == "0.0.0+cpu.standin"
