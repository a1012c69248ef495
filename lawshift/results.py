"""The README's results table, regenerated from the metrics of the last run instead of typed by hand.

    python -m lawshift.results            # rewrite the block between the results markers in README.md
    python -m lawshift.results --print    # print the table only
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
from pathlib import Path

from lawshift.files import InputError, read_json, write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"
MODELS = ("base", "sft")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def results_table(metrics_dir: str | Path = "metrics", date: str | None = None) -> str:
    metrics_dir = Path(metrics_dir)
    evals = {m: read_json(metrics_dir / f"eval_{m}.json") for m in MODELS if (metrics_dir / f"eval_{m}.json").is_file()}
    if not evals:
        raise InputError(metrics_dir, "no eval metrics: run the pipeline first (make repro)")
    filt = read_json(metrics_dir / "filter.json") if (metrics_dir / "filter.json").is_file() else {}
    date = date or dt.date.today().isoformat()
    lines = [f"Default run of {date} on {machine()}; regenerate with `python -m lawshift.results`.", "",
             "| model | train exact | LawShift original | LawShift poisoned | gap | format valid |",
             "|---|---|---|---|---|---|"]
    for name, m in evals.items():
        o = m["overall"]
        lines.append(f"| {name} | {_pct(m.get('train_exact'))} | {_pct(o['original'])} | {_pct(o['poisoned'])} "
                     f"| {_pct(o['gap'])} | {_pct(o['format_valid'])} |")
    if filt:
        lines += ["", f"Rejection sampling accepted {_pct(filt.get('acceptance_rate'))} of "
                      f"{filt.get('total_generated')} answers; {filt.get('samples_with_no_correct')} of "
                      f"{filt.get('total_samples')} cases had none accepted."]
    return "\n".join(lines)


def update_readme(readme: str | Path, table: str) -> None:
    text = Path(readme).read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise InputError(readme, f"no {START} … {END} block to update")
    write_text(readme, pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="metrics")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--print", action="store_true", help="print the table instead of updating the README")
    args = ap.parse_args()
    table = results_table(args.metrics)
    if args.print:
        print(table)
    else:
        update_readme(args.readme, table)
        print(f"updated {args.readme}")


if __name__ == "__main__":
    from lawshift.files import run_stage

    run_stage(main)
