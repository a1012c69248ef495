"""The scale-out benchmark: the sample stage's tokens/s with 1 worker and with a Ray pool of 2, on the tiny model.

    python -m benchmarks scaleout                    # 48 cases of the sample, params.yaml's sample.*, one thread each
    python -m benchmarks scaleout --cases 32 --workers 2 4

Each worker (and the single in-process backend) runs torch on one thread (LAWSHIFT_THREADS=1), so on 2 cores two
workers can use both. The same `sampling.sample` runs each way on the same cases and seeds; it reports generated
tokens per second over the sampling loop (engines already loaded), the ratio to one worker, and whether the
records are the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.common import BASE, command, environment


def run_once(workers: int, job, sp, spec) -> tuple[dict, bytes]:
    from lawshift.engines.backends import close, open_backend
    from lawshift.engines.generation import GenerationSettings
    from lawshift.sample import sampling

    backend = open_backend(spec, workers, sp.batch_size)
    try:  # first calls pay one-off costs (every worker's): keep them out of the timing
        backend.generate(job.prompts[:2 * workers], GenerationSettings(1, 0.0, 1.0, 4), [0] * 2 * workers)
        with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
            start = time.perf_counter()
            stats = sampling.sample(job, backend, replace(sp, workers=workers), Path(tmp) / "samples.jsonl")
            seconds = time.perf_counter() - start
            records = (Path(tmp) / "samples.jsonl").read_bytes()
    finally:
        close(backend)
    return {"workers": workers, "tokens": stats.new_tokens, "seconds": round(seconds, 2),
            "tokens_per_second": round(stats.new_tokens / seconds, 1)}, records


def scaleout_bench(args: argparse.Namespace) -> dict:
    os.environ["LAWSHIFT_THREADS"] = "1"  # this process and every Ray worker it starts (lawshift/core/numerics.py)
    import torch

    from lawshift.core import models
    from lawshift.core.params import load_params
    from lawshift.engines.generation import BackendSpec
    from lawshift.sample import sampling
    from lawshift.task.data import ArticleLookup, load_articles, training_cases
    from lawshift.task.prompts import load_prompt

    torch.set_num_threads(1)
    p = load_params(args.params)
    models.offline_env()
    base = models.resolve_base(str(BASE))
    sp = replace(p.sample, backend="hf", shard_index=0, num_shards=1, min_accepted=0)
    cases = training_cases(p.data.root)[:args.cases]
    tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
    lookup = ArticleLookup(load_articles(p.data.train_articles), p.data.train_articles, p.data.strict_articles)
    indices = list(range(len(cases)))
    prompts = sampling.build_prompts(cases, indices, lookup, tokenizer, Path(p.data.root) / "training_set.json",
                                     load_prompt(sp.prompt))
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order, ordered = sampling.longest_first(indices, prompts, lengths)
    job = sampling.Job(cases, order, ordered, {"bench": "scaleout"}, p.seed)
    spec = BackendSpec("hf", base, "cpu", p.seed, max(lengths) + sp.max_new_tokens)
    runs, first = [], None
    for workers in [1, *args.workers]:
        print(f"bench scaleout: {workers} worker(s), {len(cases)} cases", file=sys.stderr)
        run, records = run_once(workers, job, sp, spec)
        first = first or records
        runs.append(run | {"same_records": records == first,
                           "speedup": round(run["tokens_per_second"] / runs[0]["tokens_per_second"], 2) if runs
                           else 1.0})
    return {"command": command(args), "settings": {"model": base, "cases": len(cases), "num_samples": sp.num_samples,
                                                   "max_new_tokens": sp.max_new_tokens, "threads_per_worker": 1,
                                                   **environment()}, "runs": runs}


def print_scaleout(result: dict) -> None:
    s = result["settings"]
    print(f"scaleout: {s['cases']} cases x {s['num_samples']}, max_new_tokens {s['max_new_tokens']}, one thread per "
          "worker")
    for r in result["runs"]:
        print(f"  {r['workers']} worker(s): {r['tokens_per_second']:>8.1f} tok/s ({r['tokens']} tokens in "
              f"{r['seconds']} s)  x{r['speedup']} vs 1  same records: {r['same_records']}")


def add_parser(sub) -> None:
    """The `scaleout` subcommand of `python -m benchmarks`."""
    s = sub.add_parser("scaleout", help="sample tokens/s with 1 worker and with a Ray pool (tiny model)")
    s.add_argument("--cases", type=int, default=48, help="training cases to sample (default 48)")
    s.add_argument("--workers", type=int, nargs="+", default=[2], help="pool sizes to compare with 1 (default: 2)")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    s.set_defaults(run=scaleout_bench, show=print_scaleout)
