"""The experiments side by side in at most 15 columns, from `dvc exp show --json` (make compare).

    python -m lawshift.experiments.compare     # the workspace, HEAD and HEAD's experiments (make seeds, make reference)
    python -m lawshift.experiments.compare -A  # any other `dvc exp show` options are passed on (-A: every commit)
    python -m lawshift.experiments.compare --json FILE   # a saved `dvc exp show --json` instead of running DVC

One row per run; the columns: the params whose values differ between the runs, then per round its sampling
(filter.json: acceptance, coverage after the first draws and after resampling) and per model, the base and each
round's and the GRPO arm's, its eval (train exact: mean, pass@k, majority; LawShift: original, poisoned, gap) - the
figures of the README's results table (lawshift/experiments/results.py). The rounds come from each run's `rounds`.
When the runs ran on different CPU families (`numerics.cpu` in their metrics/time files), a note names each run's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lawshift.core import paths
from lawshift.core.files import InputError, read_text

LIMIT = 15  # columns, the run's name included
PARAMS_FILE = "params.yaml"
MISSING = "–"
TIME_DIR = "metrics/time/"  # each stage's time file, with the numerics (and CPU) it ran under


@dataclass(frozen=True)
class Run:
    """One row: a run's name, its params flattened to dotted keys, and its metrics files (path -> data)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    notes: list[str]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def _run(state: dict, name: str) -> Run:
    data = state.get("data") or {}
    params: dict[str, Any] = {}
    for file, got in (data.get("params") or {}).items():
        params |= flatten(got.get("data") or {}, "" if file == PARAMS_FILE else f"{file}:")
    metrics = {file: got["data"] for file, got in (data.get("metrics") or {}).items() if got.get("data")}
    return Run(name, params, metrics)


def _short(rev: str) -> str:
    return rev if rev == "workspace" else rev[:7]


def runs_from_show(shown: list[dict]) -> list[Run]:
    """The rows of `dvc exp show --json` in its order: the workspace, each baseline commit (its name, else its short
    rev), then that commit's experiments (their names; a queued, running or failed one says so)."""
    runs = []
    for state in shown:
        runs.append(_run(state, state.get("name") or _short(state["rev"])))
        for exp in state.get("experiments") or []:
            for rev in exp["revs"]:
                name = exp.get("name") or rev.get("name") or _short(rev["rev"])
                status = (exp.get("executor") or {}).get("state")
                runs.append(_run(rev, name if status in (None, "success") else f"{name} ({status})"))
    return runs


def differing(runs: Sequence[Run]) -> list[str]:
    """The params whose values are not the same in every run that has params, in the order they first appear (a key
    that only some runs have, such as a third round's, differs)."""
    with_params = [r for r in runs if r.params]
    keys = list(dict.fromkeys(k for r in with_params for k in r.params))
    return [k for k in keys if len({json.dumps(r.params.get(k, MISSING)) for r in with_params}) > 1]


def rounds_of(runs: Sequence[Run]) -> list[str]:
    """The rounds of every run's `rounds`, in the order they first appear."""
    names = (k.split(".")[1] for r in runs for k in r.params if k.startswith("rounds."))
    return list(dict.fromkeys(names))


def pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, int | float) and not isinstance(x, bool) else MISSING


def value(x: Any) -> str:
    return x if isinstance(x, str) else json.dumps(x, ensure_ascii=False, separators=(",", ":"))


def sampling(run: Run, name: str) -> str:
    f = run.metrics.get(paths.round_files(name)["filter_metrics"], {})
    return f"{pct(f.get('acceptance_rate'))} ({pct(f.get('coverage_first'))}→{pct(f.get('coverage'))})"


def exact(run: Run, model: str) -> str:
    m = run.metrics.get(paths.eval_files(model)["metrics"], {})
    return "/".join(pct(m.get(k)) for k in ("train_exact", "train_pass_at_k", "train_majority"))


def lawshift(run: Run, model: str) -> str:
    o = run.metrics.get(paths.eval_files(model)["metrics"], {}).get("overall", {})
    return "/".join(pct(o.get(k)) for k in ("original", "poisoned", "gap"))


