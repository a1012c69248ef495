"""Benchmarks, run side by side in one process and written to `metrics/bench.json`.

    python -m lawshift.bench sampling                    # defaults: params.yaml's sample.* on models/base
    python -m lawshift.bench sampling --cases 16 --n 8 --max-new-tokens 256 --threads 2
    python -m lawshift.bench train                       # defaults: params.yaml's train.* on outputs/sft.jsonl
    python -m lawshift.bench train --epochs 1 --threads 2

`sampling` generates the same cases with the same model, N, max_new_tokens and seed three ways, one after the
other: the per-case loop of the reference implementation (one transformers `generate(num_return_sequences=N)`
call per case), the project's sampler (`lawshift.sampling.sample` with the `hf` backend: `sample.batch_size`
cases per call, the prompt prefilled once for its N answers, finished answers dropped from the batch) and, in
between, the project's batching with plain `generate` (what batching alone gains). It does so for the real
prompts (the case's fact and cited articles) and for a long-prompt variant that adds further articles of the
articles file until every prompt holds `--long-prompt-tokens` tokens, as long as the real Qwen tokenizer makes
the real prompts (the tiny tokenizer makes them ~330 tokens). The tiny base, warm-started on short prompts,
never stops on such long ones, so a third run caps their answers at `--short-answer-tokens`, about its answers'
length on the real prompts: only the prompt length differs from the first. For each it reports tokens per second,
the time spent in prefill and in decode forward passes and outside the model (sampling, bookkeeping), and how
many prompt tokens were prefilled. The result replaces the `sampling` entry of `metrics/bench.json`; other
entries (other benchmarks) are kept.

`train` runs the train stage's own code (`lawshift.training.train_sft`, as stages/train.py calls it) twice on
the same data, base, params and seed, one after the other: with `train.group_by_length` false (random
micro-batches) and true (the Trainer's length-grouped sampler). Adapter, checkpoints and logs go to a temporary
directory: models/, checkpoints/, dvclive/ and logs/ are untouched. For each it reports the trained tokens (the
non-padding input tokens the loss sees, the train stage's `train_tokens_per_second`) and the padded positions run
through the model per second, and the padding share; with the same epochs both runs train the same tokens, so
the ratio of their trained tokens/s is what grouping buys. A short untimed run first pays one-off costs.
The tiny run's answers are all ~28 tokens and its prompts 190-300, so a second pair of runs (`mixed_lengths`,
skipped with `--mixed-prompt-tokens 0`) trains the same answers with every other prompt lengthened to
`--mixed-prompt-tokens` tokens by the neighbouring articles (as the sampling benchmark's long prompts): lengths
as mixed as real prompts with one or several long statutes. It measures throughput only; the adapter is
discarded. The result replaces the `train` entry of `metrics/bench.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from lawshift import files, models, sampling
from lawshift.data import ArticleLookup, Case, load_articles, training_cases
from lawshift.files import InputError
from lawshift.generation import GenerationSettings, HFBackend
from lawshift.params import SampleParams, TrainParams, load_params
from lawshift.prompts import build_messages, render_prompt

BASE = Path("models/base")
SFT = Path("outputs/sft.jsonl")
OUT = Path("metrics/bench.json")
METHODS = ("per_case_generate", "batched_generate", "sampler")
GROUPING = {"random": False, "group_by_length": True}  # train.group_by_length of each train run


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


# --- prompts -----------------------------------------------------------------------------------------------------

def long_prompt(tokenizer, case: Case, articles: dict[str, str], own: list[tuple[str, str]], target: int) -> str:
    """The case's prompt with further articles until it holds at least `target` tokens: its own articles first,
    then those that follow its first article in the articles file (the neighbouring provisions), in file order."""
    ids = list(articles)
    start = ids.index(own[0][0]) + 1 if own and own[0][0] in articles else 0
    chosen, seen = list(own), {a for a, _ in own}
    for k in range(len(ids)):
        prompt = render_prompt(tokenizer, build_messages(case.fact, chosen))
        if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) >= target:
            return prompt
        art = ids[(start + k) % len(ids)]
        if art not in seen:
            chosen.append((art, articles[art]))
            seen.add(art)
    return render_prompt(tokenizer, build_messages(case.fact, chosen))


def token_counts(tokenizer, prompts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


# --- the methods -------------------------------------------------------------------------------------------------

def per_case_loop(backend: HFBackend, prompts: Sequence[str], indices: Sequence[int], gen: GenerationSettings,
                  seed: int) -> int:
    """The reference's loop: one `generate(num_return_sequences=N)` call per case. Returns generated tokens."""
    tokens = 0
    for i, prompt in zip(indices, tqdm(prompts, desc="per-case generate", unit="case", leave=False), strict=True):
        (result,) = backend.generate([prompt], gen, sampling.batch_seed(seed, i))
        tokens += sum(c.num_tokens for c in result.completions)
    return tokens


