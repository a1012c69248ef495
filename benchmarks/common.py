"""What the benchmarks share: the environment record, the `benchmarks/results.json` entry, the common options (threads,
params, output file) and the long prompts (the case's prompt with further articles of the articles file).

Not run on its own: `python -m benchmarks sampling|train` (benchmarks/__main__.py) uses it.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import transformers

from lawshift.core import files, paths
from lawshift.core.files import InputError
from lawshift.task.data import Case
from lawshift.task.prompts import Prompt, render_prompt

BASE = Path(paths.BASE)
OUT = Path("benchmarks/results.json")
PROG = "python -m benchmarks"


def environment() -> dict:
    """What a benchmark figure depends on besides its settings: threads, processor, library versions."""
    return {"torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def command(args: argparse.Namespace) -> str:
    """The command line that produced a result, as recorded in its entry."""
    return f"{PROG} " + " ".join(args.argv)


def set_threads(threads: int) -> None:
    """Torch's CPU thread count for the run; `--threads` below 1 is an input error."""
    if threads < 1:
        raise InputError("--threads", f"must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def add_common_options(parser: argparse.ArgumentParser, threads_help: str) -> None:
    """The options every benchmark takes, after its own: --threads (default 1), --params, --out."""
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=OUT)


def write_entry(path: Path, name: str, entry: dict) -> None:
    """Replace one benchmark's entry of the results file, keeping the others."""
    current = files.read_json(path) if path.is_file() else {}
    if not isinstance(current, dict):
        raise InputError(path, "must be a JSON object; delete it to start afresh")
    files.write_json(path, {**current, name: entry})


def long_prompt(tokenizer, prompt: Prompt, case: Case, articles: dict[str, str], own: list[tuple[str, str]],
                target: int) -> str:
    """The case's prompt with further articles until it holds at least `target` tokens: its own articles first,
    then those that follow its first article in the articles file (the neighbouring provisions), in file order."""
    ids = list(articles)
    start = ids.index(own[0][0]) + 1 if own and own[0][0] in articles else 0
    chosen, seen = list(own), {a for a, _ in own}
    for k in range(len(ids)):
        text = render_prompt(tokenizer, prompt.messages(case.fact, chosen))
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= target:
            return text
        art = ids[(start + k) % len(ids)]
        if art not in seen:
            chosen.append((art, articles[art]))
            seen.add(art)
    return render_prompt(tokenizer, prompt.messages(case.fact, chosen))
