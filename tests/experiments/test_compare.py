"""lawshift.experiments.compare: the columns chosen from `dvc exp show --json`, on tables of runs and on a real DVC
project."""

import copy
import json
import subprocess
import sys

import pytest
from conftest import ENV, REPO, read_json, run
from dvc_standin import metrics_files, standin_project

from lawshift.core import paths
from lawshift.experiments.compare import (
    LIMIT,
    Run,
    cpu_family,
    differing,
    flatten,
    render,
    rounds_of,
    runs_from_show,
    table,
)

ROUNDS2 = {"round1": {"policy": "base", "keep_previous": False}, "round2": {"policy": "round1", "keep_previous": False}}
# the default run's committed metrics, less the GRPO arm's: the tests of the rounds' columns add it where it matters
METRICS = {rel: read_json(REPO / rel) for rel in metrics_files() if "/grpo/" not in rel}


def make_run(name: str, metrics: dict | None = None, **params) -> Run:
    tree = {"seed": 0, "train": {"learning_rate": 0.001}, "rounds": ROUNDS2}
    return Run(name, flatten({**tree, **params}), METRICS if metrics is None else metrics)


def test_flatten_and_differing():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}, "e": None}) == {"a.b": 1, "a.c": [1, 2], "d": {}, "e": None}
    runs = [make_run("w"), make_run("s1", seed=1), make_run("s2", seed=2)]
    assert differing(runs) == ["seed"]
    # a key only some runs have differs; a run without params (queued, failed) is not compared
    three = {**ROUNDS2, "round3": {"policy": "round2", "keep_previous": False}}
    runs += [make_run("ref", rounds=three), Run("queued")]
    assert differing(runs) == ["seed", "rounds.round3.policy", "rounds.round3.keep_previous"]
    assert rounds_of(runs) == ["round1", "round2", "round3"]


def test_default_and_seeds():
    """The default run and four seeds: the seed, then each round's sampling and each model's figures, 10 columns."""
    runs = [make_run("workspace"), make_run("main"), *(make_run(f"seed-{s}", seed=s) for s in (1, 2, 3, 4))]
    t = table(runs)
    assert t.headers == ["run", "seed", "round1 acc (cov)", "round2 acc (cov)", "base exact", "base LawShift",
                         "round1 exact", "round1 LawShift", "round2 exact", "round2 LawShift"]
    assert [r[:2] for r in t.rows] == [["workspace", "0"], ["main", "0"], *([f"seed-{s}", str(s)] for s in range(1, 5))]
    f1, base = METRICS[paths.round_files("round1")["filter_metrics"]], METRICS[paths.eval_files("base")["metrics"]]
    row = dict(zip(t.headers, t.rows[0], strict=True))
    assert row["round1 acc (cov)"] == (f"{100 * f1['acceptance_rate']:.1f} ({100 * f1['coverage_first']:.1f}"
                                       f"→{100 * f1['coverage']:.1f})")
    assert row["base exact"] == "/".join(f"{100 * base[k]:.1f}" for k in ("train_exact", "train_pass_at_k",
                                                                          "train_majority"))
    assert row["base LawShift"] == "/".join(f"{100 * base['overall'][k]:.1f}" for k in ("original", "poisoned", "gap"))
    assert "pass@3/majority of 3" in t.notes[1] and len(t.notes) == 2


def on_cpu(cpu: str) -> dict:
    """The committed metrics with every time file's `numerics.cpu` set to `cpu`."""
    out = copy.deepcopy(METRICS)
    for rel, m in out.items():
        if rel.startswith("metrics/time/"):
            m["numerics"]["cpu"] = cpu
    return out


def test_the_cpu_family_is_named_when_the_runs_differ_in_it():
    """The same params give other figures on an Intel and an AMD CPU (docs/reproducibility.md): when the runs ran on
    different families, a note names each run's; when they share one, nothing is added."""
    amd, intel = on_cpu("AMD EPYC"), on_cpu("Intel Xeon")
    same = table([make_run("workspace", amd), make_run("seed-1", amd, seed=1)])
    assert not any("CPU family" in n for n in same.notes)
    mixed = table([make_run("workspace", amd), make_run("seed-1", intel, seed=1), Run("queued")])
    (note,) = [n for n in mixed.notes if "CPU family" in n]
    assert note.endswith("workspace AMD EPYC; seed-1 Intel Xeon; queued –")
    assert cpu_family(make_run("both", {**amd, "metrics/time/base.json": intel["metrics/time/base.json"]})) == (
        "AMD EPYC + Intel Xeon")
    assert "CPU family per run" in render(mixed)


@pytest.mark.parametrize(("n_params", "shown", "left"), [(0, 0, 0), (1, 1, 0), (3, 3, 0), (4, 3, 1), (9, 3, 6)])
def test_params_fill_what_the_figures_leave(n_params, shown, left):
    """Three rounds take 1 + 3 + 8 = 12 columns: 3 are left for the params that differ, the rest go to a note."""
    three = {**ROUNDS2, "round3": {"policy": "round2", "keep_previous": False}}
    other = {f"p{i}": 1 for i in range(n_params)}
    t = table([make_run("a", rounds=three, **{f"p{i}": 0 for i in range(n_params)}), make_run("b", rounds=three,
                                                                                              **other)])
    assert len(t.headers) == 12 + shown <= LIMIT
    assert t.headers[1:1 + shown] == [f"p{i}" for i in range(shown)]
    assert any(n.startswith(f"{left} more params differ: p{shown}") for n in t.notes) == bool(left)


