"""The sampling benchmark: the reference's per-case generate loop vs batched generate vs the project's sampler.

    python -m benchmarks sampling                    # defaults: params.yaml's sample.* on models/base
    python -m benchmarks sampling --cases 16 --n 8 --max-new-tokens 256 --threads 2

The same cases, model, N, max_new_tokens and seed, three ways: one `generate(num_return_sequences=N)` per case (the
reference), the project's batching with plain `generate`, and the project's sampler (shared prefill, finished
answers dropped). On the real prompts, on long-prompt variants as long as Qwen's tokenizer makes them, and with
answers capped. Reports tokens/s, prefill and decode time, and writes the `sampling` entry of benchmarks/results.json.
docs/benchmarks.md explains each run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import BASE, add_common_options, command, environment, long_prompt, set_threads
from lawshift.core import models
from lawshift.core.files import InputError
from lawshift.core.params import SampleParams, load_params
from lawshift.engines.generation import GenerationSettings, stream_seed
from lawshift.engines.hf_backend import HFBackend
from lawshift.sample import sampling
from lawshift.task.data import ArticleLookup, Case, load_articles, training_cases
from lawshift.task.prompts import load_prompt

METHODS = ("per_case_generate", "batched_generate", "sampler")


# --- where the time goes -----------------------------------------------------------------------------------------

@dataclass
class ForwardTimes:
    """Time in the model's forward passes, split into prefill (prompt tokens in) and decode (one token per row)."""

    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prefill_calls: int = 0
    decode_calls: int = 0
    prefill_tokens: int = 0  # prompt positions run through the model, padding included
    decode_rows: int = 0  # sequences run through decode steps: one per row per step, finished or not
    _start: float = field(default=0.0, repr=False)
    _prefill: bool = field(default=False, repr=False)