def project_sampler(backend: HFBackend, job: sampling.Job, sp: SampleParams) -> int:
    """`lawshift.sampling.sample` as the sample stage runs it, into a scratch file. Returns generated tokens."""
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
            settings: dict) -> dict:
    """The three methods on the same cases, prompts and settings, one after the other."""
    indices = list(range(len(prompts)))
    gen = GenerationSettings(sp.num_samples, sp.temperature, sp.top_p, sp.max_new_tokens)
    plain, shared = HFBackend(model, tokenizer, device, shared_prefill=False), HFBackend(model, tokenizer, device)
    for backend in (plain, shared):  # first calls pay one-off set-up costs: keep them out of the timings
        backend.generate(prompts[:1], replace(gen, max_new_tokens=2), seed=0)
    order, ordered = sampling.longest_first(indices, prompts, token_counts(tokenizer, prompts))
    job = sampling.Job(cases, order, ordered, settings)
    lengths = token_counts(tokenizer, prompts)
    results = {
        "per_case_generate": timed(model, device, lambda: per_case_loop(plain, prompts, indices, gen, sp.seed)),
        "batched_generate": timed(model, device, lambda: project_sampler(plain, job, sp)),
        "sampler": timed(model, device, lambda: project_sampler(shared, job, sp)),
    }
    base_rate = results["per_case_generate"]["tokens_per_second"]
    return {"prompt_tokens_mean": round(statistics.mean(lengths), 1), "prompt_tokens_max": max(lengths),
            "methods": results,
            "speedup_vs_per_case": {m: round(results[m]["tokens_per_second"] / base_rate, 2) for m in METHODS[1:]}}


# --- the sampling benchmark --------------------------------------------------------------------------------------

