"""lawshift/experiments/results.py: the README's results table from the metrics files of a project (paths as in
lawshift/core/paths.py, rounds from its params.yaml)."""

import json
import sys

import pytest
from conftest import REPO, dump_json

from lawshift.core import paths
from lawshift.core.files import InputError, read_json
from lawshift.experiments import results
from lawshift.experiments.results import END, SEEDS, START, results_table, update_readme
from lawshift.experiments.seeds import figures

ROUNDS = ("round1", "round2")
TWO_ROUNDS = "rounds:\n  round1: {policy: base}\n  round2: {policy: round1}\n"


def _eval(original, poisoned, train_exact, pass_k, majority):
    return {"k": 3, "overall": {"original": original, "poisoned": poisoned, "gap": original - poisoned,
                                "format_valid": 1.0},
            "by_label": {}, "folders": {}, "charge_accuracy": 1.0, "term_exact_accuracy": 0.5,
            "train_exact": train_exact, "train_pass_at_k": pass_k, "train_majority": majority}


def _filter(acceptance, first, coverage, accepted, none, kept, previous=0):
    return {"acceptance_rate": acceptance, "total_generated": 600, "total_accepted": accepted,
            "samples_with_no_correct": none, "total_samples": 62, "coverage_first": first, "coverage": coverage,
            "sft_examples": kept, "kept_previous": previous}