@contextlib.contextmanager
def forward_timer(model: torch.nn.Module, device: torch.device):
    """Hooks on `model` time every forward call; yields the running ForwardTimes."""
    times = ForwardTimes()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def before(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        sync()
        times._prefill = ids.shape[1] > 1
        if times._prefill:
            times.prefill_calls += 1
            times.prefill_tokens += ids.numel()
        else:
            times.decode_calls += 1
            times.decode_rows += ids.shape[0]
        times._start = time.perf_counter()

    def after(module, args, kwargs, output):
        sync()
        elapsed = time.perf_counter() - times._start
        if times._prefill:
            times.prefill_seconds += elapsed
        else:
            times.decode_seconds += elapsed

    handles = [model.register_forward_pre_hook(before, with_kwargs=True),
               model.register_forward_hook(after, with_kwargs=True)]
    try:
        yield times
    finally:
        for h in handles:
            h.remove()


def method_result(tokens: int, seconds: float, times: ForwardTimes) -> dict:
    other = seconds - times.prefill_seconds - times.decode_seconds
    return {"generated_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "prefill_seconds": round(times.prefill_seconds, 3), "decode_seconds": round(times.decode_seconds, 3),
            "other_seconds": round(other, 3),  # sampling, stopping checks, bookkeeping, file writes
            "prefill_share": round(times.prefill_seconds / seconds, 3) if seconds else None,
            "prefill_calls": times.prefill_calls, "prefill_tokens": times.prefill_tokens,
            "decode_steps": times.decode_calls, "decode_rows": times.decode_rows}


def token_counts(tokenizer, prompts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


# --- the methods -------------------------------------------------------------------------------------------------

def per_case_loop(backend: HFBackend, prompts: Sequence[str], indices: Sequence[int], gen: GenerationSettings,
                  seed: int) -> int:
    """The reference's loop: one `generate(num_return_sequences=N)` call per case. Returns generated tokens."""
    tokens = 0
    for i, prompt in zip(indices, tqdm(prompts, desc="per-case generate", unit="case", leave=False), strict=True):
        (result,) = backend.generate([prompt], gen, [stream_seed(seed, i)])
        tokens += sum(c.num_tokens for c in result.completions)
    return tokens


def project_sampler(backend: HFBackend, job: sampling.Job, sp: SampleParams) -> int:
    """`lawshift.sample.sampling.sample` as the sample stage runs it, into a scratch file. Returns generated tokens."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        stats = sampling.sample(job, backend, sp, Path(tmp) / "samples.jsonl")
    return stats.new_tokens


def timed(model, device: torch.device, run: Callable[[], int]) -> dict:
    with forward_timer(model, device) as times:
        start = time.perf_counter()
        tokens = run()
        seconds = time.perf_counter() - start
    return method_result(tokens, seconds, times)


def compare(model, tokenizer, device: torch.device, cases: Sequence[Case], prompts: list[str], sp: SampleParams,
            settings: dict, seed: int) -> dict:
    """The three methods on the same cases, prompts and settings, one after the other."""
    indices = list(range(len(prompts)))
    gen = GenerationSettings(sp.num_samples, sp.temperature, sp.top_p, sp.max_new_tokens)
    plain, shared = HFBackend(model, tokenizer, device, shared_prefill=False), HFBackend(model, tokenizer, device)
    for backend in (plain, shared):  # first calls pay one-off set-up costs: keep them out of the timings
        backend.generate(prompts[:1], replace(gen, max_new_tokens=2), [0])
    order, ordered = sampling.longest_first(indices, prompts, token_counts(tokenizer, prompts))
    job = sampling.Job(cases, order, ordered, settings, seed)
    lengths = token_counts(tokenizer, prompts)
    results = {
        "per_case_generate": timed(model, device, lambda: per_case_loop(plain, prompts, indices, gen, seed)),
        "batched_generate": timed(model, device, lambda: project_sampler(plain, job, sp)),
        "sampler": timed(model, device, lambda: project_sampler(shared, job, sp)),
    }
    base_rate = results["per_case_generate"]["tokens_per_second"]
    return {"prompt_tokens_mean": round(statistics.mean(lengths), 1), "prompt_tokens_max": max(lengths),
            "methods": results,
            "speedup_vs_per_case": {m: round(results[m]["tokens_per_second"] / base_rate, 2) for m in METHODS[1:]}}


# --- the benchmark -----------------------------------------------------------------------------------------------

def sampling_bench(args: argparse.Namespace) -> dict:
    given = {"num_samples": args.n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    p = load_params(args.params, overrides={"sample": {"backend": "hf", "shard_index": 0, "num_shards": 1,
                                                       **{k: v for k, v in given.items() if v is not None}}})
    sp = p.sample
    models.offline_env()
    set_threads(args.threads)
    base = models.resolve_base(BASE)
    device = models.pick_device(sp.device)
    tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
    model = models.load_model(base, device=device, trust_remote_code=p.model.trust_remote_code,
                              allow_pickle=p.model.allow_pickle)

    train_file = Path(p.data.root) / "training_set.json"
    cases = training_cases(p.data.root)
    if args.cases is not None:
        if args.cases < 1:
            raise InputError("--cases", f"must be >= 1, got {args.cases}")
        cases = cases[:args.cases]
    articles = load_articles(p.data.train_articles)
    lookup = ArticleLookup(articles, p.data.train_articles, p.data.strict_articles)
    indices = list(range(len(cases)))
    judge = load_prompt(sp.prompt)
    real = sampling.build_prompts(cases, indices, lookup, tokenizer, train_file, judge)
    variants = {"real_prompt": (real, sp)}
    if args.long_prompt_tokens:
        models.check_context(model.config, args.long_prompt_tokens + 64 + sp.max_new_tokens, "--long-prompt-tokens")
        long = [long_prompt(tokenizer, judge, c, articles, lookup.for_case(c, i, train_file), args.long_prompt_tokens)
                for i, c in enumerate(cases)]
        variants["long_prompt"] = (long, sp)
        if args.short_answer_tokens:
            variants["long_prompt_short_answers"] = (long, replace(sp, max_new_tokens=args.short_answer_tokens))

    runs = {}
    for name, (prompts, vsp) in variants.items():
        settings = sampling.run_settings(vsp, base, train_file, p.data.train_articles, prompts, p.seed)
        print(f"bench sampling: {name}, {len(prompts)} cases", file=sys.stderr)
        runs[name] = {"max_new_tokens": vsp.max_new_tokens} | compare(model, tokenizer, device, cases, prompts, vsp,
                                                                       settings, p.seed)
    return {"command": command(args),
            "settings": {"model": base, "cases": len(cases), "num_samples": sp.num_samples,
                         "temperature": sp.temperature, "top_p": sp.top_p, "max_new_tokens": sp.max_new_tokens,
                         "batch_size": sp.batch_size, "seed": p.seed, "device": str(device),
                         "dtype": str(next(model.parameters()).dtype), **environment()},
            "runs": runs}


def print_sampling(result: dict) -> None:
    s = result["settings"]
    print(f"sampling: {s['cases']} cases x {s['num_samples']} answers, max_new_tokens {s['max_new_tokens']}, "
          f"batch_size {s['batch_size']}, {s['device']} with {s['torch_threads']} thread(s)")
    for name, run in result["runs"].items():
        print(f"  {name} (prompts: mean {run['prompt_tokens_mean']:.0f}, max {run['prompt_tokens_max']} tokens; "
              f"max_new_tokens {run['max_new_tokens']})")
        for method, m in run["methods"].items():
            ratio = run["speedup_vs_per_case"].get(method, 1.0)
            print(f"    {method:<18} {m['tokens_per_second']:>9.1f} tok/s  x{ratio:<5}  {m['seconds']:7.2f} s = "
                  f"prefill {m['prefill_seconds']:.2f} + decode {m['decode_seconds']:.2f} + other "
                  f"{m['other_seconds']:.2f}  ({m['prefill_tokens']} prompt tokens prefilled)")


def add_parser(sub) -> None:
    """The `sampling` subcommand of `python -m benchmarks`."""
    s = sub.add_parser("sampling", help="project sampler vs the per-case generate loop")
    s.add_argument("--cases", type=int, help="first K training cases (default: all)")
    s.add_argument("--n", type=int, help="answers per case (default: sample.num_samples)")
    s.add_argument("--max-new-tokens", type=int, help="default: sample.max_new_tokens")
    s.add_argument("--batch-size", type=int, help="cases per sampler call (default: sample.batch_size)")
    s.add_argument("--long-prompt-tokens", type=int, default=1100,
                   help="prompt length of the long-prompt variant, in tokens; 0 skips it (default: 1100)")
    s.add_argument("--short-answer-tokens", type=int, default=64,
                   help="max_new_tokens of a third run on the long prompts; 0 skips it (default: 64, about the "
                        "length of the tiny base's answers to the real prompts: it never stops on long ones)")
    add_common_options(s, "torch CPU threads (default 1: on a shared machine, the per-case loop's many tiny ops on "
                          "two threads stall whenever the other core is busy, which would flatter the sampler)")
    s.set_defaults(run=sampling_bench, show=print_sampling)
