"""The README's results table, regenerated from the metrics of the last run instead of typed by hand.

    python -m lawshift.results            # rewrite the block between the results markers in README.md
    python -m lawshift.results --print    # print the table only
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lawshift import paths
from lawshift.files import InputError, read_json, write_text

SEEDS = "metrics/seeds.json"  # written by python -m lawshift.seeds
START, END = "<!-- results:start -->", "<!-- results:end -->"


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


LABELS = {"acceptance": "acceptance (accepted / sampled answers)",
          "coverage": "coverage (cases with an accepted answer)"}


def _label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    model, figure = key.split(".", 1)
    return f"{model}: " + {"train_exact": "train exact", "original": "LawShift original",
                           "poisoned": "LawShift poisoned", "gap": "LawShift gap"}.get(figure, figure)


def spread_table(seeds: dict) -> list[str]:
    """Lines of the seed table from metrics/seeds.json: each figure's default-seed value, mean and min–max."""
    runs = seeds["seeds"]
    default = runs[str(seeds["default_seed"])]
    names = ", ".join(sorted(runs, key=int))
    lines = [f"Over {len(runs)} seeds ({names}; `make seeds`, then `python -m lawshift.results`):", "",
             f"| figure | seed {seeds['default_seed']} | mean | min–max |", "|---|---|---|---|"]
    for key in default:
        values = [r[key] for r in runs.values() if r.get(key) is not None]
        if not values:
            continue
        lines.append(f"| {_label(key)} | {pct(default[key])} | {pct(sum(values) / len(values))} "
                     f"| {pct(min(values))} – {pct(max(values))} |")
    return lines


def results_table(root: str | Path = ".") -> str:
    """The table from the metrics files of the project at `root` (paths as in lawshift/paths.py), and the spread
    over seeds from metrics/seeds.json when it is there and was made from the same default run."""
    root = Path(root)
    evals = {m: read_json(root / e["metrics"]) for m, e in paths.EVAL.items() if (root / e["metrics"]).is_file()}
    if not evals:
        raise InputError(root / "metrics", "no eval metrics: run the pipeline first (make repro)")
    filt = read_json(root / paths.FILTER_METRICS) if (root / paths.FILTER_METRICS).is_file() else {}
    lines = ["The default run (`make repro`; the same digits on any x86-64 machine with AVX2, Intel or AMD, see "
             "Reproducibility); regenerate with `python -m lawshift.results`.", "",
             "| model | train exact | LawShift original | LawShift poisoned | gap | format valid |",
             "|---|---|---|---|---|---|"]
    for name, m in evals.items():
        o = m["overall"]
        lines.append(f"| {name} | {pct(m.get('train_exact'))} | {pct(o['original'])} | {pct(o['poisoned'])} "
                     f"| {pct(o['gap'])} | {pct(o['format_valid'])} |")
    if filt:
        lines += ["", f"Rejection sampling accepted {pct(filt.get('acceptance_rate'))} of "
                      f"{filt.get('total_generated')} answers; {filt.get('samples_with_no_correct')} of "
                      f"{filt.get('total_samples')} cases had none accepted."]
    seeds_file = root / SEEDS
    if seeds_file.is_file():
        seeds = read_json(seeds_file)
        default = seeds["seeds"][str(seeds["default_seed"])]
        if filt and default["acceptance"] != filt.get("acceptance_rate"):
            raise InputError(seeds_file, "made from another default run than the metrics here: rerun make seeds")
        lines += ["", *spread_table(seeds)]
    return "\n".join(lines)


def update_readme(readme: str | Path, table: str) -> None:
    text = Path(readme).read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise InputError(readme, f"no {START} … {END} block to update")
    write_text(readme, pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="the project whose metrics/ to read")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--print", action="store_true", help="print the table instead of updating the README")
    args = ap.parse_args()
    table = results_table(args.root)
    if args.print:
        print(table)
    else:
        update_readme(args.readme, table)
        print(f"updated {args.readme}")


if __name__ == "__main__":
    from lawshift.files import run_stage

    run_stage(main)
