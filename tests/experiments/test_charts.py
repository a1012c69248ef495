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


def render(plot_id: str, points: list[dict]) -> dict:
    """The Vega-Lite spec DVC draws for `plot_id` (dvc.yaml's top-level plots) from `points`, as dvc_render fills it."""
    from dvc_render.vega import VegaRenderer

    props = top_level_plots()[plot_id]
    ((_, y),) = props["y"].items()
    return VegaRenderer(points, plot_id, template=props["template"], template_dir=str(REPO / ".dvc" / "plots"),
                        title=props["title"], x=props["x"], y=y, x_label=props["x_label"],
                        y_label=props["y_label"]).get_filled_template()


@pytest.mark.parametrize("plot_id", list(top_level_plots()))
def test_each_chart_template_fills_with_its_files_columns(tmp_path, plot_id):
    """DVC's renderer fills the template with rows of the joined file from two revisions: no anchor is left, and
    every field the template reads is a column of that file or one the template computes."""
    props = top_level_plots()[plot_id]
    (source, y), = props["y"].items()
    kind = kind_of(source)
    for model in ("base", "round1", "round2"):
        write(tmp_path / f"{model}.csv", SAMPLE_ROWS[kind])
    rows = list(csv.DictReader(io.StringIO(charts.joined(kind, tmp_path))))
    points = [{**r, "rev": rev} for rev in ("HEAD", "workspace") for r in rows]
    spec = render(plot_id, points)
    text = json.dumps(spec)
    assert "<DVC_METRIC" not in text and spec["title"]["text"] == props["title"]
    data = [layer["data"]["values"] for layer in [spec, *spec.get("layer", [])] if "data" in layer]
    assert points in data
    transforms = [t for layer in [spec, *spec.get("layer", [])] for t in layer.get("transform", [])]
    computed = {t["as"] for t in transforms if isinstance(t.get("as"), str)}
    computed |= {a["as"] for t in transforms for a in t.get("joinaggregate", [])}
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


# ---- under `dvc plots diff`: the Vega-Lite spec DVC renders for two revisions ------------------------------------

def marks(spec: dict) -> list[tuple[str, dict, list[dict]]]:
    """(mark type, encoding, transforms in force) of every mark of a filled spec that colours its data."""
    out = []

    def walk(node: dict, transforms: list[dict], encoding: dict) -> None:
        transforms, encoding = [*transforms, *node.get("transform", [])], {**encoding, **node.get("encoding", {})}
        if "color" in node.get("encoding", {}):
            mark = node["mark"]["type"] if isinstance(node["mark"], dict) else node["mark"]
            out.append((mark, encoding, transforms))
        for child in [*node.get("layer", []), *([node["spec"]] if "spec" in node else [])]:
            walk(child, transforms, encoding)

    walk(spec, [], {})
    return out


def two_revisions(kind: str, tmp_path: Path) -> list[dict]:
    """The joined file's rows of base, round1 and round2 (the committed run's), at HEAD and in the workspace."""
    for model in ("base", "round1", "round2"):
        write(tmp_path / f"{model}.csv", SAMPLE_ROWS[kind])
    rows = list(csv.DictReader(io.StringIO(charts.joined(kind, tmp_path))))
    return [{**r, "rev": rev} for rev in ("HEAD", "workspace") for r in rows]


@pytest.mark.parametrize("plot_id", list(top_level_plots()))
def test_under_plots_diff_colour_follows_the_model_and_the_revision_takes_dash_or_opacity(tmp_path, plot_id):
    """Before, each model·revision pair got its own colour: the base at HEAD~3 wore round1's. Now the colour channel
    reads the model's name alone, so a model has one colour in every revision, and the revision is drawn as the dash
    of a line or the opacity of a bar; each line or bar still separates the two revisions (detail / offset)."""
    props = top_level_plots()[plot_id]
    kind = kind_of(next(iter(props["y"])))
    spec = render(plot_id, two_revisions(kind, tmp_path))
    ((mark, enc, transforms),) = marks(spec)
    assert enc["color"]["field"] == charts.NAME_COLUMN[kind]
    assert "rev" not in json.dumps(enc["color"])
    assert enc["strokeDash" if mark == "line" else "opacity"]["field"] == "rev"
    split = enc.get("detail") or enc.get("xOffset") or enc["y"]
    computed = {t["as"]: t["calculate"] for t in transforms if "calculate" in t}
    assert split["field"] in computed and "datum.rev" in computed[split["field"]]
    # drawn through the spec's own transforms: one series per model and revision, one colour value per model
    drawn = apply_transforms(transforms, two_revisions(kind, tmp_path))
    series = {(r[enc["color"]["field"]], r["rev"]): r[split["field"]] for r in drawn}
    assert len(set(series.values())) == len(series) == 6
    assert {r[enc["color"]["field"]] for r in drawn} == {"base", "round1", "round2"}


def vega_eval(expr: str, datum: dict):
    """The few Vega expressions the templates use (datum fields, toNumber, isValid, ?:, comparisons), in Python."""
    py = re.sub(r"datum\['(\w+)'\]|datum\.(\w+)", lambda m: f"d[{(m.group(1) or m.group(2))!r}]", expr)
    py = py.replace("toNumber(", "float(").replace("isValid(", "(None is not ").replace("&&", " and ")
    py = py.replace("!==", "!=").replace("===", "==")
    if "?" in py:
        cond, rest = py.split("?", 1)
        yes, no = rest.split(":", 1)
        py = f"({yes}) if ({cond}) else ({no})"
    return eval(py, {"float": float}, {"d": datum})  # noqa: S307 - the expressions of our own templates


def apply_transforms(transforms: list[dict], rows: list[dict]) -> list[dict]:
    rows = [dict(r) for r in rows]
    for t in transforms:
        if "calculate" in t:
            for r in rows:
                r[t["as"]] = vega_eval(t["calculate"], r)
        elif "filter" in t:
            rows = [r for r in rows if vega_eval(t["filter"], r)]
        elif "joinaggregate" in t:
            for agg in t["joinaggregate"]:
                values = [r[agg["field"]] for r in rows]
                got = {"max": max, "distinct": lambda v: len(set(v))}[agg["op"]](values)
                for r in rows:
                    r[agg["as"]] = got
    return rows


def test_the_accepted_answers_axis_ends_at_the_datas_maximum():
    """The committed run's file counts cases for 0…32 accepted answers, most of them 0 cases; drawn through the
    rendered spec's own transforms, the axis stops at the most any case got."""
    path = REPO / paths.CHARTS["filter_accepted"]["chart"]
    rows = [{**r, "rev": "workspace"} for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))]
    most = max(int(r["accepted"]) for r in rows if int(r["cases"]) > 0)
    assert most < max(int(r["accepted"]) for r in rows)  # the file's own span is wider
    spec = render("accepted_answers", rows)
    ((_, enc, transforms),) = marks(spec)
    drawn = apply_transforms(transforms, rows)
    assert max(r[enc["x"]["field"]] for r in drawn) == most
    assert {r["accepted"] for r in drawn} == set(range(most + 1))