def sampling_bench(args: argparse.Namespace) -> dict:
    p = load_params(args.params)
    given = {"num_samples": args.n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    sp = replace(p.sample, backend="hf", shard_index=0, num_shards=1,
                 **{k: v for k, v in given.items() if v is not None})
    sampling.check_params(sp, args.params)
    models.offline_env()
    if args.threads < 1:
        raise InputError("--threads", f"must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
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
    real = sampling.build_prompts(cases, indices, lookup, tokenizer, train_file)
    variants = {"real_prompt": (real, sp)}
    if args.long_prompt_tokens:
        models.check_context(model.config, args.long_prompt_tokens + 64 + sp.max_new_tokens, "--long-prompt-tokens")
        long = [long_prompt(tokenizer, c, articles, lookup.for_case(c, i, train_file), args.long_prompt_tokens)
                for i, c in enumerate(cases)]
        variants["long_prompt"] = (long, sp)
        if args.short_answer_tokens:
            variants["long_prompt_short_answers"] = (long, replace(sp, max_new_tokens=args.short_answer_tokens))

    runs = {}
    for name, (prompts, vsp) in variants.items():
        settings = sampling.run_settings(vsp, base, train_file, p.data.train_articles, prompts)
        print(f"bench sampling: {name}, {len(prompts)} cases", file=sys.stderr)
        runs[name] = {"max_new_tokens": vsp.max_new_tokens} | compare(model, tokenizer, device, cases, prompts, vsp,
                                                                       settings)
    return {"command": "python -m lawshift.bench " + " ".join(args.argv),
            "settings": {"model": base, "cases": len(cases), "num_samples": sp.num_samples,
                         "temperature": sp.temperature, "top_p": sp.top_p, "max_new_tokens": sp.max_new_tokens,
                         "batch_size": sp.batch_size, "seed": sp.seed, "device": str(device),
                         "dtype": str(next(model.parameters()).dtype), **environment()},
            "runs": runs}


def environment() -> dict:
    """What a benchmark figure depends on besides its settings: threads, processor, library versions."""
    return {"torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "transformers": transformers.__version__}


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


# --- the train benchmark -----------------------------------------------------------------------------------------

class TrainCounter(transformers.TrainerCallback):
    """Times `Trainer.train()` and counts, per training forward pass, the non-padding input tokens and the padded
    positions of the micro-batch."""

    def __init__(self):
        self.tokens = self.padded = self.batches = 0
        self.seconds = 0.0
        self._start, self._handle, self._device = 0.0, None, None

    def _count(self, module, args, kwargs):
        if module.training:  # kept as tensors: no device sync per micro-batch
            self.tokens += kwargs["attention_mask"].sum()
            self.padded += kwargs["input_ids"].numel()
            self.batches += 1

    def _sync(self):
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._device = next(model.parameters()).device
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._sync()
        self._start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self._sync()
        self.seconds = time.perf_counter() - self._start
        self._handle.remove()

    def result(self, metrics: dict) -> dict:
        tokens, padded = int(self.tokens), int(self.padded)
        return {"trained_tokens": tokens, "padded_tokens": padded, "padding_share": round(1 - tokens / padded, 4),
                "micro_batches": self.batches, "seconds": round(self.seconds, 3),
                "trained_tokens_per_second": round(tokens / self.seconds, 1),
                "padded_tokens_per_second": round(padded / self.seconds, 1),
                "steps": metrics["steps"], "train_loss": metrics["train_loss"]}


def timed_training(base: str, sft_path: Path, tp: TrainParams, **load) -> dict:
    """One `train_sft` run with every output in a scratch directory; returns its TrainCounter result."""
    from lawshift.training import train_sft  # heavy imports only when this benchmark runs

    counter = TrainCounter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        dirs = {name: Path(tmp) / name for name in ("ckpt_dir", "live_dir", "tb_dir")}
        metrics = train_sft(base, sft_path, Path(tmp) / "sft", tp, callbacks=[counter], **dirs, **load)
    return counter.result(metrics)


def compare_grouping(base: str, sft_path: Path, tp: TrainParams, warm_up: bool = True, **load) -> dict:
    """The same training run with random and with length-grouped micro-batches, one after the other."""
    tp = replace(tp, save_steps=10**9)  # no checkpoint writes inside the timings (bookkeeping only)
    if warm_up:  # one-off costs (imports, kernels, allocator) stay out of the first timed run
        timed_training(base, sft_path, replace(tp, max_steps=1), **load)
    runs = {}
    for name, grouped in GROUPING.items():
        print(f"bench train: {name}", file=sys.stderr)
        runs[name] = timed_training(base, sft_path, replace(tp, group_by_length=grouped), **load)
    rnd, grp = runs["random"], runs["group_by_length"]
    return {"runs": runs,
            "speedup_group_by_length": round(grp["trained_tokens_per_second"] / rnd["trained_tokens_per_second"], 3),
            "padded_tokens_saved": rnd["padded_tokens"] - grp["padded_tokens"]}


def mixed_length_sft(src: Path, dst: Path, tokenizer, articles_path: str, target: int) -> Path:
    """`src`'s records with every other prompt lengthened to `target` tokens by further articles (`long_prompt`)."""
    articles = load_articles(articles_path)
    lookup = ArticleLookup(articles, articles_path)
    records = []
    for k, (line, rec) in enumerate(files.read_jsonl(src)):
        if k % 2:
            try:
                case = Case(rec["fact"], tuple(rec["relevant_articles"]), rec["charge"], rec["prison_time"])
            except (KeyError, TypeError) as err:
                raise InputError(src, f"record needs fact, relevant_articles, charge and prison_time ({err})",
                                 line=line) from None
            rec = {**rec, "prompt": long_prompt(tokenizer, case, articles, lookup.for_case(case, k, src), target)}
        records.append(rec)
    files.write_jsonl(dst, records)
    return dst


def train_bench(args: argparse.Namespace) -> dict:
    p = load_params(args.params)
    given = {"num_train_epochs": args.epochs, "max_steps": args.max_steps}
    tp = replace(p.train, **{k: v for k, v in given.items() if v is not None})
    models.offline_env()
    if args.threads < 1:
        raise InputError("--threads", f"must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    base = models.resolve_base(BASE)
    load = {"trust_remote_code": p.model.trust_remote_code, "allow_pickle": p.model.allow_pickle}
    variants = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-data-") as tmp:
        data = {"real": args.sft}
        if args.mixed_prompt_tokens:
            tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
            data["mixed_lengths"] = mixed_length_sft(args.sft, Path(tmp) / "sft.jsonl", tokenizer,
                                                     p.data.train_articles, args.mixed_prompt_tokens)
        for k, (name, path) in enumerate(data.items()):
            print(f"bench train: {name} data", file=sys.stderr)
            variants[name] = compare_grouping(base, path, tp, warm_up=args.warm_up and k == 0, **load)
    return {"command": "python -m lawshift.bench " + " ".join(args.argv),
            "settings": {"model": base, "data": str(args.sft), "num_train_epochs": tp.num_train_epochs,
                         "max_steps": tp.max_steps, "per_device_train_batch_size": tp.per_device_train_batch_size,
                         "gradient_accumulation_steps": tp.gradient_accumulation_steps,
                         "load_in_4bit": tp.load_in_4bit, "gradient_checkpointing": tp.gradient_checkpointing,
                         "seed": tp.seed, "device": str(models.pick_device(tp.device)), **environment(),
                         "mixed_prompt_tokens": args.mixed_prompt_tokens},
            "variants": variants}


def print_train(result: dict) -> None:
    s = result["settings"]
    print(f"train: {s['data']}, epochs {s['num_train_epochs']}, max_steps {s['max_steps']}, micro-batch "
          f"{s['per_device_train_batch_size']}, {s['device']} with {s['torch_threads']} thread(s)")
    for variant, v in result["variants"].items():
        print(f"  {variant} data")
        for name, r in v["runs"].items():
            print(f"    {name:<16} {r['trained_tokens_per_second']:>8.1f} trained tok/s  "
                  f"{r['padded_tokens_per_second']:>8.1f} padded tok/s  padding {r['padding_share']:.1%}  "
                  f"{r['trained_tokens']} tokens in {r['seconds']:.2f} s")
        print(f"    group_by_length / random: x{v['speedup_group_by_length']} trained tokens/s")


def write_entry(path: Path, name: str, entry: dict) -> None:
    """Replace one benchmark's entry of the metrics file, keeping the others."""
    current = files.read_json(path) if path.is_file() else {}
    if not isinstance(current, dict):
        raise InputError(path, "must be a JSON object; delete it to start afresh")
    files.write_json(path, {**current, name: entry})


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lawshift.bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="bench", required=True)
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
    s.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine, the per-case loop's many tiny ops on two "
                        "threads stall whenever the other core is busy, which would flatter the sampler)")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--out", type=Path, default=OUT)
    s.set_defaults(run=sampling_bench, show=print_sampling)
    t = sub.add_parser("train", help="train stage tokens/s with and without length-grouped micro-batches")
    t.add_argument("--epochs", type=float, help="default: train.num_train_epochs")
    t.add_argument("--max-steps", type=int, help="default: train.max_steps (set, the runs may see different answers)")
    t.add_argument("--sft", type=Path, default=SFT, help=f"accepted answers to train on (default: {SFT})")
    t.add_argument("--mixed-prompt-tokens", type=int, default=800,
                   help="length every other prompt of the mixed-lengths data is brought to; 0 skips it (default 800)")
    t.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="skip the untimed one-step run")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--out", type=Path, default=OUT)
    t.set_defaults(run=train_bench, show=print_train)
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    result = args.run(args)
    write_entry(args.out, args.bench, result)
    args.show(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    files.run_stage(main)
