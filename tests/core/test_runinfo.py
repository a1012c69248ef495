"""lawshift/core/runinfo.py: each stage's time file (metrics/time/<stage>.json, apart from its results) and the summary
read from them in pipeline order."""

import json

import pytest
from conftest import EV, R1, dump_json, read_json

from lawshift.core import numerics, paths
from lawshift.core.runinfo import StageClock, summary, time_files


def test_stage_clock_reports_time_and_memory():
    stats = StageClock().stats()
    assert stats["wall_seconds"] >= 0
    assert stats["peak_rss_mb"] > 1  # any Python interpreter holds more than 1 MB resident


def test_stage_clock_writes_its_time_file_with_extra_figures(tmp_path):
    path = tmp_path / "metrics" / "time" / "train.json"
    written = StageClock().write(path, {"train_tokens_per_second": 12.5, "device": "cpu", "resumed_from": None})
    # the file holds what was returned (and printed), plus the numerics the run ran under
    assert read_json(path) == {**written, "numerics": numerics.settings()}
    assert set(written) == {"train_tokens_per_second", "device", "resumed_from", "wall_seconds", "peak_rss_mb"}
    assert written["train_tokens_per_second"] == 12.5 and written["resumed_from"] is None
    assert set(StageClock().write(tmp_path / "t.json")) == {"wall_seconds", "peak_rss_mb"}  # no extra: timing only
    assert set(read_json(tmp_path / "t.json")) == {"wall_seconds", "peak_rss_mb", "numerics"}
    assert not list(tmp_path.rglob("*.tmp"))


def test_time_files_cover_every_stage_in_pipeline_order():
    files = time_files()
    assert list(files) == ["base", "sample@round1", "filter@round1", "train@round1", "grpo", "eval_base",
                           "eval@round1", "eval_grpo"]
    assert files == {"base": "metrics/time/base.json", "sample@round1": "metrics/time/round1/sample.json",
                     "filter@round1": "metrics/time/round1/filter.json",
                     "train@round1": "metrics/time/round1/train.json", "grpo": "metrics/time/grpo/train.json",
                     "eval_base": "metrics/time/base/eval.json", "eval@round1": "metrics/time/round1/eval.json",
                     "eval_grpo": "metrics/time/grpo/eval.json"}
    two = time_files(["round1", "round2"])
    assert list(two) == ["base", *(f"{s}@round{k}" for k in (1, 2) for s in ("sample", "filter", "train")), "grpo",
                         "eval_base", "eval@round1", "eval@round2", "eval_grpo"]
    # apart from the results: no time file is a stage's metrics file
    results = {paths.BASE_METRICS, *(paths.round_files(r)[k] for r in ("round1", "round2")
                                     for k in ("sample_metrics", "filter_metrics", "train_metrics")),
               *(paths.eval_files(m)["metrics"] for m in ("base", "round1", "round2", "grpo")),
               paths.GRPO_FILES["metrics"]}
    assert not results & set(two.values())


def test_summary_lists_stages_in_pipeline_order_and_totals(tmp_path):
    dump_json(tmp_path / R1["train_time"], {"wall_seconds": 12.5, "peak_rss_mb": 900, "device": "cpu"})
    dump_json(tmp_path / paths.BASE_TIME, {"wall_seconds": 2.0, "peak_rss_mb": 400})
    lines = summary(tmp_path).splitlines()
    assert lines[0] == "time and memory per stage (from metrics/time/):"
    assert [ln.split()[0] for ln in lines[1:]] == ["base", "train@round1", "total"]
    assert lines[-1].split()[1] == "14.5"
    assert "900 MB" in lines[2]


def test_summary_of_every_stage(tmp_path):
    for k, file in enumerate(time_files().values(), start=1):
        dump_json(tmp_path / file, {"wall_seconds": float(k), "peak_rss_mb": 100.0 * k})
    lines = summary(tmp_path).splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == [*time_files(), "total"]
    assert lines[-1].split()[1] == "36.0"  # 1 + 2 + ... + 8 stages


def test_summary_reads_the_time_files_not_the_metrics(tmp_path):
    # results files at their old places, holding time figures, are not read: only metrics/time/ is
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval_sft.json").write_text(json.dumps({"overall": {}, "wall_seconds": 50.0}))
    (tmp_path / "metrics" / "eval_sft_time.json").write_text(json.dumps({"wall_seconds": 60.0, "peak_rss_mb": 1}))
    (tmp_path / "metrics" / "train.json").write_text(json.dumps({"wall_seconds": 70.0, "peak_rss_mb": 1}))
    assert summary(tmp_path).splitlines()[1:] == [f"  {'total':<15} {0.0:8.1f} s"]
    dump_json(tmp_path / EV["round1"]["time"], {"wall_seconds": 1.0, "peak_rss_mb": 500})
    lines = summary(tmp_path).splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["eval@round1", "total"]
    assert lines[-1].split()[1] == "1.0"


@pytest.mark.parametrize("root_arg", [True, False])
def test_summary_root_defaults_to_the_working_directory(tmp_path, monkeypatch, root_arg):
    dump_json(tmp_path / R1["filter_time"], {"wall_seconds": 3.0, "peak_rss_mb": 10})
    monkeypatch.chdir(tmp_path)
    text = summary(tmp_path) if root_arg else summary()
    assert [ln.split()[0] for ln in text.splitlines()[1:]] == ["filter@round1", "total"]
