"""lawshift/results.py: the README's results table from the metrics files of a project (paths as in
lawshift/paths.py)."""

import json
import sys

import pytest
from conftest import dump_json

from lawshift import paths, results
from lawshift.files import InputError, read_json
from lawshift.results import END, SEEDS, START, results_table, update_readme
from lawshift.seeds import figures


def _eval(original, poisoned, train_exact):
    return {"overall": {"original": original, "poisoned": poisoned, "gap": original - poisoned, "format_valid": 1.0},
            "by_label": {}, "folders": {}, "charge_accuracy": 1.0, "term_exact_accuracy": 0.5,
            "train_exact": train_exact}


@pytest.fixture
def root(tmp_path):
    """A project whose metrics/ holds both models' eval metrics and the filter's."""
    project = tmp_path / "project"
    dump_json(project / paths.EVAL["base"]["metrics"], _eval(0.75, 0.25, 0.3))
    dump_json(project / paths.EVAL["sft"]["metrics"], _eval(0.8, 0.5, 0.625))
    dump_json(project / paths.FILTER_METRICS, {"acceptance_rate": 0.4, "total_generated": 496,
                                               "samples_with_no_correct": 7, "total_samples": 62})
    return project


ROWS = ["| base | 30.0% | 75.0% | 25.0% | 50.0% | 100.0% |",
        "| sft | 62.5% | 80.0% | 50.0% | 30.0% | 100.0% |"]


def model_rows(table: str) -> list[str]:
    return [ln for ln in table.splitlines() if ln.startswith("| base") or ln.startswith("| sft")]


def test_table_rows_come_from_the_metrics(root):
    table = results_table(root)
    assert model_rows(table) == ROWS
    assert "regenerate with `python -m lawshift.results`" in table.splitlines()[0]
    assert "40.0% of 496 answers; 7 of 62 cases" in table
    assert "seeds" not in table  # no metrics/seeds.json: no spread table


def test_one_model_and_no_filter_metrics(root):
    (root / paths.EVAL["sft"]["metrics"]).unlink()
    (root / paths.FILTER_METRICS).unlink()
    table = results_table(root)
    assert model_rows(table) == ROWS[:1] and "Rejection sampling" not in table


def test_root_defaults_to_the_working_directory(root, monkeypatch):
    monkeypatch.chdir(root)
    assert results_table() == results_table(root)


def test_spread_over_seeds_from_the_same_default_run(root):
    default = figures(lambda path: read_json(root / path))
    other = {**default, "acceptance": 0.2, "base.original": 0.25, "sft.gap": None}
    dump_json(root / SEEDS, {"default_seed": 42, "seeds": {"42": default, "1": other}})
    lines = results_table(root).splitlines()
    at = lines.index("| figure | seed 42 | mean | min–max |")
    assert lines[at - 2].startswith("Over 2 seeds (1, 42;")
    spread = lines[at + 2:]
    assert spread[0] == "| acceptance (accepted / sampled answers) | 40.0% | 30.0% | 20.0% – 40.0% |"
    assert "| coverage (cases with an accepted answer) | 88.7% | 88.7% | 88.7% – 88.7% |" in spread
    assert "| base: LawShift original | 75.0% | 50.0% | 25.0% – 75.0% |" in spread
    assert "| sft: LawShift gap | 30.0% | 30.0% | 30.0% – 30.0% |" in spread  # a missing value is left out
    assert len(spread) == len(default)
    # seeds collected from another default run than the metrics here: an error, not a wrong table
    dump_json(root / SEEDS, {"default_seed": 42, "seeds": {"42": other, "1": default}})
    with pytest.raises(InputError, match=r"seeds.json: made from another default run"):
        results_table(root)


def test_readme_block_is_replaced_and_the_rest_kept(root, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\nbefore\n{START}\nold table\n{END}\nafter\n", encoding="utf-8")
    update_readme(readme, results_table(root))
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and "| sft | 62.5%" in text
    assert text.startswith("# t\nbefore\n") and text.endswith(f"{END}\nafter\n")


def test_missing_metrics_and_missing_markers_are_clear_errors(root, tmp_path):
    with pytest.raises(InputError, match="nothing/metrics: no eval metrics: run the pipeline first"):
        results_table(tmp_path / "nothing")
    # metrics/ directly is not a project root: the eval metrics are not found there
    with pytest.raises(InputError, match="run the pipeline first"):
        results_table(root / "metrics")
    readme = tmp_path / "R.md"
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(InputError, match="R.md: no <!-- results:start -->"):
        update_readme(readme, "x")


def test_cli_reads_the_project_given_by_root(root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the project: --root says where its metrics are
    monkeypatch.setattr(sys, "argv", ["lawshift.results", "--root", str(root), "--print"])
    results.main()
    assert model_rows(capsys.readouterr().out) == ROWS

    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{START}\n{END}\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["lawshift.results", "--root", str(root), "--readme", str(readme)])
    results.main()
    assert capsys.readouterr().out == f"updated {readme}\n"
    assert model_rows(readme.read_text(encoding="utf-8")) == ROWS
    assert json.loads((root / paths.EVAL["base"]["metrics"]).read_text())["train_exact"] == 0.3  # read, not changed
