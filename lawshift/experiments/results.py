"""The README's results table and its timings line, regenerated from the last run's metrics, never typed by hand.

    python -m lawshift.experiments.results            # rewrite the results and timings blocks of README.md
    python -m lawshift.experiments.results --print    # print the table and the timings only
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lawshift.core import paths
from lawshift.core.files import InputError, read_json, write_text
from lawshift.core.params import load_params
from lawshift.core.runinfo import time_files
from lawshift.evaluate.evalmetrics import pct

SEEDS = "metrics/seeds.json"  # written by python -m lawshift.experiments.seeds
START, END = "<!-- results:start -->", "<!-- results:end -->"
TIMINGS = "<!-- timings:start -->", "<!-- timings:end -->"  # inline, in the README's first paragraphs


FIGURES = {"acceptance": "acceptance", "coverage_first": "coverage after the first draws",
           "coverage": "coverage after resampling", "train_exact": "train exact (mean)",
           "train_pass_at_k": "train exact pass@k", "train_majority": "train exact majority vote",
           "original": "LawShift original", "poisoned": "LawShift poisoned", "gap": "LawShift gap"}


def _label(key: str) -> str:
    model, figure = key.split(".", 1)
    return f"{model}: {FIGURES.get(figure, figure)}"


def spread_table(seeds: dict) -> list[str]:
    """Lines of the seed table from metrics/seeds.json: each figure's default-seed value, mean and min–max."""
    runs = seeds["seeds"]
    default = runs[str(seeds["default_seed"])]
    names = ", ".join(sorted(runs, key=int))
    lines = [f"Over {len(runs)} seeds ({names}; `make seeds`, then `python -m lawshift.experiments.results`):", "",
             f"| figure | seed {seeds['default_seed']} | mean | min–max |", "|---|---|---|---|"]
    for key in default:
        values = [r[key] for r in runs.values() if r.get(key) is not None]
        if not values:
            continue
        lines.append(f"| {_label(key)} | {pct(default[key])} | {pct(sum(values) / len(values))} "
                     f"| {pct(min(values))} – {pct(max(values))} |")
    return lines


