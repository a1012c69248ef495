"""Runs left for hours get killed: the train and eval stages are SIGKILLed for real once they have written progress (a
checkpoint, a batch of predictions); nothing DVC would take for a result is left, and the rerun ends where an
uninterrupted run ends. What a kill can tear in the train files (a checkpoint's trainer_state.json, the checkpoint
journal, a DVCLive row) is dropped on resume.

The sample stage's kill test is
tests/sample/test_sampling.py::test_ctrl_c_then_sigkill_then_rerun_yields_every_case_once.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ENV, EV, R1, SMALL, interrupt_when, read_json, run_stage, stage_cmd
from test_bad_inputs import declared_outputs, with_sft

from lawshift.core import journal


def kill_when(project: Path, stage: str, ready: Callable[[], bool], timeout: float = 240) -> str:
    """Run the stage, SIGKILL it the moment `ready()` holds; returns its output. Fails if it ended by itself."""
    log_path = project / "killed.log"
    status = interrupt_when(stage_cmd(stage), project, ready, signal.SIGKILL, log=log_path, timeout=timeout)
    output = log_path.read_text()
    log_path.unlink()
    assert status == -signal.SIGKILL, f"the stage was not killed mid-run (exit {status}):\n{output[-3000:]}"
    return output


def start(project: Path, stage: str) -> subprocess.Popen:
    """The stage in the background, its output in <project>/<stage>.log (a pipe nobody reads would stall it)."""
    with open(project / f"{stage}.log", "w") as log:
        return subprocess.Popen(stage_cmd(stage), cwd=project, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, project: Path, stage: str) -> None:
    status = proc.wait(timeout=300)
    assert status == 0, (project / f"{stage}.log").read_text()[-3000:]


def temp_leftovers(project: Path) -> list[str]:
    return sorted(p.relative_to(project).as_posix() for p in project.rglob(".*.tmp"))


def loss_rows(project: Path) -> list[tuple[int, float]]:
    path = project / R1["live"] / "plots" / "metrics" / "loss.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    return [(int(r["step"]), float(r["loss"])) for r in rows]


@pytest.mark.slow
def test_train_killed_at_a_checkpoint_resumes_to_the_uninterrupted_adapter(project, tmp_path):
    import torch
    from safetensors.torch import load_file

    killed = project()
    with_sft(killed)
    straight = shutil.copytree(killed, tmp_path / "straight")  # the same inputs, for the uninterrupted run
    steps = SMALL["train"]["max_steps"]
    reference = start(straight, "train")  # the uninterrupted run, alongside

    ckpts = killed / R1["checkpoints"]
    kill_when(killed, "train", lambda: any(ckpts.glob("checkpoint-*/trainer_state.json")))
    # Killed after its first checkpoint: no adapter, no metrics, nothing half-written that DVC could record.
    assert not (killed / R1["adapter"]).exists() and not (killed / R1["train_metrics"]).exists()
    assert not (killed / R1["train_time"]).exists()
    assert (ckpts / "journal.jsonl").is_file() and not (ckpts / "fingerprint.json").exists()
    assert temp_leftovers(killed) == []

    rerun = run_stage(killed, "train")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    finish(reference, straight, "train")
    timing, metrics = read_json(killed / R1["train_time"]), read_json(killed / R1["train_metrics"])
    assert timing["resumed_from"].startswith("checkpoint-") and metrics["steps"] == steps
    assert read_json(straight / R1["train_time"])["resumed_from"] is None
    assert "resumed_from" not in metrics
    # The same adapter as the run that was never interrupted, and one loss curve with every step once.
    resumed, reference_weights = (load_file(p / R1["adapter"] / "adapter_model.safetensors")
                                  for p in (killed, straight))
    assert resumed.keys() == reference_weights.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], reference_weights[key])
    curve, reference_curve = loss_rows(killed), loss_rows(straight)
    assert [s for s, _ in curve] == list(range(1, steps + 1)) == [s for s, _ in reference_curve]
    assert [loss for _, loss in curve] == pytest.approx([loss for _, loss in reference_curve], rel=1e-4)
    plotted = (killed / R1["train_plot"]).read_text(encoding="utf-8").splitlines()[1:]  # the charts' copy of it
    assert [int(row.split(",")[0]) for row in plotted] == list(range(1, steps + 1))
    assert not ckpts.exists() and temp_leftovers(killed) == []


def test_what_a_kill_tears_in_the_train_files_is_dropped_on_resume(tmp_path, capsys):
    """A kill can cut short the last checkpoint's trainer_state.json, the checkpoint journal, or a DVCLive row."""
    from lawshift.train.training import JOURNAL, prepare_checkpoints, truncate_live

    settings = {"params": {"lora_r": 4}, "data": "d1"}
    ckpt = tmp_path / "checkpoints" / "sft"
    assert prepare_checkpoints(ckpt, settings) is None
    for step, state in ((2, '{"global_step": 2}'), (3, '{"global_st')):  # checkpoint-3: killed while saving
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert prepare_checkpoints(ckpt, settings) == ckpt / "checkpoint-2"
    assert capsys.readouterr().err == ""
    for torn in ('{"fingerp', '{"fingerprint": "x"}\n', ""):  # unreadable: nothing here can be trusted to match
        (ckpt / "checkpoint-2").mkdir(exist_ok=True)
        (ckpt / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
        (ckpt / JOURNAL).write_text(torn)
        assert prepare_checkpoints(ckpt, settings) is None and not list(ckpt.glob("checkpoint-*"))
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "discarding the checkpoints" in err and "no readable header line" in err
        assert prepare_checkpoints(ckpt, settings) is None  # and the new journal is whole
        assert journal.check(ckpt / JOURNAL, settings) is None

    metrics = tmp_path / "dvclive" / "train" / "plots" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "loss.tsv").write_text("timestamp\tstep\tloss\n1\t1\t2.5\n2\t2\t2.25\n3\t3\t2.0\n4\t")
    (metrics / "learning_rate.tsv").write_text("timestamp\tstep\tlearning_rate\n1\t1\t0.1\n2\t2\t0.2\n3\t3")
    truncate_live(tmp_path / "dvclive" / "train", 2)
    assert (metrics / "loss.tsv").read_text() == "timestamp\tstep\tloss\n1\t1\t2.5\n2\t2\t2.25\n"
    assert (metrics / "learning_rate.tsv").read_text() == "timestamp\tstep\tlearning_rate\n1\t1\t0.1\n2\t2\t0.2\n"
    assert temp_leftovers(tmp_path) == []


