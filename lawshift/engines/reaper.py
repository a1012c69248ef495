"""Leaves no Ray process behind a killed stage: watches the driver, then kills what it had started.

    python -m lawshift.engines.reaper DRIVER_PID      # started by lawshift.engines.raypool, in a session of its own

While the driver lives, it notes every process below it (Ray's gcs_server, raylet, agents and workers) every
POLL seconds; once the driver is gone (SIGKILL included, which runs no cleanup of Ray's own), it kills the noted
processes still alive and the processes below them. Ray's agents outlive a SIGKILLed driver without it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import psutil

POLL = 0.2  # seconds between looks at the driver's process tree


def tree(proc: psutil.Process) -> dict[int, float]:
    """Every process below `proc`, as {pid: create time} (the time tells a reused pid from the one noted)."""
    out = {}
    for child in proc.children(recursive=True):
        if child.pid == os.getpid():  # the reaper is below the driver too
            continue
        try:
            out[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return out


def alive(noted: dict[int, float]) -> list[psutil.Process]:
    """The noted processes still running as themselves, and everything now below them."""
    found = {}
    for pid, created in noted.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                found[pid] = proc
                found |= {c.pid: c for c in proc.children(recursive=True)}
        except psutil.Error:
            continue
    return list(found.values())


def reap(noted: dict[int, float]) -> int:
    """SIGKILL every noted process still alive (and its descendants); returns how many were killed."""
    procs = alive(noted)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
    return len(procs)


def watch(driver: int, poll: float = POLL) -> int:
    """Note the driver's process tree until the driver ends, then reap it. Returns how many were killed."""
    noted: dict[int, float] = {}
    try:
        proc = psutil.Process(driver)
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            noted |= tree(proc)
            time.sleep(poll)
    except psutil.Error:
        pass
    return reap(noted)


def start(driver: int) -> subprocess.Popen:
    """The reaper of `driver`, in a session of its own: a Ctrl-C or kill of the stage's group does not reach it."""
    return subprocess.Popen([sys.executable, "-m", "lawshift.engines.reaper", str(driver)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lawshift.engines.reaper", description=__doc__.splitlines()[0])
    ap.add_argument("driver", type=int, help="the pid of the process whose Ray processes to clean up")
    watch(ap.parse_args(argv).driver)
    return 0


if __name__ == "__main__":
    sys.exit(main())