@pytest.fixture
def root(tmp_path):
    """A project with two rounds: every model's eval metrics, each round's sample and filter metrics."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(TWO_ROUNDS, encoding="utf-8")
    dump_json(project / paths.eval_files("base")["metrics"], _eval(0.75, 0.25, 0.3, 0.5, 0.25))
    dump_json(project / paths.eval_files("round1")["metrics"], _eval(0.8, 0.5, 0.625, 0.75, 0.5))
    dump_json(project / paths.eval_files("round2")["metrics"], _eval(0.8, 0.6, 0.5, 0.875, 0.625))
    dump_json(project / paths.round_files("round1")["filter_metrics"], _filter(0.25, 0.75, 0.875, 150, 8, 60))
    dump_json(project / paths.round_files("round2")["filter_metrics"], _filter(0.5, 0.875, 0.9375, 300, 4, 70, 5))
    for r, extra in zip(ROUNDS, (104, 40), strict=True):
        dump_json(project / paths.round_files(r)["sample_metrics"],
                  {"cases": 62, "answers_generated": 496 + extra, "extra_answers": extra, "cases_resampled": 13})
    return project


ROWS = ["| base | 0 | round1 | 25.0% | 75.0% → 87.5% | 30.0% · 50.0% · 25.0% | 75.0% | 25.0% | 50.0% |",
        "| round1 | 600 | round2 | 50.0% | 87.5% → 93.8% | 62.5% · 75.0% · 50.0% | 80.0% | 50.0% | 30.0% |",
        "| round2 | 1136 | – | – | – → – | 50.0% · 87.5% · 62.5% | 80.0% | 60.0% | 20.0% |"]


def model_rows(table: str) -> list[str]:
    return [ln for ln in table.splitlines() if ln.startswith(("| base", "| round", "| grpo"))]


def test_one_row_per_model_with_the_round_it_sampled(root):
    table = results_table(root)
    assert model_rows(table) == ROWS
    assert "regenerate with `python -m lawshift.experiments.results`" in table.splitlines()[0]
    assert "pass@3" in table.splitlines()[0]
    assert ("- round1: 600 answers for 62 cases, 104 of them further draws for 13 resampled cases; 150 accepted "
            "(25.0%), 8 cases with none; 60 distinct answers trained on.") in table
    assert "70 distinct answers trained on, 5 of them kept from earlier rounds." in table
    assert "seeds" not in table  # no metrics/seeds.json: no spread table


def test_missing_files_leave_dashes(root):
    (root / paths.eval_files("round2")["metrics"]).unlink()
    (root / paths.round_files("round2")["filter_metrics"]).unlink()
    rows = model_rows(results_table(root))
    assert rows[1] == "| round1 | 600 | round2 | – | – → – | 62.5% · 75.0% · 50.0% | 80.0% | 50.0% | 30.0% |"
    assert rows[2] == "| round2 | 1136 | – | – | – → – | – · – · – | – | – | – |"


def test_the_grpo_arm_gets_a_row_with_its_answers_and_a_note(root):
    dump_json(root / paths.eval_files(paths.GRPO)["metrics"], _eval(0.8, 0.7, 0.4, 0.875, 0.5))
    dump_json(root / paths.GRPO_FILES["metrics"], {
        "answers_generated": 1088, "budget": 1136, "generated_tokens": 30000, "steps": 17, "answers_per_step": 64,
        "answers_per_case": 8, "reward": "binary", "reward_first": 0.1, "reward_last": 0.3, "groups_all_0": 0.25})
    table = results_table(root)
    assert model_rows(table)[-1] == ("| grpo | 1088 | – | – | – → – | 40.0% · 87.5% · 50.0% | 80.0% | 70.0% "
                                     "| 10.0% |")
    assert ("- grpo: 1088 answers of a budget of 1136, 30000 tokens, in 17 steps of 8 cases × 8 answers; mean binary "
            "reward 10.0% at the first step, 30.0% at the last; 25.0% of the groups all wrong (no signal).") in table


def test_root_defaults_to_the_working_directory(root, monkeypatch):
    monkeypatch.chdir(root)
    assert results_table() == results_table(root)


def test_spread_over_seeds_from_the_same_default_run(root):
    default = figures(lambda path: read_json(root / path), ROUNDS)
    assert list(default)[:6] == ["round1.acceptance", "round1.coverage_first", "round1.coverage",
                                 "round2.acceptance", "round2.coverage_first", "round2.coverage"]
    other = {**default, "round1.acceptance": 0.15, "base.original": 0.25, "round1.gap": None}
    dump_json(root / SEEDS, {"default_seed": 42, "seeds": {"42": default, "1": other}})
    lines = results_table(root).splitlines()
    at = lines.index("| figure | seed 42 | mean | min–max |")
    assert lines[at - 2].startswith("Over 2 seeds (1, 42;")
    spread = lines[at + 2:]
    assert "| round1: acceptance | 25.0% | 20.0% | 15.0% – 25.0% |" in spread
    assert "| round2: coverage after resampling | 93.8% | 93.8% | 93.8% – 93.8% |" in spread
    assert "| base: LawShift original | 75.0% | 50.0% | 25.0% – 75.0% |" in spread
    assert "| round2: train exact pass@k | 87.5% | 87.5% | 87.5% – 87.5% |" in spread
    assert "| round1: LawShift gap | 30.0% | 30.0% | 30.0% – 30.0% |" in spread  # a missing value is left out
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
    assert "old table" not in text and ROWS[1] in text
    assert text.startswith("# t\nbefore\n") and text.endswith(f"{END}\nafter\n")


def test_missing_metrics_and_missing_markers_are_clear_errors(root, tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "params.yaml").write_text(TWO_ROUNDS, encoding="utf-8")
    with pytest.raises(InputError, match="nothing/metrics: no eval metrics: run the pipeline first"):
        results_table(tmp_path / "nothing")
    readme = tmp_path / "R.md"
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(InputError, match="R.md: no <!-- results:start -->"):
        update_readme(readme, "x")


def test_cli_reads_the_project_given_by_root(root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the project: --root says where its metrics are
    monkeypatch.setattr(sys, "argv", ["lawshift.experiments.results", "--root", str(root), "--print"])
    results.main()
    assert model_rows(capsys.readouterr().out) == ROWS

    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{START}\n{END}\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["lawshift.experiments.results", "--root", str(root), "--readme", str(readme)])
    results.main()
    assert capsys.readouterr().out == f"updated {readme}\n"
    assert model_rows(readme.read_text(encoding="utf-8")) == ROWS
    assert json.loads((root / paths.eval_files("base")["metrics"]).read_text())["train_exact"] == 0.3


def test_the_timings_line_comes_from_the_time_files(tmp_path):
    """The README's timings line: the stages' wall seconds summed, the base's, and where the run ran, from the time
    files; the README's inline block is rewritten, the rest of its line kept."""
    from lawshift.core.files import write_json
    from lawshift.core.runinfo import time_files
    from lawshift.experiments.results import TIMINGS, stage_seconds, timings

    root = tmp_path / "p"
    root.mkdir()
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    files = time_files(["round1", "round2"])
    for k, (_, file) in enumerate(files.items()):
        write_json(root / file, {"wall_seconds": 100.0 if k == 0 else 2.0,
                                 "numerics": {"cpu": "Intel Xeon", "omp_num_threads": "2"}})
    total = 100 + (len(files) - 1) * 2
    assert sum(stage_seconds(root).values()) == total
    line = timings(root)
    assert line == (f"The committed run's stages took {total} s on 2 threads of an Intel Xeon, 100 s of it the tiny "
                    "base's warm-start")
    readme = tmp_path / "README.md"
    readme.write_text(f"Intro. {TIMINGS[0]}old{TIMINGS[1]} (more).\n{START}\n{END}\n", encoding="utf-8")
    update_readme(readme, "table", line)
    want = f"Intro. {TIMINGS[0]}{line}{TIMINGS[1]} (more).\n{START}\ntable\n{END}\n"
    assert readme.read_text(encoding="utf-8") == want
