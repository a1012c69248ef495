"""lawshift/train/launch.py: the effective batch shared by N processes, torchrun's variables from Slurm's, one GPU
for one process, and real processes started, a failed one stopping the rest in one line."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from lawshift.core.files import InputError
from lawshift.train.launch import launch, one_gpu_env, slurm_env, step_layout, worker_env


@pytest.mark.parametrize("per_device, accumulation, processes, want", [
    (4, 1, 1, (4, 1)), (4, 1, 2, (2, 1)), (4, 1, 4, (1, 1)),
    (2, 8, 1, (2, 8)), (2, 8, 4, (2, 2)), (2, 8, 8, (2, 1)), (2, 8, 16, (1, 1)),  # accumulation gives way first
    (6, 1, 4, None), (4, 1, 3, None), (3, 2, 2, (3, 1)),
    (4, 3, 2, (3, 2)),  # the largest per-device batch dividing the share
])
def test_processes_share_the_effective_batch_the_params_fix(per_device, accumulation, processes, want):
    if want is None:
        with pytest.raises(InputError, match=rf"train.num_processes.*{processes} processes cannot share .* "
                                             rf"{per_device * accumulation} answers"):
            step_layout(per_device, accumulation, processes)
        return
    micro, accum = step_layout(per_device, accumulation, processes)
    assert (micro, accum) == want
    assert micro * accum * processes == per_device * accumulation and micro <= per_device


@pytest.mark.parametrize("env, want", [
    ({}, {}),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, {}),  # one task: plain one-process run
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n01"},
     {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_PORT": "29500"}),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "MASTER_ADDR": "n01", "MASTER_PORT": "4000"},
     {"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "MASTER_PORT": "4000"}),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "WORLD_SIZE": "8"}, {}),  # torchrun inside srun already set them
])
def test_slurm_tasks_become_torchrun_ranks(env, want):
    assert slurm_env(env) == want


def test_srun_without_master_addr_is_one_line():
    with pytest.raises(InputError, match="MASTER_ADDR"):
        slurm_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


@pytest.mark.parametrize("env, gpus, want", [
    ({}, 0, {}), ({}, 1, {}), ({}, 8, {"CUDA_VISIBLE_DEVICES": "0"}),
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, 2, {"CUDA_VISIBLE_DEVICES": "3"}),
])
def test_one_process_sees_one_gpu(env, gpus, want):
    assert one_gpu_env(env, gpus) == want


def test_worker_env_names_its_rank_and_shares_the_cpu_threads():
    env = worker_env({"PATH": "/bin"}, 1, 2, 1234, threads=3)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "LAWSHIFT_THREADS", "PATH")} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1234", "LAWSHIFT_THREADS": "3",
        "PATH": "/bin"}
    assert env["LAWSHIFT_TRAIN_PARENT"] == str(os.getpid())  # each process checks its parent is still this one
    assert worker_env({"LAWSHIFT_THREADS": "7"}, 0, 2, 1, threads=3)["LAWSHIFT_THREADS"] == "7"  # the user's choice
    assert "LAWSHIFT_THREADS" not in worker_env({}, 0, 2, 1, threads=None)  # GPU processes


def test_every_process_runs_with_its_rank(tmp_path):
    code = f"import os; open(os.path.join({str(tmp_path)!r}, os.environ['RANK']), 'w').write(os.environ['WORLD_SIZE'])"
    launch(["-c", code], 3, on_cpu=True, what="t")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"0": "3", "1": "3", "2": "3"}


def test_a_failed_process_stops_the_others_in_one_line(tmp_path):
    code = (f"import os, sys, time\nopen(os.path.join({str(tmp_path)!r}, str(os.getpid())), 'w')\n"
            "if os.environ['RANK'] == '1': time.sleep(0.5); sys.exit(3)\ntime.sleep(600)\n")
    start = time.monotonic()
    with pytest.raises(InputError, match="t: process 1 of 2 ended with exit code 3; the others were stopped") as err:
        launch(["-c", code], 2, on_cpu=True, what="t")
    assert "\n" not in str(err.value) and time.monotonic() - start < 60
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(pids) == 2 and not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                                      for pid in pids)
