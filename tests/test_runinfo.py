import json

from lawshift.runinfo import StageClock, summary


def test_stage_clock_reports_time_and_memory():
    stats = StageClock().stats()
    assert stats["wall_seconds"] >= 0
    assert stats["peak_rss_mb"] > 1  # any Python interpreter holds more than 1 MB resident


def test_summary_lists_stages_in_pipeline_order_and_totals(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"wall_seconds": 12.5, "peak_rss_mb": 900}))
    (tmp_path / "base.json").write_text(json.dumps({"wall_seconds": 2.0, "peak_rss_mb": 400}))
    lines = summary(tmp_path).splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["base", "train", "total"]
    assert lines[-1].split()[1] == "14.5"
    assert "900 MB" in lines[2]


def test_eval_time_comes_from_its_own_file_not_the_metrics(tmp_path):
    (tmp_path / "eval_sft.json").write_text(json.dumps({"overall": {}}))  # eval's metrics carry no time
    (tmp_path / "eval_sft_time.json").write_text(json.dumps({"wall_seconds": 1.0, "peak_rss_mb": 500}))
    lines = summary(tmp_path).splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["eval@sft", "total"]
    assert lines[-1].split()[1] == "1.0"
