"""The train benchmark: the train stage's tokens/s with random vs length-grouped micro-batches.

    python -m benchmarks train                       # defaults: params.yaml's train.* on outputs/sft.jsonl
    python -m benchmarks train --epochs 1 --threads 2
    python -m benchmarks train --processes 1,2      # the stage on 1 and 2 processes (benchmarks/processes.py)

Runs `lawshift.train.training.train_sft` twice on the same data and seed, with `train.group_by_length` false and true,
into a temporary directory, after an untimed warm-up; a second pair mixes in long prompts (`--mixed-prompt-tokens`).
Reports trained and padded tokens/s and the padding share, and writes the `train` entry of benchmarks/results.json.
docs/benchmarks.md explains each run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import transformers

from benchmarks import processes
from benchmarks.common import BASE, add_common_options, command, environment, long_prompt, set_threads
from lawshift.core import files, models, paths
from lawshift.core.files import InputError
from lawshift.core.params import TrainParams, load_params
from lawshift.task.data import ArticleLookup, Case, load_articles
from lawshift.task.prompts import Prompt, load_prompt

SFT = Path(paths.round_files("round1")["sft"])
GROUPING = {"random": False, "group_by_length": True}  # train.group_by_length of each train run


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
    from lawshift.train.training import train_sft  # heavy imports only when this benchmark runs

    counter = TrainCounter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        dirs = {name: Path(tmp) / name for name in ("ckpt_dir", "live_dir", "tb_dir")}
        metrics, _ = train_sft(base, sft_path, Path(tmp) / "sft", tp, callbacks=[counter], **dirs, **load)
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


def mixed_length_sft(src: Path, dst: Path, tokenizer, prompt: Prompt, articles_path: str, target: int) -> Path:
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
            own = lookup.for_case(case, k, src)
            rec = {**rec, "prompt": long_prompt(tokenizer, prompt, case, articles, own, target)}
        records.append(rec)
    files.write_jsonl(dst, records)
    return dst


def train_bench(args: argparse.Namespace) -> dict:
    if args.processes:  # its own entry of results.json, beside the grouping one
        args.bench = "train_processes"
        return processes.compare([int(n) for n in args.processes.split(",")], Path(args.params), args.sft)
    given = {"num_train_epochs": args.epochs, "max_steps": args.max_steps}
    p = load_params(args.params, overrides={"train": {k: v for k, v in given.items() if v is not None}})
    tp = p.train
    models.offline_env()
    set_threads(args.threads)
    base = models.resolve_base(BASE)
    load = {"trust_remote_code": p.model.trust_remote_code, "allow_pickle": p.model.allow_pickle, "seed": p.seed}
    variants = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-data-") as tmp:
        data = {"real": args.sft}
        if args.mixed_prompt_tokens:
            tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
            data["mixed_lengths"] = mixed_length_sft(args.sft, Path(tmp) / "sft.jsonl", tokenizer,
                                                     load_prompt(p.sample.prompt), p.data.train_articles,
                                                     args.mixed_prompt_tokens)
        for k, (name, path) in enumerate(data.items()):
            print(f"bench train: {name} data", file=sys.stderr)
            variants[name] = compare_grouping(base, path, tp, warm_up=args.warm_up and k == 0, **load)
    return {"command": command(args),
            "settings": {"model": base, "data": str(args.sft), "num_train_epochs": tp.num_train_epochs,
                         "max_steps": tp.max_steps, "per_device_train_batch_size": tp.per_device_train_batch_size,
                         "gradient_accumulation_steps": tp.gradient_accumulation_steps,
                         "load_in_4bit": tp.load_in_4bit, "gradient_checkpointing": tp.gradient_checkpointing,
                         "seed": p.seed, "device": str(models.pick_device(tp.device)), **environment(),
                         "mixed_prompt_tokens": args.mixed_prompt_tokens},
            "variants": variants}


def print_train(result: dict) -> None:
    if "processes" in result:
        return processes.show(result)
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


def add_parser(sub) -> None:
    """The `train` subcommand of `python -m benchmarks`."""
    t = sub.add_parser("train", help="train stage tokens/s with and without length-grouped micro-batches")
    t.add_argument("--epochs", type=float, help="default: train.num_train_epochs")
    t.add_argument("--max-steps", type=int, help="default: train.max_steps (set, the runs may see different answers)")
    t.add_argument("--sft", type=Path, default=SFT, help=f"accepted answers to train on (default: {SFT})")
    t.add_argument("--mixed-prompt-tokens", type=int, default=800,
                   help="length every other prompt of the mixed-lengths data is brought to; 0 skips it (default 800)")
    t.add_argument("--processes", help="comma-separated process counts, e.g. 1,2: the stage's tokens/s on each")
    t.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="skip the untimed one-step run")
    add_common_options(t, "torch CPU threads (default 1: a shared machine)")
    t.set_defaults(run=train_bench, show=print_train)
