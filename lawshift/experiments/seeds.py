"""A spread over seeds: the default pipeline rerun under other values of `seed` as DVC experiments.

    python -m lawshift.experiments.seeds              # seeds 1..4 beside the workspace's (make seeds; ~12 min on 2
    cores)
    python -m lawshift.experiments.seeds --seeds 1 2 3 4 5 6 7 8
    python -m lawshift.experiments.seeds --collect    # only re-read the experiments already run

Each seed runs as the experiment `seed-<s>` in its own temporary copy (the workspace stays the default seed's);
the figures of every seed go to metrics/seeds.json, which `python -m lawshift.experiments.results` turns into the
README's
mean and spread. `make compare` prints the experiments side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lawshift.core import files, paths
from lawshift.core.files import InputError
from lawshift.core.params import load_params
from lawshift.experiments.results import SEEDS

OUT = Path(SEEDS)
DEFAULT_SEEDS = (1, 2, 3, 4)


def figures(read: Callable[[str], dict], rounds: Sequence[str]) -> dict:
    """The figures compared across seeds, from one run's metrics files (`read(path)` returns a file's JSON): each
    round's sampling, then each model's eval."""
    out = {}
    for name in rounds:
        filt = read(paths.round_files(name)["filter_metrics"])
        out |= {f"{name}.acceptance": filt["acceptance_rate"], f"{name}.coverage_first": filt["coverage_first"],
                f"{name}.coverage": filt["coverage"]}
    for model in (paths.BASE_MODEL, *rounds, paths.GRPO):
        try:
            m = read(paths.eval_files(model)["metrics"])
        except (InputError, subprocess.CalledProcessError):
            if model == paths.GRPO:
                continue  # a run from before the GRPO arm
            raise
        out |= {f"{model}.{key}": m[key] for key in ("train_exact", "train_pass_at_k", "train_majority")}
        out |= {f"{model}.{key}": m["overall"][key] for key in ("original", "poisoned", "gap")}
    return out


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def experiment_reader(name: str) -> Callable[[str], dict]:
    """Reads files from the commit of experiment `name` of the current commit (DVC keeps it under refs/exps)."""
    head = _git("rev-parse", "HEAD").strip()
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    if not _git("for-each-ref", ref).strip():
        raise InputError(ref, f"no experiment {name!r} on this commit: run python -m lawshift.experiments.seeds")

    def read(path: str) -> dict:
        return json.loads(_git("show", f"{ref}:{path}"))

    return read


def run_experiments(seeds: Sequence[int]) -> None:
    names = [f"seed-{s}" for s in seeds]
    subprocess.run(["dvc", "exp", "remove", *names], capture_output=True)  # replace earlier runs of these seeds
    for seed, name in zip(seeds, names, strict=True):
        subprocess.run(["dvc", "exp", "run", "--queue", "-S", f"seed={seed}", "-n", name], check=True)
    subprocess.run(["dvc", "exp", "run", "--run-all", "-j", "1"], check=True)


def collect(seeds: Sequence[int]) -> dict:
    """The figures of the workspace's seed and of each experiment seed-<s>."""
    params = load_params()
    runs = {str(params.seed): figures(files.read_json, list(params.rounds))}
    for seed in seeds:
        runs[str(seed)] = figures(experiment_reader(f"seed-{seed}"), list(params.rounds))
    return {"default_seed": params.seed, "seeds": runs}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lawshift.experiments.seeds", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="seeds besides the workspace's")
    ap.add_argument("--collect", action="store_true", help="only read the experiments already run")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if load_params().seed in args.seeds:
        raise InputError("params.yaml", "the workspace's seed is counted already: leave it out of --seeds",
                         field="seed")
    if not args.collect:
        run_experiments(args.seeds)
    result = collect(args.seeds)
    files.write_json(OUT, result)
    print(f"seeds: {len(result['seeds'])} runs -> {OUT}")


if __name__ == "__main__":
    files.run_stage(main)
