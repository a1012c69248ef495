"""dvc.yaml against the code: deps that cannot drift, paths from one place.

* Every stage's deps cover its script, every `lawshift` module the script imports (directly or through other
  modules of the package), `lawshift/__init__.py`, and the package data files those modules name. A new import
  without a dvc.yaml dep fails here, so a code change can never leave a stale result that DVC thinks is current.
* Paths: dvc.yaml loads lawshift/core/paths.py as vars, and each stage's outs and metrics are exactly the paths the
  code writes (read through DVC's own resolver, so the `${…}` interpolation is checked too).
* Charts: one top-level chart per kind, drawn from the charts stage's files, which join every model's file of
  that kind: the stage depends on the folders that hold exactly those, so it covers every round of `rounds`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lawshift.core import paths
from lawshift.core.codedeps import PACKAGE, code_digest, code_files


def code_deps(script: Path) -> set[str]:
    return set(code_files(script.stem))


@pytest.fixture(scope="module")
def stages() -> dict:
    """dvc.yaml's stages as DVC resolves them: name -> (cmd, deps, outs, metrics)."""
    from dvc.repo import Repo

    resolved = {}
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            deps = {str(d.def_path) for d in stage.deps}
            outs = {str(o.def_path) for o in stage.outs if not o.metric}
            metrics = {str(o.def_path) for o in stage.outs if o.metric}
            resolved[stage.addressing] = (stage.cmd, deps, outs, metrics)
    return resolved


ROUNDS = ("round1", "round2")  # the repository's params.yaml


def test_every_stage_is_resolved(stages):
    assert set(stages) == {"base", "eval_base", "charts", "grpo", "eval_grpo",
                           *(f"{s}@{r}" for r in ROUNDS for s in ("sample", "filter", "train", "eval"))}


