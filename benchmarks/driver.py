"""The stages' own cost at full LawShift size: stages/sample.py and stages/eval.py around an instant engine.

    python -m benchmarks driver                                # 20,000 cases x 8; 31 folders x 244 x 2 splits x 3
    python -m benchmarks driver --cases 4000 --eval-cases 50   # quicker
    python -m benchmarks driver --workers 2                    # the same through a Ray pool of two instant engines

In a scratch project (the repository's sources, a tiny base, synthetic data roots of the size asked and of a
quarter of it) each stage runs as `dvc repro` runs it, `python stages/<stage>.py`, with `backend: vllm` and the
instant `vllm` of benchmarks/instant_vllm first on PYTHONPATH: all its time and memory is the stage's own. Reports
each run's peak resident memory (as a small parent process sees it), ms per answer, and the growth per case or
prompt between the two sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import PROG
from benchmarks.smoke_project import SAMPLE, copy_sources, read_json, set_params, stage_env, write_json

INSTANT = Path(__file__).resolve().with_name("instant_vllm")  # the engine: put first on the stages' PYTHONPATH
LABELS = Path(__file__).resolve().parents[1] / "lawshift" / "task" / "labels.json"
SPLITS = ("original", "poisoned")
STAGES = {"sample": ["stages/sample.py", "round1"], "eval": ["stages/eval.py", "base"]}


def distinct(cases: list[dict], count: int, tag: str) -> list[dict]:
    """`count` cases cycled from `cases`, each fact made distinct by a suffix."""
    return [{**c, "fact": f"{c['fact']}（{tag}{i}）"} for i, c in ((i, cases[i % len(cases)]) for i in range(count))]


def make_root(project: Path, root: str, cases: int, per_split: int) -> None:
    """A LawShift root of the size asked: `cases` training cases and all 31 folders with `per_split` cases per split,
    cycled from the sample's (its articles files as they are)."""
    sample, dst = project / SAMPLE, project / root
    dst.mkdir(parents=True)
    shutil.copy2(sample / "criminal_law_articles.json", dst / "criminal_law_articles.json")
    write_json(dst / "training_set.json", distinct(read_json(sample / "training_set.json"), cases, "t"))
    sources = sorted(p for p in sample.iterdir() if p.is_dir())
    for k, folder in enumerate(r["name"] for r in read_json(LABELS)):
        src = sources[k % len(sources)]
        for split in SPLITS:
            write_json(dst / folder / f"{split}.json", distinct(read_json(src / f"{split}.json"), per_split, folder))
            shutil.copy2(src / f"articles_{split}.json", dst / folder / f"articles_{split}.json")


def env(project: Path) -> dict:
    """A stage's environment (as `dvc repro` gives it) with the instant engine importable as `vllm`."""
    out = stage_env(project)
    return out | {"PYTHONPATH": os.pathsep.join([str(INSTANT), out["PYTHONPATH"]])}


# A small parent for the stage, reporting the peak resident memory of the children it waited for. Not this process:
# Linux carries the peak of the memory image a process replaced on exec over to it (and this one has torch loaded).
WATCH = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
         "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def run_stage(project: Path, argv: list[str]) -> dict:
    """Run one stage script to its end; its wall time and its process's peak resident memory."""
    log, peak = project / "stage.log", project / "stage.maxrss"
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, "-c", WATCH, str(peak), sys.executable, *argv], cwd=project,
                              env=env(project), stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{log.read_text(encoding='utf-8')[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_mb": round(int(peak.read_text()) / 1024, 1)}


def make_project(project: Path, workers: int) -> None:
    """The sources, the params every run shares and a tiny base (its weights unused: only tokenizer and config)."""
    copy_sources(project)
    set_params(project, {"model": {"base": "tiny", "tiny": {"warmup_steps": 0}},
                         "sample": {"backend": "vllm", "min_accepted": 0, "workers": workers},
                         "eval": {"backend": "vllm", "workers": workers}})
    run_stage(project, ["stages/base.py"])


def measure(project: Path, kind: str, cases: int, per_split: int) -> dict:
    """One stage on a data root of `cases` training cases and `per_split` cases per folder and split."""
    root = f"data/bench-{cases}-{per_split}"
    if not (project / root).is_dir():
        make_root(project, root, cases, per_split)
    set_params(project, {"data": {"root": root, "train_articles": f"{root}/criminal_law_articles.json"}})
    out = run_stage(project, STAGES[kind])
    if kind == "sample":
        answers = read_json(project / "metrics/round1/sample.json")["answers_generated"]
    else:
        with open(project / "outputs/base/predictions.jsonl", encoding="utf-8") as f:
            answers = sum(1 for _ in f)
    return out | {"answers": answers, "units": cases if kind == "sample" else 31 * 2 * per_split}


def driver_bench(args: argparse.Namespace) -> dict:
    out = {"settings": {"cases": args.cases, "eval_cases_per_split": args.eval_cases, "workers": args.workers,
                        "folders": 31, "k": 3, "answers_per_case": 8, "backend": "vllm (benchmarks/instant_vllm)"}}
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        project = Path(tmp)
        make_project(project, args.workers)
        for kind, unit in (("sample", "case"), ("eval", "prompt")):
            sizes = {"full": (args.cases, args.eval_cases), "quarter": (max(args.cases // 4, 1),
                                                                       max(args.eval_cases // 4, 1))}
            runs = {name: measure(project, kind, *size) for name, size in sizes.items()}
            full, quarter = runs["full"], runs["quarter"]
            out[kind] = {"answers": full["answers"], "seconds": full["seconds"],
                         "ms_per_answer": round(1000 * full["seconds"] / full["answers"], 4),
                         "peak_mb": full["peak_mb"], "peak_mb_at_a_quarter": quarter["peak_mb"],
                         f"kb_per_{unit}": round(1024 * (full["peak_mb"] - quarter["peak_mb"])
                                                 / max(full["units"] - quarter["units"], 1), 2)}
    return out


def print_driver(result: dict) -> None:
    s = result["settings"]
    print(f"driver: the stages with an instant engine, {s['workers']} worker(s); sample {s['cases']} cases x 8, "
          f"eval 31 folders x {s['eval_cases_per_split']} x 2 splits x k=3 (and a quarter of each)")
    for kind in ("sample", "eval"):
        r = result[kind]
        unit, growth = next((k.removeprefix("kb_per_"), v) for k, v in r.items() if k.startswith("kb_per_"))
        print(f"  stages/{kind}.py  peak {r['peak_mb_at_a_quarter']} MB at a quarter -> {r['peak_mb']} MB: {growth} KB "
              f"per {unit}; {r['ms_per_answer']:.4f} ms/answer ({r['answers']} answers in {r['seconds']} s, "
              "start-up included)")


def add_parser(sub) -> None:
    """The `driver` subcommand of `python -m benchmarks`."""
    d = sub.add_parser("driver", help="the sample and eval stages' own time and peak memory, at full LawShift size")
    d.add_argument("--cases", type=int, default=20000, help="training cases, 8 answers each (default 20,000)")
    d.add_argument("--eval-cases", type=int, default=244, help="cases per folder and split (default 244)")
    d.add_argument("--workers", type=int, default=1, help="1: the engine in the stage; more: a Ray pool of them")
    d.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    d.set_defaults(run=driver_bench, show=print_driver)


if __name__ == "__main__":  # the benchmark runs as a subcommand, which writes its entry of benchmarks/results.json
    argparse.ArgumentParser(prog="python -m benchmarks.driver", description=f"run it as {PROG} driver").parse_args()
    sys.exit(f"run it as {PROG} driver")
