import json

import pytest

from lawshift.files import InputError
from lawshift.results import END, START, results_table, update_readme


def _eval(original, poisoned, train_exact):
    return {"overall": {"original": original, "poisoned": poisoned, "gap": original - poisoned, "format_valid": 1.0},
            "by_label": {}, "folders": {}, "charge_accuracy": 1.0, "term_exact_accuracy": 0.5,
            "train_exact": train_exact}


@pytest.fixture
def metrics(tmp_path):
    d = tmp_path / "metrics"
    d.mkdir()
    (d / "eval_base.json").write_text(json.dumps(_eval(0.75, 0.25, 0.3)))
    (d / "eval_sft.json").write_text(json.dumps(_eval(0.8, 0.5, 0.625)))
    (d / "filter.json").write_text(json.dumps({"acceptance_rate": 0.4, "total_generated": 496,
                                               "samples_with_no_correct": 7, "total_samples": 62}))
    return d


def test_table_rows_come_from_the_metrics(metrics):
    table = results_table(metrics, date="2026-01-02")
    rows = [ln for ln in table.splitlines() if ln.startswith("| base") or ln.startswith("| sft")]
    assert rows == ["| base | 30.0% | 75.0% | 25.0% | 50.0% | 100.0% |",
                    "| sft | 62.5% | 80.0% | 50.0% | 30.0% | 100.0% |"]
    assert "2026-01-02" in table and "40.0% of 496 answers; 7 of 62 cases" in table


def test_readme_block_is_replaced_and_the_rest_kept(metrics, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\nbefore\n{START}\nold table\n{END}\nafter\n", encoding="utf-8")
    update_readme(readme, results_table(metrics, date="2026-01-02"))
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and "| sft | 62.5%" in text
    assert text.startswith("# t\nbefore\n") and text.endswith(f"{END}\nafter\n")


def test_missing_metrics_and_missing_markers_are_clear_errors(metrics, tmp_path):
    with pytest.raises(InputError, match="run the pipeline first"):
        results_table(tmp_path / "nothing")
    readme = tmp_path / "R.md"
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(InputError, match="R.md: no <!-- results:start -->"):
        update_readme(readme, "x")
