"""The charts: per-model plot files joined in model order, the stage that writes them, the train curves it reads, and
the Vega-Lite templates (.dvc/plots/) that draw them, filled by DVC's own renderer."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lawshift.core import paths
from lawshift.core.files import InputError
from lawshift.experiments import charts

# Each kind's per-model plot file as the code names it (lawshift/core/paths.py), for any model name.
PER_MODEL = {"eval_folders": lambda m: paths.eval_files(m)["folders_plot"],
             "eval_term_errors": lambda m: paths.eval_files(m)["term_errors_plot"],
             "filter_accepted": lambda m: paths.round_files(m)["filter_plot"],
             "train_curves": lambda m: paths.round_files(m)["train_plot"]}


def load_stage(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def histogram(top: int, bump: int) -> str:
    """A filter_accepted file as filtering.write_histogram writes it: counts 0..top ascending."""
    return "accepted,cases\n" + "".join(f"{k},{int(k == bump)}\n" for k in range(top + 1))


def test_every_kind_of_per_model_file_is_in_its_charts_folder():
    """The charts stage reads the folders: each model's file of each kind must land in its kind's folder."""
    assert set(PER_MODEL) == set(paths.CHARTS) == set(charts.NAME_COLUMN)
    for kind, where in paths.CHARTS.items():
        for model in ("base", "round1", "round12"):
            assert Path(PER_MODEL[kind](model)) == Path(where["folder"]) / f"{model}.csv"
        assert where["chart"] == where["folder"] + ".csv"


def test_models_come_in_model_order_not_text_order(tmp_path):
    for name in ("round10", "round2", "base", "round1", ".round3.csv.abcd1234.tmp"):
        write(tmp_path / f"{name}.csv" if not name.startswith(".") else tmp_path / name, "x\n1\n")
    assert [(n, k) for n, k, _ in charts.model_files(tmp_path)] == [("base", 0), ("round1", 1), ("round2", 2),
                                                                    ("round10", 10)]


def test_the_grpo_arms_model_comes_after_every_round(tmp_path):
    for name in ("grpo", "round2", "base", "round1"):
        write(tmp_path / f"{name}.csv", "x\n1\n")
    assert [(n, k) for n, k, _ in charts.model_files(tmp_path)] == [("base", 0), ("round1", 1), ("round2", 2),
                                                                    ("grpo", charts.GRPO_ORDER)]


def test_the_joined_file_keeps_each_models_rows_in_numeric_order(tmp_path):
    """Counts up to 32 (resampling): 10 must follow 9, not 1, in the file the accepted-answers chart draws."""
    for name, top, bump in (("round2", 32, 11), ("round1", 12, 2)):
        write(tmp_path / f"{name}.csv", histogram(top, bump))
    rows = list(csv.DictReader(io.StringIO(charts.joined("filter_accepted", tmp_path))))
    assert list(rows[0]) == ["round", "order", "accepted", "cases"]
    assert [r["round"] for r in rows] == ["round1"] * 13 + ["round2"] * 33
    for name, top in (("round1", 12), ("round2", 32)):
        assert [int(r["accepted"]) for r in rows if r["round"] == name] == list(range(top + 1))
    assert [(r["round"], r["order"], r["accepted"]) for r in rows if r["cases"] == "1"] == [
        ("round1", "1", "2"), ("round2", "2", "11")]


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        charts.joined("eval_folders", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model's plot file"):
        charts.joined("eval_folders", tmp_path / "empty")
    write(tmp_path / "a" / "base.csv", "x,y\n1,2\n")
    write(tmp_path / "a" / "notes.txt", "")
    with pytest.raises(InputError, match=r"notes\.txt: not a model's plot file"):
        charts.joined("eval_folders", tmp_path / "a")
    write(tmp_path / "b" / "base.csv", "x,y\n1,2\n")
    write(tmp_path / "b" / "round1.csv", "x,z\n1,2\n")
    with pytest.raises(InputError, match=r"round1\.csv: columns \['x', 'z'\] differ"):
        charts.joined("eval_folders", tmp_path / "b")


def test_stage_writes_one_file_per_kind_over_every_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("base", "round1", "round2"):
        write(tmp_path / PER_MODEL["eval_folders"](model),
              "bar,folder,split,accuracy\nf · original,f,original,0.5\nf · poisoned,f,poisoned,0.25\n")
        write(tmp_path / PER_MODEL["eval_term_errors"](model), "term_error_months,answers,share\n-1,1,0.5\n2,1,0.5\n")
    for k, r in enumerate(("round1", "round2"), start=1):
        write(tmp_path / PER_MODEL["filter_accepted"](r), histogram(8 * k, k))
        write(tmp_path / PER_MODEL["train_curves"](r), "step,loss,learning_rate\n1,2.5,0.001\n2,2.0,\n")
    load_stage("charts").main()
    for kind, where in paths.CHARTS.items():
        rows = list(csv.DictReader(open(where["chart"], encoding="utf-8")))
        name = charts.NAME_COLUMN[kind]
        models = ["base", "round1", "round2"] if name == "model" else ["round1", "round2"]
        assert list(dict.fromkeys(r[name] for r in rows)) == models, kind
        assert {r[name]: r["order"] for r in rows} == {m: str(int(m[5:] or 0)) for m in models}
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # written atomically: no temp left


def test_train_curves_are_dvclives_without_timestamps(tmp_path):
    metrics = tmp_path / "live" / "plots" / "metrics"
    write(metrics / "loss.tsv", "timestamp\tstep\tloss\n17\t1\t2.5\n18\t2\t2.25\n19\t10\t1.5\n")
    write(metrics / "learning_rate.tsv", "timestamp\tstep\tlearning_rate\n17\t1\t0.0001\n18\t2\t0.0002\n")
    out = tmp_path / "plots" / "train_curves" / "round1.csv"
    load_stage("train").write_curves(tmp_path / "live", out)
    assert out.read_text() == "step,loss,learning_rate\n1,2.5,0.0001\n2,2.25,0.0002\n10,1.5,\n"


# ---- the templates, filled by DVC ------------------------------------------------------------------------------

SAMPLE_ROWS = {  # one per-model row of each kind, as the stages write them
    "eval_folders": "bar,folder,split,accuracy\nf · poisoned,f,poisoned,0.25\n",
    "eval_term_errors": "term_error_months,answers,share\n-2,3,0.5\n",
    "filter_accepted": "accepted,cases\n10,4\n",
    "train_curves": "step,loss,learning_rate\n3,2.5,0.001\n",
}


def top_level_plots() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    return {name: props for item in spec["plots"] for name, props in item.items()}


def kind_of(source: str) -> str:
    """`${CHARTS.<kind>.chart}` (dvc.yaml's spelling of a chart's file) -> <kind>."""
    return re.fullmatch(r"\$\{CHARTS\.(\w+)\.chart\}", source).group(1)


@pytest.mark.parametrize("plot_id", list(top_level_plots()))
def test_each_chart_template_fills_with_its_files_columns(tmp_path, plot_id):
    """DVC's renderer fills the template with rows of the joined file from two revisions: no anchor is left, and
    every field the template reads is a column of that file or one the template computes."""
    from dvc_render.vega import VegaRenderer

    props = top_level_plots()[plot_id]
    (source, y), = props["y"].items()
    kind = kind_of(source)
    for model in ("base", "round1", "round2"):
        write(tmp_path / f"{model}.csv", SAMPLE_ROWS[kind])
    rows = list(csv.DictReader(io.StringIO(charts.joined(kind, tmp_path))))
    points = [{**r, "rev": rev} for rev in ("HEAD", "workspace") for r in rows]
    renderer = VegaRenderer(points, plot_id, template=props["template"], template_dir=str(REPO / ".dvc" / "plots"),
                            title=props["title"], x=props["x"], y=y, x_label=props["x_label"],
                            y_label=props["y_label"])
    spec = renderer.get_filled_template()
    text = json.dumps(spec)
    assert "<DVC_METRIC" not in text and spec["title"]["text"] == props["title"]
    data = [layer["data"]["values"] for layer in [spec, *spec.get("layer", [])] if "data" in layer]
    assert points in data
    computed = {t["as"] for layer in [spec, *spec.get("layer", [])] for t in layer.get("transform", [])
                if "as" in t and isinstance(t["as"], str)} | {"revisions"}
    read = set(re.findall(r'"field": "([^"]+)"', text))
    read |= {name for pair in re.findall(r"datum\.(\w+)|datum\['(\w+)'\]", text) for name in pair if name}
    assert read - {"zero"} <= set(points[0]) | computed, plot_id
    # colour and order follow the model's number, not its name as text (round10 after round9)
    assert '"sort": {"field": "model_order", "op": "min"}' in text


def test_the_histograms_axis_is_numeric_before_it_is_sorted():
    """DVC reads CSV values as text; sorted as text, 10 would come before 2 on the accepted-answers axis."""
    props = top_level_plots()["accepted_answers"]
    spec = json.loads((REPO / ".dvc" / "plots" / f"{props['template']}.json").read_text(encoding="utf-8"))
    x = "<DVC_METRIC_X>"
    assert {"calculate": f"toNumber(datum['{x}'])", "as": x} in spec["transform"]
    assert spec["encoding"]["x"]["sort"] == "ascending" and spec["encoding"]["x"]["field"] == x
