"""A profile (profiles/reference.yaml) run as a DVC experiment, params.yaml left as it was (make reference).

    python -m lawshift.experiments.reference /path/to/LawShift [--profile profiles/reference.yaml]

Refused, in one line, while params.yaml has uncommitted changes. Otherwise the profile is copied over params.yaml and
`dvc exp run -n reference -S data.root=… -S data.train_articles=…` runs it in the workspace (rerun after an
interruption, it resumes as `dvc repro` does); then params.yaml gets its own bytes back, on success, failure, Ctrl-C
or SIGTERM (only after SIGKILL does the profile stay: `git checkout params.yaml`). The experiment keeps the profile's
params and results (`make compare`); the workspace keeps that run's dvc.lock, metrics and outputs until the next
`make repro` reruns the default params. A name already taken on this commit becomes reference-2, reference-3, ...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from lawshift.core.files import InputError

PARAMS = Path("params.yaml")
PROFILE = Path("profiles/reference.yaml")
NAME = "reference"


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError("git", (proc.stderr.strip().splitlines() or [f"git {args[0]} failed"])[-1])
    return proc.stdout


def uncommitted(path: Path) -> bool:
    """Whether git sees `path` modified, staged, untracked or deleted."""
    return bool(_git("status", "--porcelain", "--untracked-files=all", "--", str(path)).strip())


def experiment_names() -> set[str]:
    """The names of the experiments of the current commit (refs/exps/<sha[:2]>/<sha[2:]>/<name>)."""
    head = _git("rev-parse", "HEAD").strip()
    refs = _git("for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}/").split()
    return {ref.rsplit("/", 1)[-1] for ref in refs}


def free_name(taken: Collection[str], base: str = NAME) -> str:
    """`base`, or base-2, base-3, ... : the first not in `taken` (DVC refuses to reuse a name on one commit)."""
    n = 1
    while (name := base if n == 1 else f"{base}-{n}") in taken:
        n += 1
    return name


def overrides(lawshift: str) -> list[str]:
    """The `-S` options that point the profile at the LawShift release in `lawshift`."""
    root = lawshift.rstrip("/") or "/"
    return ["-S", f"data.root={root}", "-S", f"data.train_articles={root.rstrip('/')}/criminal_law_articles.json"]


def run_forwarding(cmd: Sequence[str]) -> int:
    """Run `cmd` in its own process group and wait for it to end: SIGINT, SIGTERM or SIGHUP sent to this process
    (Ctrl-C reaches only this group) is passed on to that group once, so DVC stops its stage and exits and the caller
    regains control. The exit status, 128 + N for a command killed by signal N."""
    proc = subprocess.Popen(cmd, process_group=0)

    def forward(signum: int, _frame) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.signal(s, forward) for s in caught}
    try:
        rc = proc.wait()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    return 128 - rc if rc < 0 else rc


def run_profile(lawshift: str, profile: Path = PROFILE, params: Path = PARAMS) -> int:
    """The whole of `make reference`; returns DVC's exit status. params.yaml is byte-identical afterwards."""
    if not Path(lawshift).is_dir():
        raise InputError(lawshift, "no such directory: LAWSHIFT must be the LawShift release's root")
    if not profile.is_file():
        raise InputError(profile, "file not found")
    if uncommitted(params):
        raise InputError(params, "uncommitted changes: commit or stash them first (left by a killed make reference? "
                                  "git checkout params.yaml)")
    name = free_name(experiment_names())
    saved = params.read_bytes()
    try:
        params.write_bytes(profile.read_bytes())
        print(f"{profile} -> experiment {name!r} (params.yaml is restored afterwards)", flush=True)
        rc = run_forwarding([sys.executable, "-m", "dvc", "exp", "run", "-n", name, *overrides(lawshift)])
        if rc == 0:
            from lawshift.core.runinfo import summary

            print(summary(), flush=True)  # reads the rounds of the profile, still in params.yaml
    finally:
        if params.read_bytes() != saved:
            params.write_bytes(saved)
    print(f"params.yaml restored; the run is experiment {name!r} (make compare, dvc exp show)"
          if rc == 0 else f"dvc exp run failed (exit {rc}); params.yaml restored", flush=True)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lawshift.experiments.reference", description=__doc__.splitlines()[0])
    ap.add_argument("lawshift", help="the root of the LawShift release (make reference LAWSHIFT=…)")
    ap.add_argument("--profile", type=Path, default=PROFILE, help="the params to run (default %(default)s)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    return run_profile(args.lawshift, args.profile)


if __name__ == "__main__":
    from lawshift.core.files import run_stage

    run_stage(lambda: sys.exit(main()))
