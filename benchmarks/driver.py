"""The driver's own cost at full LawShift size: the sample and eval loops around an engine that answers at once.

    python -m benchmarks driver                                # 20,000 cases x 8; 31 folders x 244 x 2 splits x 3
    python -m benchmarks driver --cases 4000 --eval-cases 50   # quicker
    python -m benchmarks driver --workers 2                    # the same through a Ray pool of two instant engines

Each run is a fresh process: `sampling.sample` (journal, records, tallies, the final file) and eval's `answer_all`
+ `write_outputs` (as stages/eval.py) over canned answers, so all its time and memory is the driver's. Reports ms
per answer and peak memory, and the growth per case from a run at a quarter of the size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import PROG

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "lawshift-sample"
ANSWERS = ("<think>容留他人吸毒，情节一般。</think><answer> 容留他人吸毒 | 7 </answer>",
           "<think>不构成犯罪。</think><answer> 不违规 </answer>",
           "<think>数额较大。</think><answer> 盗窃罪 | 10 </answer>")


class InstantEngine:
    """Canned answers at once, chosen by seed: only the driver's own work is left to time."""

    name, device = "instant", "cpu"

    def __init__(self, **_):
        pass

    def generate(self, prompts, settings, seeds):
        from lawshift.engines.generation import Completion, PromptResult

        return [PromptResult(len(p), [Completion(ANSWERS[(s + j) % 3], 24, True) for j in range(settings.n)])
                for p, s in zip(prompts, seeds, strict=True)]


def instant_factory(**spec) -> InstantEngine:
    return InstantEngine()


def backend(workers: int):
    from lawshift.engines.generation import BackendSpec

    if workers <= 1:
        return InstantEngine()
    from lawshift.engines.raypool import RayPool

    return RayPool(instant_factory, BackendSpec("instant", ".", "cpu", 0, 0), workers, piece=0)


def sample_run(cases: int, workers: int, tmp: Path) -> dict:
    """`sampling.sample` over `cases` synthetic cases (the sample's 62, made distinct), 8 answers each."""
    from lawshift.core.params import SampleParams
    from lawshift.sample.sampling import Job, sample
    from lawshift.task.data import Case, training_cases

    real = training_cases(SAMPLE)
    job_cases = [Case(f"{c.fact}（{i}）", c.relevant_articles, c.charge, c.prison_time)
                 for i, c in ((i, real[i % len(real)]) for i in range(cases))]
    sp = SampleParams(num_samples=8, batch_size=8, chunk_size=1024, backend="vllm", workers=workers)
    engine = backend(workers)
    t0 = time.perf_counter()
    job = Job(job_cases, list(range(cases)), [c.fact for c in job_cases], {"bench": cases}, seed=0)
    stats = sample(job, engine, sp, tmp / "samples.jsonl")
    seconds = time.perf_counter() - t0
    getattr(engine, "close", lambda: None)()
    return {"answers": stats.tally.answers, "seconds": seconds}


