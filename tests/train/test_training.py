"""The train run (lawshift/train/training.py) and stage `train` on the tiny model on CPU: optimizer choice, the settings
that decide whether checkpoints may be resumed (a header-only journal beside them), an interrupted run resumed to
the uninterrupted adapter, and the stage end to end.

The data side is tested in tests/train/test_sftdata.py, the objective (and the Trainer's gradients) in
tests/train/test_objective.py; a real SIGKILL of the stage in tests/test_kills.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import R1, REPO, read_json, run_stage
from test_sftdata import make_records, write_jsonl
from transformers import TrainerCallback

from lawshift.core import journal, models, paths
from lawshift.core.files import InputError, json_digest
from lawshift.core.params import TrainParams
from lawshift.train.training import (
    JOURNAL,
    last_complete_checkpoint,
    prepare_checkpoints,
    resolve_optimizer,
    run_settings,
    train_device,
    train_sft,
    training_arguments,
)

# Small and exact: no dropout, no clipping, every step logged.
TINY_TRAIN = TrainParams(lora_r=4, lora_alpha=8, lora_dropout=0.0, num_train_epochs=1, per_device_train_batch_size=2,
                         gradient_accumulation_steps=5, warmup_steps=0, max_grad_norm=0.0, logging_steps=1,
                         save_steps=100, max_length=1024, device="cpu")
SEED = 0  # the top-level `seed`: LoRA initialisation and data order


def run_dirs(tmp_path: Path) -> dict:
    return {"ckpt_dir": tmp_path / "checkpoints" / "sft", "live_dir": tmp_path / "dvclive" / "train",
            "tb_dir": tmp_path / "logs" / "train"}


@pytest.fixture
def sft_8_1(tiny, tmp_path) -> Path:
    """One case with 8 accepted answers (weight 1/8 each) and one with a single answer (weight 1)."""
    return write_jsonl(tmp_path / "outputs" / "sft.jsonl", make_records(tiny.tokenizer, [8, 1]))


def read_sft_dicts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- settings --------------------------------------------------------------------------------------------------

OPTIMIZERS = [("paged_adamw_32bit", "cpu", "adamw_torch"), ("paged_adamw_32bit", "cuda", "paged_adamw_32bit"),
              ("adamw_torch", "cpu", "adamw_torch"), ("paged_adamw_8bit", "cpu", "adamw_torch"),
              ("paged_adamw_8bit", "cuda", "paged_adamw_8bit")]


@pytest.mark.parametrize("requested,device,used", OPTIMIZERS)
def test_optimizer_fallback(requested, device, used):
    assert resolve_optimizer(requested, torch.device(device)) == used


def test_train_device_on_cpu():
    assert train_device("cpu") == torch.device("cpu")


def test_training_arguments_follow_the_params(tmp_path):
    tp = replace(TINY_TRAIN, max_steps=7, group_by_length=False, save_total_limit=3)
    args = training_arguments(tp, tmp_path / "ckpt", torch.device("cpu"), "adamw_torch", 7)
    assert args.output_dir == str(tmp_path / "ckpt") and args.optim == "adamw_torch"
    assert (args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (7, 2, 5)
    assert (args.save_steps, args.save_total_limit, args.logging_steps, args.seed, args.data_seed) == (100, 3, 1, 7, 7)
    assert args.use_cpu and not args.bf16 and args.report_to == [] and not args.remove_unused_columns


def test_empty_input_points_at_filter_metrics(tmp_path, tiny_base):
    path = write_jsonl(tmp_path / "sft.jsonl", [])
    with pytest.raises(InputError, match=r"no accepted answers.*the filter.s metrics"):
        train_sft(str(tiny_base), path, tmp_path / "sft", TINY_TRAIN, seed=SEED, **run_dirs(tmp_path))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "sft").exists()


def test_checkpoints_of_other_settings_are_never_resumed(tmp_path, tiny_base, sft_8_1, capsys):
    ckpt = tmp_path / "checkpoints"
    settings = run_settings(str(tiny_base), sft_8_1, TINY_TRAIN, SEED)
    assert prepare_checkpoints(ckpt, settings) is None
    # the journal beside the checkpoints is a header only: the settings they are made under
    head = json.loads((ckpt / JOURNAL).read_text(encoding="utf-8"))
    assert head == {"fingerprint": json_digest(settings), "settings": settings}
    assert (ckpt / JOURNAL).read_text(encoding="utf-8").count("\n") == 1
    assert not (ckpt / "fingerprint.json").exists()
    for step, complete in ((3, True), (4, False)):  # checkpoint-4 was cut short while being written
        (ckpt / f"checkpoint-{step}").mkdir()
        if complete:
            (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert prepare_checkpoints(ckpt, settings) == ckpt / "checkpoint-3"
    assert capsys.readouterr().err == ""  # resumable: nothing to say
    # bookkeeping params keep the settings; data and params that change the weights do not
    assert run_settings(str(tiny_base), sft_8_1, replace(TINY_TRAIN, logging_steps=7, save_steps=9,
                                                         save_total_limit=5), SEED) == settings
    other_data = write_jsonl(tmp_path / "other.jsonl", read_sft_dicts(sft_8_1)[:-1])
    changed = {"data": run_settings(str(tiny_base), other_data, TINY_TRAIN, SEED),
               "params": run_settings(str(tiny_base), sft_8_1, replace(TINY_TRAIN, learning_rate=1e-3), SEED),
               "seed": run_settings(str(tiny_base), sft_8_1, TINY_TRAIN, SEED + 1),
               "trust_remote_code": run_settings(str(tiny_base), sft_8_1, TINY_TRAIN, SEED, trust_remote_code=True)}
    digests = {json_digest(s) for s in changed.values()}
    assert json_digest(settings) not in digests and len(digests) == 4
    for name, other in changed.items():  # each differs from the original in exactly the setting changed
        assert journal.changed_settings(settings, other) == [name]
    assert prepare_checkpoints(ckpt, changed["params"]) is None
    assert not list(ckpt.glob("checkpoint-*"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"discarding the checkpoints in {ckpt}" in err and "(params)" in err
    assert journal.check(ckpt / JOURNAL, changed["params"]) is None  # the new journal is whole and matches


def test_base_model_files_are_part_of_the_settings(tmp_path, tiny_base, sft_8_1):
    other = shutil.copytree(tiny_base, tmp_path / "base")
    original = run_settings(str(tiny_base), sft_8_1, TINY_TRAIN, SEED)
    assert run_settings(str(other), sft_8_1, TINY_TRAIN, SEED) == original
    config = read_json(other / "config.json")
    (other / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}), encoding="utf-8")
    changed = run_settings(str(other), sft_8_1, TINY_TRAIN, SEED)
    assert journal.changed_settings(original, changed) == ["base"]


def test_last_complete_checkpoint_is_the_newest_whole_one(tmp_path):
    assert last_complete_checkpoint(tmp_path) is None
    for name, state in (("checkpoint-2", '{"global_step": 2}'), ("checkpoint-10", '{"global_step": 10}'),
                        ("checkpoint-12", '{"global_st'), ("checkpoint-x", "{}"), ("checkpoint-11", "[]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-13").mkdir()  # no trainer_state.json yet
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # by number, not by name


# ---- the real Trainer loop -------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


class StopAfter(TrainerCallback):
    """A real interruption of the Trainer loop: raise at the end of optimizer step k."""

    def __init__(self, k: int):
        self.k = k

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.k:
            raise Interrupt(f"stopped after step {self.k}")


class FirstStep(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.global_step = state.global_step


def adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.mark.slow
def test_interrupted_run_resumes_from_last_checkpoint(tmp_path, tiny_base, sft_8_1):
    tp = replace(TINY_TRAIN, per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=4, save_steps=2,
                 learning_rate=1e-3)
    dirs, out = run_dirs(tmp_path), tmp_path / "models" / "sft"
    with pytest.raises(Interrupt):
        train_sft(str(tiny_base), sft_8_1, out, tp, seed=SEED, callbacks=[StopAfter(3)], **dirs)
    assert not out.exists()  # no half-written adapter
    assert sorted(p.name for p in dirs["ckpt_dir"].glob("checkpoint-*")) == ["checkpoint-2"]
    assert journal.check(dirs["ckpt_dir"] / JOURNAL, run_settings(str(tiny_base), sft_8_1, tp, SEED)) is None

    first = FirstStep()
    metrics, info = train_sft(str(tiny_base), sft_8_1, out, tp, seed=SEED, callbacks=[first], **dirs)
    assert first.global_step == 2 and info["resumed_from"] == "checkpoint-2" and metrics["steps"] == 4
    assert info["device"] == "cpu" and info["train_tokens_per_second"] > 0
    # how the run went is run info, apart from the results
    assert not {"resumed_from", "device", "train_tokens_per_second", "wall_seconds"} & set(metrics)
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not dirs["ckpt_dir"].exists()  # finished runs leave nothing to resume
    steps = [int(line.split("\t")[0]) for line in
             (dirs["live_dir"] / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]  # step 3, logged before the interruption, is logged once
    assert list(dirs["tb_dir"].glob("events.out.tfevents.*"))

    # the resumed adapter is the one an uninterrupted run trains
    clean = tmp_path / "clean"
    straight_metrics, straight_info = train_sft(str(tiny_base), sft_8_1, clean / "sft", tp, seed=SEED,
                                                **run_dirs(clean))
    assert straight_info["resumed_from"] is None and straight_metrics["steps"] == 4
    resumed, straight = adapter_tensors(out), adapter_tensors(clean / "sft")
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key])


# ---- the stage -------------------------------------------------------------------------------------------------

STAGE_TRAIN = {"num_train_epochs": 1, "max_steps": -1, "per_device_train_batch_size": 4,
               "gradient_accumulation_steps": 1, "warmup_steps": 0, "logging_steps": 1, "save_steps": 10,
               "max_length": 1024, "lora_r": 4, "device": "cpu"}


def stage_main():
    """main() of stages/train.py, run in-process."""
    spec = importlib.util.spec_from_file_location("train_stage", REPO / "stages" / "train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage.main


@pytest.mark.slow
def test_stage_trains_an_adapter_the_eval_stage_loads(project, tiny):
    root = project(params={"train": STAGE_TRAIN})
    write_jsonl(root / R1["sft"], make_records(tiny.tokenizer, [3, 1, 2]))
    stage_main()()

    metrics = read_json(R1["train_metrics"])
    assert metrics["steps"] == 2 and metrics["examples"] == 6 and metrics["cases"] == 3
    assert metrics["trainable_params"] > 0
    assert math.isfinite(metrics["loss_last"]) and metrics["dropped_too_long"] == 0
    assert not {"train_tokens_per_second", "device", "resumed_from", "wall_seconds", "peak_rss_mb"} & set(metrics)
    timing = read_json(R1["train_time"])  # metrics/time/train.json: how the run went
    assert timing["train_tokens_per_second"] > 0 and timing["device"] == "cpu" and timing["resumed_from"] is None
    assert timing["wall_seconds"] > 0 and timing["peak_rss_mb"] > 0
    model = models.load_model(models.resolve_base(paths.BASE), device=torch.device("cpu"), adapter=R1["adapter"])
    assert any(".lora_B." in n and p.abs().sum() > 0 for n, p in model.named_parameters())  # trained, not init
    # every file dvc.yaml declares (DVCLive's curves, the charts' copy of them) is one the run really wrote
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["do"]
    declared = [path.replace("${key}", "round1") for out in stage["outs"] for path in ([out] if isinstance(out, str)
                                                                                    else out)]
    assert len(declared) == 4 and all(Path(p).exists() for p in declared)
    curves = Path(R1["train_plot"]).read_text().splitlines()
    logged = Path(R1["live"], "plots", "metrics", "loss.tsv").read_text().splitlines()
    assert curves[0] == "step,loss,learning_rate" and len(curves) == len(logged) == metrics["steps"] + 1
    assert [c.split(",")[:2] for c in curves[1:]] == [row.split("\t")[-2:] for row in logged[1:]]
    assert list(Path(R1["tensorboard"]).glob("events.out.tfevents.*"))
    assert not Path("dvc.yaml").exists() and not Path(R1["live"], "dvc.yaml").exists()
    assert not Path(R1["checkpoints"]).exists()


@pytest.mark.slow
def test_stage_empty_input_is_one_line_and_exit_2(project):
    root = project()
    write_jsonl(root / R1["sft"], [])
    proc = run_stage(root, "train", timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and R1["filter_metrics"] in proc.stderr
    assert proc.stderr.startswith(f"error: {R1['sft']}: no accepted answers")
    assert not (root / R1["adapter"]).exists() and not (root / R1["train_metrics"]).exists()
    assert not (root / R1["train_time"]).exists() and not (root / R1["checkpoints"]).exists()