def _read(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def answers_paid(root: Path, rounds: list[str]) -> dict[str, int | None]:
    """What each model cost in generated answers: round k's model all answers rounds 1..k sampled, the GRPO arm's
    the answers it generated (its metrics), the base none."""
    out: dict[str, int | None] = {paths.BASE_MODEL: 0}
    total: int | None = 0
    for name in rounds:
        got = _read(root / paths.round_files(name)["sample_metrics"]).get("answers_generated")
        total = None if got is None or total is None else total + got
        out[name] = total
    out[paths.GRPO] = _read(root / paths.GRPO_FILES["metrics"]).get("answers_generated")
    return out


def model_rows(root: Path, rounds: list[str]) -> list[str]:
    """One row per model: the answers generated to make it; as a policy, the acceptance and coverage of the round
    it sampled (the base samples round1, round k's model samples round k+1; the last round's model and the GRPO
    arm's sample none); as a judge, its eval. The GRPO arm's row when it ran."""
    lines = ["| model | answers generated | samples | acceptance | coverage: first draws → resampled | train exact: "
             "mean · pass@k · majority | LawShift original | LawShift poisoned | gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    paid = answers_paid(root, rounds)
    arm = [paths.GRPO] if (root / paths.eval_files(paths.GRPO)["metrics"]).is_file() else []
    for k, name in enumerate([paths.BASE_MODEL, *rounds, *arm]):
        m = _read(root / paths.eval_files(name)["metrics"])
        sampled = rounds[k] if k < len(rounds) else None
        f = _read(root / paths.round_files(sampled)["filter_metrics"]) if sampled else {}
        o = m.get("overall", {})
        cost = "–" if paid.get(name) is None else str(paid[name])
        lines.append(f"| {name} | {cost} | {sampled or '–'} | {pct(f.get('acceptance_rate'))} "
                     f"| {pct(f.get('coverage_first'))} → {pct(f.get('coverage'))} "
                     f"| {pct(m.get('train_exact'))} · {pct(m.get('train_pass_at_k'))} · "
                     f"{pct(m.get('train_majority'))} | {pct(o.get('original'))} | {pct(o.get('poisoned'))} "
                     f"| {pct(o.get('gap'))} |")
    return lines


def round_notes(root: Path, rounds: list[str]) -> list[str]:
    """One line per round: answers sampled, the cases resampled and the draws they cost, what training kept."""
    out = []
    for name in rounds:
        where = paths.round_files(name)
        s, f = _read(root / where["sample_metrics"]), _read(root / where["filter_metrics"])
        if not s or not f:
            continue
        out.append(f"- {name}: {s['answers_generated']} answers for {s['cases']} cases, "
                   f"{s.get('extra_answers', 0)} of them further draws for {s.get('cases_resampled', 0)} resampled "
                   f"cases; {f['total_accepted']} accepted ({pct(f['acceptance_rate'])}), "
                   f"{f['samples_with_no_correct']} cases with none; {f['sft_examples']} distinct answers trained on"
                   + (f", {f['kept_previous']} of them kept from earlier rounds" if f.get("kept_previous") else "")
                   + ".")
    g = _read(root / paths.GRPO_FILES["metrics"])
    if g:
        out.append(f"- grpo: {g['answers_generated']} answers of a budget of {g['budget']}, {g['generated_tokens']} "
                   f"tokens, in {g['steps']} steps of {g['answers_per_step'] // g['answers_per_case']} cases × "
                   f"{g['answers_per_case']} answers; mean {g['reward']} reward {pct(g['reward_first'])} at the "
                   f"first step, {pct(g['reward_last'])} at the last; {pct(g['groups_all_0'])} of the groups all "
                   "wrong (no signal).")
    return out


def results_table(root: str | Path = ".") -> str:
    """The table from the metrics files of the project at `root` (paths as in lawshift/core/paths.py, rounds from its
    params.yaml), and the spread over seeds from metrics/seeds.json when it is there and was made from the same
    default run."""
    root = Path(root)
    rounds = list(load_params(root / "params.yaml").rounds)
    if not (root / paths.eval_files(paths.BASE_MODEL)["metrics"]).is_file():
        raise InputError(root / "metrics", "no eval metrics: run the pipeline first (make repro)")
    k = _read(root / paths.eval_files(paths.BASE_MODEL)["metrics"]).get("k", 1)
    lines = ["The default run (`make repro`; its bytes checked on an Intel Xeon with AVX-512 and AMX, and on an "
             "AMD EPYC's MKL path by emulation: docs/reproducibility.md); regenerate with "
             "`python -m lawshift.experiments.results`. "
             f"Eval draws k = {k} answers per prompt: mean success, pass@{k} and majority vote.", "",
             *model_rows(root, rounds), "", *round_notes(root, rounds)]
    seeds_file = root / SEEDS
    if seeds_file.is_file():
        seeds = read_json(seeds_file)
        default = seeds["seeds"][str(seeds["default_seed"])]
        first = _read(root / paths.round_files(rounds[0])["filter_metrics"])
        if default.get(f"{rounds[0]}.acceptance") != first.get("acceptance_rate"):
            raise InputError(seeds_file, "made from another default run than the metrics here: rerun make seeds")
        lines += ["", *spread_table(seeds)]
    return "\n".join(lines)


def stage_seconds(root: str | Path = ".") -> dict[str, float]:
    """Each stage's wall seconds from the time files of the project at `root` (the rounds of its params.yaml)."""
    root = Path(root)
    rounds = list(load_params(root / "params.yaml").rounds)
    return {stage: float(_read(root / file).get("wall_seconds", 0.0)) for stage, file in time_files(rounds).items()
            if (root / file).is_file()}


def timings(root: str | Path = ".") -> str:
    """The README's line on how long the default run takes, from its time files (metrics/time/)."""
    root = Path(root)
    seconds = stage_seconds(root)
    if "base" not in seconds:
        raise InputError(root / "metrics" / "time", "no time files: run the pipeline first (make repro)")
    base = _read(root / paths.BASE_TIME).get("numerics", {})
    where = f"{base.get('omp_num_threads', '?')} threads of an {base.get('cpu', 'unknown CPU')}"
    return (f"The committed run's stages took {sum(seconds.values()):.0f} s on {where}, {seconds['base']:.0f} s of "
            "it the tiny base's warm-start")


def update_block(text: str, start: str, end: str, content: str, inline: bool = False) -> str | None:
    """`text` with the block between `start` and `end` replaced by `content`; None if it has no such block."""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return None
    sep = "" if inline else "\n"
    return pattern.sub(lambda _: f"{start}{sep}{content}{sep}{end}", text)


def update_readme(readme: str | Path, table: str, timing: str | None = None) -> None:
    text = Path(readme).read_text(encoding="utf-8")
    updated = update_block(text, START, END, table)
    if updated is None:
        raise InputError(readme, f"no {START} … {END} block to update")
    if timing is not None:  # a README without the timings block keeps the table alone
        updated = update_block(updated, *TIMINGS, timing, inline=True) or updated
    write_text(readme, updated)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m lawshift.experiments.results", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="the project whose metrics/ to read")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--print", action="store_true", help="print the table instead of updating the README")
    args = ap.parse_args()
    table = results_table(args.root)
    timing = timings(args.root) if (Path(args.root) / paths.BASE_TIME).is_file() else None
    if args.print:
        print(table if timing is None else f"{table}\n\n{timing}")
    else:
        update_readme(args.readme, table, timing)
        print(f"updated {args.readme}")


if __name__ == "__main__":
    from lawshift.core.files import run_stage

    run_stage(main)