def test_missing_figures_and_runs_without_data():
    """A run without a round's metrics (the default beside a three-round profile) or without any (queued) shows –."""
    three = {**ROUNDS2, "round3": {"policy": "round2", "keep_previous": False}}
    t = table([make_run("default"), make_run("ref", metrics={}, rounds=three), Run("queued")])
    rows = {r[0]: dict(zip(t.headers, r, strict=True)) for r in t.rows}
    assert rows["default"]["round3 exact"] == "–/–/–" and rows["default"]["round3 acc (cov)"] == "– (–→–)"
    assert rows["default"]["round1 exact"] != "–/–/–"
    assert rows["ref"]["rounds.round3.policy"] == "round2" and rows["default"]["rounds.round3.policy"] == "–"
    assert set(rows["queued"].values()) - {"queued"} <= {"–", "–/–/–", "– (–→–)"}


@pytest.mark.parametrize(("n_rounds", "split", "dropped"), [(3, True, 0), (4, False, 0), (6, False, 0), (7, False, 1)])
def test_many_rounds_still_fit(n_rounds, split, dropped):
    """Each model's two columns merge when the rounds leave no room for a param; past that, the earliest rounds
    go, named in a note."""
    rounds = {f"round{i}": {"policy": f"round{i - 1}" if i > 1 else "base"} for i in range(1, n_rounds + 1)}
    t = table([make_run("a", rounds=rounds), make_run("b", rounds=rounds, seed=1)])
    assert len(t.headers) <= LIMIT and t.headers[1] == "seed"
    assert ("base LawShift" in t.headers) == split and ("base exact · LawShift" in t.headers) == (not split)
    kept = [h.split()[0] for h in t.headers if h.endswith("acc (cov)")]
    assert kept == [f"round{i}" for i in range(dropped + 1, n_rounds + 1)]
    assert any(n.startswith("rounds left out") for n in t.notes) == bool(dropped)


def test_runs_from_show():
    """DVC 3's `exp show --json`: the workspace, the baseline commit, its experiments (a range each, whose executor
    says whether it is queued, running or failed)."""
    state = {"params": {"params.yaml": {"data": {"seed": 0, "rounds": ROUNDS2}}},
             "metrics": {"metrics/round1/filter.json": {"data": {"acceptance_rate": 0.5}},
                         "metrics/broken.json": {"error": {"type": "JSONDecodeError", "msg": "x"}}}}
    exp = copy.deepcopy(state)
    exp["params"]["params.yaml"]["data"]["seed"] = 3
    shown = [{"rev": "workspace", "name": None, "data": state, "error": None, "experiments": None},
             {"rev": "a" * 40, "name": "main", "data": state, "error": None, "experiments": [
                 {"revs": [{"rev": "b" * 40, "name": "seed-3", "data": exp, "error": None, "experiments": None}],
                  "executor": {"state": "success"}, "name": "seed-3"},
                 {"revs": [{"rev": "c" * 40, "name": None, "data": None, "error": None, "experiments": None}],
                  "executor": {"state": "queued"}, "name": None}]}]
    runs = runs_from_show(shown)
    assert [r.name for r in runs] == ["workspace", "main", "seed-3", "ccccccc (queued)"]
    assert runs[2].params["seed"] == 3 and runs[2].params["rounds.round2.policy"] == "round1"
    assert list(runs[0].metrics) == ["metrics/round1/filter.json"] and runs[3].params == {}


def test_render_pads_columns():
    t = table([make_run("workspace"), make_run("s", seed=11)])
    lines = render(t).splitlines()
    assert len({len(line) for line in lines[:4]}) == 1 and lines[0].startswith("| run       | seed |")
    assert lines[4] == "" and lines[5:] == t.notes


@pytest.mark.slow
def test_real_experiments(tmp_path):
    """The seeds of `make seeds` (lawshift.experiments.seeds queues and names them) on a stand-in DVC project, through
    `python -m lawshift.experiments.compare`: every row, the seed as the only param, the GRPO arm's figures after the
    rounds', at most 15 columns."""
    root = standin_project(tmp_path / "p")
    run([sys.executable, "-c", "from lawshift.experiments.seeds import run_experiments; run_experiments([1, 2])"], root)
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, env=ENV,
                                      capture_output=True, text=True, check=True).stdout)
    assert sorted(r.name for r in runs_from_show(shown)) == ["main", "seed-1", "seed-2", "workspace"]
    out = run([sys.executable, "-m", "lawshift.experiments.compare"], root)
    header, _, *rows = out.splitlines()[:6]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:2] == ["run", "seed"] and cells[-2:] == ["grpo exact", "grpo LawShift"] and len(cells) == 12 <= LIMIT
    by_name = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in rows}
    assert {n: c[1] for n, c in by_name.items()} == {"workspace": "0", "main": "0", "seed-1": "1", "seed-2": "2"}
    # each seed its own figures (the stand-in scales them by the seed); the workspace is HEAD's run
    assert by_name["workspace"][2:] == by_name["main"][2:]
    assert len({by_name[n][4] for n in ("main", "seed-1", "seed-2")}) == 3


def test_the_grpo_arm_gets_its_columns_when_a_run_evaluated_it():
    grpo_eval = paths.eval_files(paths.GRPO)["metrics"]
    with_arm = {**METRICS, grpo_eval: METRICS[paths.eval_files("round2")["metrics"]]}
    t = table([make_run("workspace", with_arm), make_run("seed-1", seed=1)])
    assert t.headers[-2:] == ["grpo exact", "grpo LawShift"]
    assert t.rows[0][-2:] == t.rows[0][-4:-2] and t.rows[1][-2:] == ["–/–/–", "–/–/–"]
    assert "grpo exact" not in table([make_run("workspace")]).headers
