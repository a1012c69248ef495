"""A profile (profiles/reference.yaml) run as a DVC experiment, params.yaml left as it was (make reference).

    python -m lawshift.experiments.reference /path/to/LawShift [--stack cpu|gpu] [-S key=value ...]
    python -m lawshift.experiments.reference --which-stack    # cpu or gpu, and one line on stderr saying why

The stack: gpu where an NVIDIA GPU is found (/proc/driver/nvidia/gpus or `nvidia-smi -L`, never CUDA itself) or
LAWSHIFT_STACK=gpu; then `make reference` runs this in .venv-gpu with sample and eval on vLLM. Refused in one line
while params.yaml has uncommitted changes, or on the cpu stack when the run asks for vLLM or CUDA. Otherwise the
profile is copied over params.yaml, `dvc exp run -n reference -S data.root=… -S …` runs it, and params.yaml gets its
own bytes back, on success, failure, Ctrl-C or SIGTERM (after SIGKILL: `git checkout params.yaml`). A name already
taken on this commit becomes reference-2, reference-3, ...
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

import yaml

from lawshift.core.files import InputError

PARAMS = Path("params.yaml")
PROFILE = Path("profiles/reference.yaml")
NAME = "reference"
NVIDIA = Path("/proc/driver/nvidia/gpus")
GPU_OVERRIDES = ("sample.backend=vllm", "eval.backend=vllm")  # the GPU stack; the rest of the profile unchanged


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


def detect_gpus(proc: Path | None = None) -> tuple[int, str]:
    """How many NVIDIA GPUs this machine has, and where that was read: the driver's /proc entries, else
    `nvidia-smi -L`. Neither touches CUDA, so no process here holds CUDA state a forked engine could not use."""
    proc = NVIDIA if proc is None else proc
    if proc.is_dir() and (n := len(list(proc.iterdir()))):
        return n, str(proc)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0, f"no {proc}, no nvidia-smi"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0, "nvidia-smi -L failed"
    return sum(line.startswith("GPU ") for line in out.splitlines()), "nvidia-smi -L"


def choose_stack(env: dict | None = None) -> tuple[str, str]:
    """("gpu" or "cpu", why): LAWSHIFT_STACK when set, else whether an NVIDIA GPU is found."""
    forced = (os.environ if env is None else env).get("LAWSHIFT_STACK", "")
    if forced in ("cpu", "gpu"):
        return forced, f"LAWSHIFT_STACK={forced}"
    if forced:
        raise InputError("LAWSHIFT_STACK", f"{forced!r}: must be cpu or gpu")
    n, where = detect_gpus()
    return ("gpu", f"{n} NVIDIA GPU(s) found ({where})") if n else ("cpu", f"no NVIDIA GPU found ({where})")


def describe(stack: str, why: str) -> str:
    """The one line `make reference` prints about its choice."""
    if stack == "gpu":
        return f"make reference: the GPU stack (.venv-gpu from make gpu-venv; vLLM for sample and eval): {why}"
    return f"make reference: the CPU stack (.venv; the profile's own backends): {why}"


def needs_gpu(profile: Path, sets: Sequence[str]) -> str | None:
    """The first setting of the run (the profile, then the `-S` overrides) that needs a GPU, as key=value; None if
    none does: a vLLM backend or a CUDA device for sample, train or eval."""
    params = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    values = {f"{section}.{key}": str(params.get(section, {}).get(key, ""))
              for section in ("sample", "train", "eval") for key in ("backend", "device")}
    values |= {k: v for k, _, v in (s.partition("=") for s in sets) if k in values}
    return next((f"{k}={v}" for k, v in values.items() if v == "vllm" or v.startswith("cuda")), None)


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


def run_profile(lawshift: str, profile: Path = PROFILE, params: Path = PARAMS, stack: str = "cpu",
                sets: Sequence[str] = ()) -> int:
    """The whole of `make reference`; returns DVC's exit status. params.yaml is byte-identical afterwards. `sets`:
    the caller's `-S key=value` overrides, applied after the stack's."""
    if not Path(lawshift).is_dir():
        raise InputError(lawshift, "no such directory: LAWSHIFT must be the LawShift release's root")
    if not profile.is_file():
        raise InputError(profile, "file not found")
    sets = [*(GPU_OVERRIDES if stack == "gpu" else ()), *sets]
    if stack == "gpu" and importlib.util.find_spec("vllm") is None:
        raise InputError("vllm", f"not installed in {sys.prefix}: the GPU stack runs in .venv-gpu (make gpu-venv)")
    if stack == "cpu" and (setting := needs_gpu(profile, sets)):
        raise InputError(profile, f"{setting} needs a GPU, and the CPU stack was chosen (no GPU found)")
    if uncommitted(params):
        raise InputError(params, "uncommitted changes: commit or stash them first (left by a killed make reference? "
                                  "git checkout params.yaml)")
    name = free_name(experiment_names())
    saved = params.read_bytes()
    try:
        params.write_bytes(profile.read_bytes())
        print(f"{profile} -> experiment {name!r} (params.yaml is restored afterwards)", flush=True)
        rc = run_forwarding([sys.executable, "-m", "dvc", "exp", "run", "-n", name, *overrides(lawshift),
                              *(arg for s in sets for arg in ("-S", s))])
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
    ap.add_argument("lawshift", nargs="?", help="the root of the LawShift release (make reference LAWSHIFT=…)")
    ap.add_argument("--profile", type=Path, default=PROFILE, help="the params to run (default %(default)s)")
    ap.add_argument("--stack", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: sample and eval on vLLM (default %(default)s; make reference chooses)")
    ap.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on to dvc exp run, after the profile and the stack's overrides")
    ap.add_argument("--which-stack", action="store_true", help="print cpu or gpu, and on stderr the reason")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.which_stack:
        stack, why = choose_stack()
        print(describe(stack, why), file=sys.stderr)
        print(stack)
        return 0
    if not args.lawshift:
        ap.error("the LawShift root is required (make reference LAWSHIFT=/path/to/LawShift)")
    return run_profile(args.lawshift, args.profile, stack=args.stack, sets=args.sets)


if __name__ == "__main__":
    from lawshift.core.files import run_stage

    run_stage(lambda: sys.exit(main()))