def prediction_outputs(project: Path) -> dict[str, bytes | None]:
    """eval@base's results as dvc.yaml declares them, with their bytes (None where absent).

    The stage's time record (metrics/time/eval_base.json) is declared too; it is a result only in that it exists.
    """
    outs = {out: (project / out).read_bytes() if (project / out).is_file() else None
            for out in declared_outputs("eval")}
    timing = outs.pop(EV["base"]["time"])
    return outs | {EV["base"]["time"]: None if timing is None else b"present"}


@pytest.mark.slow
def test_eval_killed_mid_run_resumes_to_the_uninterrupted_predictions(project, tmp_path):
    n_test = 8  # 9 batches: the kill lands with batches still to go
    killed = project(n_test=n_test)
    straight = shutil.copytree(killed, tmp_path / "straight")
    reference = start(straight, "eval")
    partial = killed / (EV["base"]["predictions"] + ".partial")

    def batches_saved() -> int:  # complete lines after the header
        raw = partial.read_bytes() if partial.is_file() else b""
        return max(raw.count(b"\n") - 1, 0)

    kill_when(killed, "eval", lambda: batches_saved() >= 1)
    saved = batches_saved()
    assert saved >= 1 and all(v is None for v in prediction_outputs(killed).values())
    head = json.loads(partial.read_bytes().split(b"\n")[0])  # the journal's header: what decides the predictions
    assert set(head) == {"fingerprint", "settings"} and {"eval", "prompts", "base"} <= set(head["settings"])
    assert temp_leftovers(killed) == []

    rerun = run_stage(killed, "eval")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    finish(reference, straight, "eval")
    # Greedy decoding: the resumed run's predictions, metrics, report and plots are the uninterrupted run's, byte
    # for byte, and the partial file is gone.
    outputs = prediction_outputs(killed)
    assert all(v is not None for v in outputs.values()) and outputs == prediction_outputs(straight)
    predictions = [json.loads(line) for line in outputs[EV["base"]["predictions"]].splitlines()]
    train_subset = SMALL["eval"]["train_subset"]
    assert len(predictions) == len({p["id"] for p in predictions}) == 2 * n_test + train_subset  # each prompt once
    assert not partial.exists() and temp_leftovers(killed) == []