def cpu_family(run: Run) -> str:
    """The CPU family (or families) a run's stages ran on, from the `numerics.cpu` of its metrics/time files."""
    found = {(m.get("numerics") or {}).get("cpu") or m.get("cpu") for f, m in run.metrics.items()
             if f.startswith(TIME_DIR) and isinstance(m, dict)}
    return " + ".join(sorted(c for c in found if isinstance(c, str))) or MISSING


def cpu_note(runs: Sequence[Run]) -> list[str]:
    """One note naming each run's CPU family, when the runs that record one do not all share it."""
    families = {run.name: cpu_family(run) for run in runs}
    if len({f for f in families.values() if f != MISSING}) < 2:
        return []
    return ["CPU family per run (the same params give other figures on another family: docs/reproducibility.md): "
            + "; ".join(f"{name} {family}" for name, family in families.items())]


def arms_of(runs: Sequence[Run]) -> list[str]:
    """The GRPO arm, when any run evaluated its model."""
    return [paths.GRPO] if any(paths.eval_files(paths.GRPO)["metrics"] in r.metrics for r in runs) else []


def _k(runs: Sequence[Run]) -> str:
    evals = {paths.eval_files(m)["metrics"] for m in (paths.BASE_MODEL, *rounds_of(runs), *arms_of(runs))}
    ks = {m["k"] for r in runs for f, m in r.metrics.items() if f in evals and "k" in m}
    return str(ks.pop()) if len(ks) == 1 else "k"


def table(runs: Sequence[Run], limit: int = LIMIT) -> Table:
    """The comparison in at most `limit` columns. Each round takes one column (its sampling) and each model two
    (train exact, LawShift); when they leave no room for a differing param, each model's two become one, and when
    even that is too wide only the latest rounds are shown. The differing params fill what is left, in params.yaml's
    order; those that do not fit are named in a note."""
    params, rounds, arms = differing(runs), rounds_of(runs), arms_of(runs)
    want = 1 + min(len(params), 1) + len(arms)  # the name, at least one param when any differs, the GRPO arm's
    split = want + len(rounds) + 2 * (1 + len(rounds)) + len(arms) <= limit
    shown = rounds if split else rounds[max(0, len(rounds) - (limit - want - 1) // 2):]
    Cell = Callable[[Run], str]
    figures: list[tuple[str, Cell]] = [(f"{r} acc (cov)", lambda run, r=r: sampling(run, r)) for r in shown]
    for model in (paths.BASE_MODEL, *shown, *arms):
        if split:
            figures += [(f"{model} exact", lambda run, m=model: exact(run, m)),
                        (f"{model} LawShift", lambda run, m=model: lawshift(run, m))]
        else:
            figures += [(f"{model} exact · LawShift", lambda run, m=model: f"{exact(run, m)} · {lawshift(run, m)}")]
    room = max(0, limit - 1 - len(figures))
    keep, left = params[:room], params[room:]
    headers = ["run", *keep, *(h for h, _ in figures)]
    rows = [[run.name, *(value(run.params.get(k, MISSING)) if run.params else MISSING for k in keep),
             *(cell(run) for _, cell in figures)] for run in runs]
    k = _k(runs)
    notes = ["in %: acc (cov) = the round's acceptance (its coverage after the first draws→after resampling)",
             f"exact = train exact mean/pass@{k}/majority of {k} answers; LawShift = original/poisoned/gap"
             + ("" if split else " (each model's in one column)")]
    notes += cpu_note(runs)
    if left:
        notes.append(f"{len(left)} more params differ: {', '.join(left)}")
    if len(shown) < len(rounds):
        notes.append(f"rounds left out (too many for {limit} columns): {', '.join(rounds[:len(rounds) - len(shown)])}")
    return Table(headers, rows, notes)


def render(t: Table) -> str:
    """A Markdown table, each column padded to its widest cell, then the notes."""
    widths = [max(len(c) for c in col) for col in zip(t.headers, *t.rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(t.headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in t.rows), "", *t.notes])


def exp_show(args: Sequence[str] = ()) -> list[dict]:
    """`dvc exp show --json` of the project in the working directory, parsed."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", *args], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise InputError("dvc exp show", (proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(proc.stdout)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lawshift.experiments.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="FILE", help="a saved `dvc exp show --json` to read instead of running DVC")
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    shown = json.loads(read_text(args.json)) if args.json else exp_show(rest)
    print(render(table(runs_from_show(shown))))


if __name__ == "__main__":
    from lawshift.core.files import run_stage

    run_stage(main)