def test_the_lock_names_only_stages_of_dvc_yaml_and_only_files_that_exist(stages):
    lock = yaml.safe_load((REPO / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    assert set(lock) == set(stages)
    code = [d["path"] for entry in lock.values() for d in entry["deps"]
            if d["path"].startswith(("lawshift/", "stages/"))]
    assert code and [p for p in code if not (REPO / p).is_file()] == []


def test_deps_cover_every_module_a_stage_imports(stages):
    for name, (cmd, deps, _, _) in stages.items():
        script = REPO / cmd.split()[1]
        missing = code_deps(script) - deps
        assert not missing, f"dvc.yaml stage {name} misses deps {sorted(missing)}"


def test_the_import_walk_finds_lazy_and_transitive_imports():
    # train imports lawshift.train.training inside main(); training imports objective, which imports examples
    found = code_deps(REPO / "stages" / "train.py")
    assert {"lawshift/train/training.py", "lawshift/train/objective.py", "lawshift/train/examples.py",
            "lawshift/__init__.py"} <= found
    # data.py names labels.json: every stage that reaches data.py depends on it
    assert "lawshift/task/labels.json" in code_deps(REPO / "stages" / "eval.py")


def _round_outputs(r: str) -> list[tuple[str, set, set]]:
    f, e = paths.round_files(r), paths.eval_files(r)
    live = f"{f['live']}/plots/metrics"
    return [(f"sample@{r}", {f["samples"]}, {f["sample_metrics"], f["sample_time"]}),
            (f"filter@{r}", {f["sft"], f["filter_plot"]}, {f["filter_metrics"], f["filter_time"]}),
            (f"train@{r}", {f["adapter"], f"{live}/loss.tsv", f"{live}/learning_rate.tsv", f["train_plot"]},
             {f["train_metrics"], f["train_time"]}),
            (f"eval@{r}", {e["predictions"], e["report"], e["folders_plot"], e["term_errors_plot"]},
             {e["metrics"], e["time"]})]


BASE_EVAL = paths.eval_files("base")
GRPO_EVAL = paths.eval_files(paths.GRPO)


@pytest.mark.parametrize("name, outs, metrics", [
    ("base", {paths.BASE}, {paths.BASE_METRICS, paths.BASE_TIME}),
    ("eval_base", {BASE_EVAL["predictions"], BASE_EVAL["report"], BASE_EVAL["folders_plot"],
                   BASE_EVAL["term_errors_plot"]}, {BASE_EVAL["metrics"], BASE_EVAL["time"]}),
    *[row for r in ROUNDS for row in _round_outputs(r)],
    ("grpo", {paths.GRPO_FILES["adapter"], paths.GRPO_FILES["steps"]},
     {paths.GRPO_FILES["metrics"], paths.GRPO_FILES["time"]}),
    ("eval_grpo", {GRPO_EVAL["predictions"], GRPO_EVAL["report"], GRPO_EVAL["folders_plot"],
                   GRPO_EVAL["term_errors_plot"]}, {GRPO_EVAL["metrics"], GRPO_EVAL["time"]}),
    ("charts", {c["chart"] for c in paths.CHARTS.values()}, set()),
])
def test_outs_and_metrics_are_the_paths_the_code_writes(stages, name, outs, metrics):
    """dvc.yaml spells a round's files with `${key}`; lawshift/core/paths.py's templates give the same paths."""
    _, deps, declared_outs, declared_metrics = stages[name]
    assert declared_outs == outs
    assert declared_metrics == metrics


def test_round_stages_depend_on_their_policy_and_eval_on_the_weights_it_adds(stages):
    assert paths.round_files("round1")["samples"] in stages["filter@round1"][1]
    for k, r in enumerate(ROUNDS):
        policy = paths.BASE if k == 0 else paths.round_files(ROUNDS[k - 1])["adapter"]
        assert policy in stages[f"sample@{r}"][1] and policy in stages[f"filter@{r}"][1]
        assert {paths.BASE, paths.eval_files(r)["weights"]} <= stages[f"eval@{r}"][1]
        assert paths.eval_files(r)["adapter"] == paths.round_files(r)["adapter"]
    assert paths.round_files("round1")["adapter"] not in stages["eval_base"][1]
    assert paths.eval_files("base")["adapter"] == ""


def test_grpo_depends_on_every_rounds_sample_metrics_and_eval_grpo_on_its_adapter(stages):
    """grpo.budget 0 counts every round's answers: each round's sample metrics is a dep, so it runs after them."""
    assert {paths.BASE, *(paths.round_files(r)["sample_metrics"] for r in ROUNDS)} <= stages["grpo"][1]
    assert {paths.BASE, paths.GRPO_FILES["adapter"]} <= stages["eval_grpo"][1]
    assert GRPO_EVAL["adapter"] == paths.GRPO_FILES["adapter"] and stages["eval_grpo"][0].split()[-1] == paths.GRPO


def test_dvc_yaml_reads_paths_from_the_module_dvc_can_read():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    assert spec["vars"] == ["lawshift/core/paths.py"]
    # DVC reads the module without running it: plain assignments of literals, and functions (which its reader
    # skips); nothing else.
    tree = ast.parse((PACKAGE / "core" / "paths.py").read_text(encoding="utf-8"))
    for node in tree.body[1:]:
        assert isinstance(node, (ast.Assign, ast.FunctionDef)), ast.dump(node)[:80]
        if isinstance(node, ast.Assign):
            ast.literal_eval(node.value)


def test_the_metrics_are_the_stages_results_alone(stages):
    """The stages declare their own metrics (their number follows the rounds), and nothing else is one: no top-level
    metrics (benchmark figures live in benchmarks/results.json), and every declared metrics file is under metrics/."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    declared = set().union(*(metrics for _, _, _, metrics in stages.values()))
    assert "metrics" not in spec
    assert declared and all(m.startswith("metrics/") for m in declared)
    assert not (REPO / "metrics" / "bench.json").exists() and (REPO / "benchmarks" / "results.json").is_file()


def _per_model_plots(rounds) -> dict[str, set[str]]:
    """Each kind's per-model files for the base and `rounds`, as the code names them."""
    models = ["base", *rounds, paths.GRPO]
    return {"eval_folders": {paths.eval_files(m)["folders_plot"] for m in models},
            "eval_term_errors": {paths.eval_files(m)["term_errors_plot"] for m in models},
            "filter_accepted": {paths.round_files(r)["filter_plot"] for r in rounds},
            "train_curves": {paths.round_files(r)["train_plot"] for r in rounds}}


def test_charts_stage_depends_on_folders_holding_every_models_plot_file(stages):
    """The charts stage reads whole folders (lawshift/experiments/charts.py); each holds exactly the per-model files of
    its
    kind that the stages write, for the base and every round, so DVC runs it after all of them."""
    from dvc.repo import Repo

    per_model = _per_model_plots(ROUNDS)
    assert set(per_model) == set(paths.CHARTS)
    deps = stages["charts"][1]
    assert {c["folder"] for c in paths.CHARTS.values()} <= deps
    written = set().union(*(outs for name, (_, _, outs, _) in stages.items() if name != "charts"))
    for kind, where in paths.CHARTS.items():
        inside = {p for p in written if p.startswith(where["folder"] + "/")}
        assert inside == per_model[kind], kind
    with Repo(str(REPO)) as repo:
        graph = repo.index.graph
        charts = next(s for s in graph if s.addressing == "charts")
        upstream = {s.addressing for s in graph.successors(charts)}
    assert upstream == {"eval_base", "eval_grpo", *(f"{s}@{r}" for r in ROUNDS for s in ("filter", "train", "eval"))}


def test_one_chart_per_kind_from_the_charts_stage_and_no_per_model_charts():
    """`dvc plots show` draws the top-level charts alone, each from a charts-stage file, one per kind (two from
    the train curves: the loss; every round shares one learning-rate schedule, so its chart would compare nothing),
    each titled with what it shows and which models."""
    from dvc.repo import Repo

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    with Repo(str(REPO)) as repo:
        assert [str(o) for s in repo.index.stages for o in s.outs if o.plot] == []
        (resolved,) = repo.index._plots.values()
    charts = {name: props for item in resolved for name, props in item.items()}
    assert len(charts) == len(spec["plots"])
    sources = {(file, y) for props in charts.values() for file, y in props["y"].items()}
    assert sources == {(paths.CHARTS["eval_folders"]["chart"], "folder"),
                       (paths.CHARTS["eval_term_errors"]["chart"], "share"),
                       (paths.CHARTS["filter_accepted"]["chart"], "cases"),
                       (paths.CHARTS["train_curves"]["chart"], "loss")}
    for name, props in charts.items():
        assert (REPO / ".dvc" / "plots" / f"{props['template']}.json").is_file(), name
        (file,) = props["y"]
        models = "the base and each round's model" if "/eval_" in file else "each round's"
        assert models in props["title"] or "the base vs each round's model" in props["title"], name


def test_code_digest_follows_every_code_file(tmp_path, monkeypatch):
    """A change to any file a stage runs (a module it reaches, the label table) changes its digest; a module it
    does not reach does not."""
    import shutil

    from lawshift.core import codedeps

    copy = tmp_path / "repo"
    shutil.copytree(codedeps.REPO / "lawshift", copy / "lawshift", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(codedeps.REPO / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codedeps, "REPO", copy)
    monkeypatch.setattr(codedeps, "PACKAGE", copy / "lawshift")

    def digests() -> dict[str, str]:
        codedeps.code_files.cache_clear()
        return {stage: code_digest(stage) for stage in ("base", "sample", "filter", "train", "eval")}

    before = digests()
    for rel, changed in [("lawshift/task/scoring.py", {"sample", "filter", "eval"}),
                         ("lawshift/task/labels.json", {"base", "sample", "filter", "eval"}),
                         ("lawshift/train/objective.py", {"train"}), ("stages/eval.py", {"eval"})]:
        path = copy / rel
        path.write_bytes(path.read_bytes() + b"\n")
        after = digests()
        assert {s for s in before if after[s] != before[s]} == changed, rel
        before = after
    codedeps.code_files.cache_clear()