def eval_run(per_split: int, workers: int, tmp: Path) -> dict:
    """Eval's loop over the 31 folders x `per_split` cases x both splits, k = 3, then its metrics and outputs."""
    from lawshift.engines.generation import GenerationSettings
    from lawshift.evaluate import report
    from lawshift.evaluate.evaluation import EvalItem, Evaluation, PartialLog, answer_all, batches, item_seeds
    from lawshift.task.data import folder_labels, training_cases

    real = training_cases(SAMPLE)
    items = [EvalItem(f"{f.name}/{split}/{i}", f.name, f.label, split, i, real[i % len(real)],
                      f"{real[i % len(real)].fact}（{f.name}{i}）")
             for f in folder_labels().values() for split in ("original", "poisoned") for i in range(per_split)]
    engine = backend(workers)
    os.chdir(tmp)
    t0 = time.perf_counter()
    groups = batches(items, [len(it.prompt) for it in items], 1024)
    partial = PartialLog(tmp / "predictions.jsonl.partial", {"bench": per_split})
    settings = GenerationSettings(n=3, temperature=0.7, top_p=1.0, max_new_tokens=64)
    spool = answer_all(engine, items, groups, settings, item_seeds(items, 0), 36, 120, partial, tmp)
    report.write_outputs("bench", Evaluation(spool, 3, "", partial))  # as stages/eval.py does
    seconds = time.perf_counter() - t0
    getattr(engine, "close", lambda: None)()
    return {"answers": 3 * len(items), "seconds": seconds}


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def child(kind: str, size: int, workers: int) -> dict:
    """One measurement in this (fresh) process: time, answers, the process's peak memory and the run's own (the
    largest resident size while it ran, less the size before it: imports and libraries left out)."""
    import lawshift  # noqa: F401  (the numerics pins, as in a stage)
    from lawshift.evaluate import evaluation  # noqa: F401  (imported before the baseline)

    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        run = sample_run if kind == "sample" else eval_run
        base, peak, done = rss_mb(), [0.0], threading.Event()

        def watch() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss_mb())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out = run(size, workers, Path(tmp))
        done.set()
        watcher.join()
    return out | {"peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "run_mb": round(max(peak[0], rss_mb()) - base, 1)}


def measure(kind: str, size: int, workers: int) -> dict:
    code = f"import json; from benchmarks.driver import child; print(json.dumps(child({kind!r}, {size}, {workers})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path.cwd())
    if proc.returncode != 0:
        raise RuntimeError(f"driver benchmark ({kind}, {size}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def driver_bench(args: argparse.Namespace) -> dict:
    out = {"settings": {"cases": args.cases, "eval_cases_per_split": args.eval_cases, "workers": args.workers,
                        "folders": 31, "k": 3, "answers_per_case": 8}}
    for kind, size, unit in (("sample", args.cases, "cases"), ("eval", args.eval_cases, "prompts")):
        full, quarter = measure(kind, size, args.workers), measure(kind, max(size // 4, 1), args.workers)
        units = size if kind == "sample" else size * 31 * 2
        small = max(size // 4, 1) if kind == "sample" else max(size // 4, 1) * 31 * 2
        out[kind] = {"answers": full["answers"], "seconds": round(full["seconds"], 2),
                     "ms_per_answer": round(1000 * full["seconds"] / full["answers"], 4),
                     "peak_mb": full["peak_mb"], "run_mb": full["run_mb"], "run_mb_at_a_quarter": quarter["run_mb"],
                     f"kb_per_{unit[:-1]}": round(1024 * (full["run_mb"] - quarter["run_mb"]) / (units - small), 2)}
    return out


def print_driver(result: dict) -> None:
    s = result["settings"]
    print(f"driver: instant engine, {s['workers']} worker(s); sample {s['cases']} cases x 8, eval 31 folders x "
          f"{s['eval_cases_per_split']} x 2 splits x k=3")
    for kind in ("sample", "eval"):
        r = result[kind]
        unit, growth = next((k.removeprefix("kb_per_"), v) for k, v in r.items() if k.startswith("kb_per_"))
        print(f"  {kind:<7} {r['ms_per_answer']:.4f} ms/answer ({r['answers']} answers in {r['seconds']} s); process "
              f"peak {r['peak_mb']} MB, the run's own {r['run_mb']} MB ({r['run_mb_at_a_quarter']} MB at a quarter of "
              f"the size): {growth} KB per {unit}")


def add_parser(sub) -> None:
    """The `driver` subcommand of `python -m benchmarks`."""
    d = sub.add_parser("driver", help="the stage process's own cost per answer and memory, at full LawShift size")
    d.add_argument("--cases", type=int, default=20000, help="training cases, 8 answers each (default 20,000)")
    d.add_argument("--eval-cases", type=int, default=244, help="cases per folder and split (default 244)")
    d.add_argument("--workers", type=int, default=1, help="1: the engine in process; more: a Ray pool of them")
    d.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    d.set_defaults(run=driver_bench, show=print_driver)


if __name__ == "__main__":  # the benchmark runs as a subcommand, which writes its entry of benchmarks/results.json
    argparse.ArgumentParser(prog="python -m benchmarks.driver", description=f"run it as {PROG} driver").parse_args()
    sys.exit(f"run it as {PROG} driver")
