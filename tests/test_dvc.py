"""dvc.yaml against the code: deps that cannot drift, paths from one place.

* Every stage's deps cover its script, every `lawshift` module the script imports (directly or through other
  modules of the package), `lawshift/__init__.py`, and the package data files those modules name. A new import
  without a dvc.yaml dep fails here, so a code change can never leave a stale result that DVC thinks is current.
* Paths: dvc.yaml loads lawshift/paths.py as vars, and each stage's outs and metrics are exactly the paths the
  code writes (read through DVC's own resolver, so the `${…}` interpolation is checked too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lawshift import paths
from lawshift.codedeps import PACKAGE, code_digest, code_files


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


def test_every_stage_is_resolved(stages):
    assert set(stages) == {"base", "sample", "filter", "train", *(f"eval@{m}" for m in paths.EVAL)}


def test_deps_cover_every_module_a_stage_imports(stages):
    for name, (cmd, deps, _, _) in stages.items():
        script = REPO / cmd.split()[1]
        missing = code_deps(script) - deps
        assert not missing, f"dvc.yaml stage {name} misses deps {sorted(missing)}"


def test_the_import_walk_finds_lazy_and_transitive_imports():
    # train imports lawshift.training inside main(); training imports objective, which imports examples
    found = code_deps(REPO / "stages" / "train.py")
    assert {"lawshift/training.py", "lawshift/objective.py", "lawshift/examples.py", "lawshift/__init__.py"} <= found
    # data.py names labels.json: every stage that reaches data.py depends on it
    assert "lawshift/labels.json" in code_deps(REPO / "stages" / "eval.py")


@pytest.mark.parametrize("name, outs, metrics", [
    ("base", {paths.BASE}, {paths.BASE_METRICS, paths.TIME["base"]}),
    ("sample", {paths.SAMPLES}, {paths.SAMPLE_METRICS, paths.TIME["sample"]}),
    ("filter", {paths.SFT_DATA, paths.FILTER_PLOT}, {paths.FILTER_METRICS, paths.TIME["filter"]}),
    ("train", {paths.ADAPTER, paths.LIVE}, {paths.TRAIN_METRICS, paths.TIME["train"]}),
    *[(f"eval@{m}", {e["predictions"], e["report"], e["folders_plot"], e["term_errors_plot"]},
       {e["metrics"], e["time"]}) for m, e in paths.EVAL.items()],
])
def test_outs_and_metrics_are_the_paths_the_code_writes(stages, name, outs, metrics):
    _, deps, declared_outs, declared_metrics = stages[name]
    assert declared_outs == outs
    assert declared_metrics == metrics


def test_eval_stages_depend_on_the_weights_they_add(stages):
    for model, entry in paths.EVAL.items():
        _, deps, _, _ = stages[f"eval@{model}"]
        assert {paths.BASE, entry["weights"]} <= deps
        assert entry["adapter"] in ("", entry["weights"])


def test_dvc_yaml_reads_paths_from_the_module_dvc_can_read():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    assert spec["vars"] == ["lawshift/paths.py"]
    # DVC reads the module without running it: nothing but plain assignments of literals (docstring aside).
    tree = ast.parse((PACKAGE / "paths.py").read_text(encoding="utf-8"))
    for node in tree.body[1:]:
        assert isinstance(node, ast.Assign), ast.dump(node)[:80]
        ast.literal_eval(node.value)


def test_top_level_metrics_and_plots_name_declared_files(stages):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    declared = set().union(*(outs | metrics for _, _, outs, metrics in stages.values()))
    for path in spec["metrics"]:
        assert path in declared or path == "metrics/bench.json", path
    plot_files = {f for plot in spec["plots"] for p in plot.values() for f in p["y"]}
    for file in plot_files:
        assert file in declared or file.startswith(paths.LIVE + "/"), file


def test_code_digest_follows_every_code_file(tmp_path, monkeypatch):
    """A change to any file a stage runs (a module it reaches, the label table) changes its digest; a module it
    does not reach does not."""
    import shutil

    from lawshift import codedeps

    copy = tmp_path / "repo"
    shutil.copytree(codedeps.REPO / "lawshift", copy / "lawshift", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(codedeps.REPO / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codedeps, "REPO", copy)
    monkeypatch.setattr(codedeps, "PACKAGE", copy / "lawshift")

    def digests() -> dict[str, str]:
        codedeps.code_files.cache_clear()
        return {stage: code_digest(stage) for stage in ("base", "sample", "filter", "train", "eval")}

    before = digests()
    for rel, changed in [("lawshift/scoring.py", {"sample", "filter", "eval"}),
                         ("lawshift/labels.json", {"base", "sample", "filter", "eval"}),
                         ("lawshift/objective.py", {"train"}), ("stages/eval.py", {"eval"})]:
        path = copy / rel
        path.write_bytes(path.read_bytes() + b"\n")
        after = digests()
        assert {s for s in before if after[s] != before[s]} == changed, rel
        before = after
    codedeps.code_files.cache_clear()
