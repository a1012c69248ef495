"""The train stage on N processes: it starts them itself, one per GPU (or CPU share), inside `dvc repro`.

    python stages/train.py round1    # with train.num_processes: 4, four processes, rank 0 writes the outputs

A stage run that is not yet a process of a group (no WORLD_SIZE) and wants N > 1 starts N copies of itself with
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), waits, and turns a failed process into one
line; the others are stopped and no process outlives the stage (each dies with its parent). Multi-node: torchrun on
every node, or `srun` under Slurm (SLURM_* mapped to the same variables), joins the same path (docs/scaling.md).
The params fix the effective batch (per-device x accumulation); N processes share it (`step_layout`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from lawshift.core.files import InputError
from lawshift.core.params import param_error

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT = "LAWSHIFT_TRAIN_PARENT"  # the pid of the stage run that started this process
STOP_SECONDS = 10.0  # how long the other processes get to end after one failed, before SIGKILL


def step_layout(per_device: int, accumulation: int, processes: int) -> tuple[int, int]:
    """(per-device batch, accumulation) per process so that all `processes` together make per_device x accumulation
    answers a step: the largest per-device batch that fits, so accumulation shrinks first."""
    total = per_device * accumulation
    if total % processes:
        raise param_error("train.num_processes", f"{processes} processes cannot share an effective batch of "
                                                 f"{total} answers (train.per_device_train_batch_size {per_device} x "
                                                 f"gradient_accumulation_steps {accumulation})")
    share = total // processes
    micro = max(d for d in range(1, min(per_device, share) + 1) if share % d == 0)
    return micro, share // micro


def slurm_env(env: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables from an `srun` task's SLURM_* ones (nothing when not under srun or already set)."""
    if "WORLD_SIZE" in env or int(env.get("SLURM_NTASKS", "1")) < 2 or "SLURM_PROCID" not in env:
        return {}
    if "MASTER_ADDR" not in env:
        raise InputError("environment", "under srun, export MASTER_ADDR (the first node's host name) for the "
                                        "processes to meet", field="MASTER_ADDR")
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_PORT": env.get("MASTER_PORT", "29500")}


def one_gpu_env(env: Mapping[str, str], gpus: int) -> dict[str, str]:
    """With one process on a machine of several GPUs, show it just the first: the Trainer would otherwise multiply
    the batch by the GPU count (DataParallel, or none at all for a 4-bit model)."""
    if gpus < 2:
        return {}
    visible = env.get("CUDA_VISIBLE_DEVICES")
    return {"CUDA_VISIBLE_DEVICES": visible.split(",")[0] if visible else "0"}


def worker_env(env: Mapping[str, str], rank: int, processes: int, port: int, threads: int | None) -> dict[str, str]:
    """A process's environment: torchrun's variables, and its share of the CPU threads when it trains on CPU."""
    out = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(processes),
           "LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           PARENT: str(os.getpid())}
    if threads is not None and "LAWSHIFT_THREADS" not in env:
        out["LAWSHIFT_THREADS"] = str(threads)  # lawshift/core/numerics.py pins the threads to this share
    return out


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the one that started it ends (a killed stage leaves nothing); a
    parent that ended before the request was made is noticed too. Called first thing in each process."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the stage stops the others itself when it can
    if os.environ.get(PARENT, str(os.getppid())) != str(os.getppid()):
        os._exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(argv: Sequence[str], processes: int, on_cpu: bool, what: str) -> None:
    """Run `argv` (this stage) as `processes` ranks on this machine; a failed rank stops the rest and is an error."""
    threads = max(1, (os.cpu_count() or 1) // processes) if on_cpu else None
    port = free_port()
    print(f"{what}: {processes} processes on {'CPU' if on_cpu else 'one GPU each'}", file=sys.stderr)
    procs = [subprocess.Popen([sys.executable, *argv], env=worker_env(os.environ, rank, processes, port, threads))
             for rank in range(processes)]
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                raise InputError("stage", f"{what}: process {rank} of {processes} ended with exit code {code}; the "
                                          "others were stopped and no adapter was written (a rerun resumes from the "
                                          "last complete checkpoint)")
            if all(code == 0 for code in codes):
                return
            time.sleep(0.2)
    finally:
        stop(procs)


def is_worker(env: Mapping[str, str] = os.environ) -> bool:
    return "WORLD_SIZE" in env
