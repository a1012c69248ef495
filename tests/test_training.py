"""The train stage: weighted completion-only QLoRA SFT, proven on the tiny model on CPU.

The weighting is checked twice: by hand on the loss function, and end to end on the real Trainer loop, where the
gradients of the optimizer steps (micro-batches, accumulation, length grouping and all) must equal the gradient of
the objective computed in one go.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, TrainerCallback

from lawshift import models
from lawshift.answers import format_answer
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.examples import IGNORE, collate, end_of_turn_id, per_sequence_loss
from lawshift.files import InputError
from lawshift.params import TrainParams
from lawshift.prompts import build_messages, render_prompt
from lawshift.training import (
    SftRecord,
    build_examples,
    fingerprint,
    loss_normaliser,
    prepare_checkpoints,
    read_sft,
    resolve_optimizer,
    train_sft,
    weighted_loss,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lawshift-sample"

# Small and exact: no dropout, no clipping, every step logged.
TINY_TRAIN = TrainParams(lora_r=4, lora_alpha=8, lora_dropout=0.0, num_train_epochs=1, per_device_train_batch_size=2,
                         gradient_accumulation_steps=5, warmup_steps=0, max_grad_norm=0.0, logging_steps=1,
                         save_steps=100, max_length=1024, device="cpu", seed=0)


def make_records(tokenizer, counts: list[int]) -> list[dict]:
    """sft.jsonl records for the first len(counts) real training cases: case k has counts[k] accepted answers."""
    cases = training_cases(SAMPLE)
    arts_path = SAMPLE / "criminal_law_articles.json"
    lookup = ArticleLookup(load_articles(arts_path), str(arts_path))
    records = []
    for k, n in enumerate(counts):
        case = cases[k]
        arts = lookup.for_case(case, k)
        prompt = render_prompt(tokenizer, build_messages(case.fact, arts))
        for j in range(n):
            # distinct answers, like sampled ones: the reasoning and the term differ
            response = f"<think>依据法条，量刑第{j}种。</think>{format_answer(case.charge, case.prison_time + j)}"
            records.append({**case.to_dict(), "case_id": case.case_id, "prompt": prompt, "response": response,
                            "num_correct_for_this_sample": n, "weight": 1 / n})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture
def sft_8_1(tokenizer, tmp_path) -> Path:
    """One case with 8 accepted answers (weight 1/8 each) and one with a single answer (weight 1)."""
    return write_jsonl(tmp_path / "outputs" / "sft.jsonl", make_records(tokenizer, [8, 1]))


def run_dirs(tmp_path: Path) -> dict:
    return {"ckpt_dir": tmp_path / "checkpoints" / "sft", "live_dir": tmp_path / "dvclive" / "train",
            "tb_dir": tmp_path / "logs" / "train"}


# ---- the objective, by hand ------------------------------------------------------------------------------------

# (answers per optimizer step B, processes P, Z = (W/N) * min(B, N) / P) for weights 8 x 1/8 + 1 x 1: W = 2, N = 9
NORMALISERS = [(16, 1, 2.0), (9, 1, 2.0), (4, 1, 8 / 9), (1, 1, 2 / 9), (8, 2, 8 / 9)]


@pytest.mark.parametrize("per_step,processes,expected", NORMALISERS)
def test_loss_normaliser(per_step, processes, expected):
    assert loss_normaliser([1 / 8] * 8 + [1.0], per_step, processes) == pytest.approx(expected)


def test_weighted_loss_by_hand_case_with_8_answers_weighs_like_case_with_1():
    # mean token losses: case A's 8 answers 1..8 (mean 4.5), case B's single answer 3
    per_seq = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 3], requires_grad=True)
    weights = torch.tensor([1 / 8] * 8 + [1.0])
    z = loss_normaliser(weights.tolist(), per_step=16)
    loss = weighted_loss(per_seq, weights, z)
    # by hand: (sum_i w_i l_i) / W = (4.5 + 3) / 2 = 3.75: the mean over cases of each case's mean answer loss
    assert z == 2.0
    assert loss.item() == pytest.approx(3.75)
    loss.backward()
    # each case's total weight in the objective: 8 * (1/8) / 2 for A, 1 / 2 for B
    assert per_seq.grad[:8].sum().item() == pytest.approx(0.5)
    assert per_seq.grad[8].item() == pytest.approx(0.5)


def test_weighted_loss_split_over_steps_sums_to_the_objective():
    per_seq = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 3])
    weights = torch.tensor([1 / 8] * 8 + [1.0])
    z = loss_normaliser(weights.tolist(), per_step=4)  # 3 steps: 4 + 4 + 1 answers
    steps = [slice(0, 4), slice(4, 8), slice(8, 9)]
    total = sum(weighted_loss(per_seq[s], weights[s], z) for s in steps)
    # the epoch's steps sum to N / min(B, N) times the objective, whatever the split
    assert total.item() == pytest.approx(9 / 4 * 3.75)


# ---- input -----------------------------------------------------------------------------------------------------

GOOD = {"case_id": "c1", "prompt": "p", "response": "r", "weight": 0.5}
BAD_RECORDS = [
    ([1, 2], None, "expected an object"),
    ({k: v for k, v in GOOD.items() if k != "weight"}, "weight", "missing"),
    ({**GOOD, "weight": 0}, "weight", "positive finite"),
    ({**GOOD, "weight": -0.5}, "weight", "positive finite"),
    ({**GOOD, "weight": True}, "weight", "positive finite"),
    ({**GOOD, "weight": float("nan")}, "weight", "positive finite"),
    ({**GOOD, "weight": "1"}, "weight", "positive finite"),
    ({**GOOD, "prompt": ""}, "prompt", "non-empty str"),
    ({**GOOD, "response": 3}, "response", "non-empty str"),
    ({k: v for k, v in GOOD.items() if k != "case_id"}, "case_id", "missing"),
]


@pytest.mark.parametrize("bad,field,message", BAD_RECORDS)
def test_read_sft_names_file_line_and_field(tmp_path, bad, field, message):
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD, bad])
    with pytest.raises(InputError) as err:
        read_sft(path)
    text = str(err.value)
    assert f"{path}:2" in text and message in text
    if field:
        assert f"field '{field}'" in text


def test_empty_input_points_at_filter_metrics(tmp_path, tiny_base):
    path = write_jsonl(tmp_path / "sft.jsonl", [])
    with pytest.raises(InputError, match=r"no accepted answers.*metrics/filter\.json"):
        train_sft(str(tiny_base), path, tmp_path / "sft", TINY_TRAIN, **run_dirs(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_prompt_is_masked_and_end_of_turn_is_trained(tokenizer):
    recs = [SftRecord(r["case_id"], r["prompt"], r["response"], r["weight"]) for r in make_records(tokenizer, [2, 1])]
    data = build_examples(tokenizer, recs, max_length=4096)
    im_end = end_of_turn_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(im_end) == "<|im_end|>"
    for rec, ex in zip(recs, data.examples, strict=True):
        n_prompt = len(tokenizer(rec.prompt, add_special_tokens=False)["input_ids"])
        answer = tokenizer(rec.response, add_special_tokens=False)["input_ids"] + [im_end]
        assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
        assert ex.labels[n_prompt:] == answer == ex.input_ids[n_prompt:]
        assert ex.labels[-1] == im_end
    batch = collate(data.examples, tokenizer.pad_token_id)
    short = min(range(len(data.examples)), key=lambda i: len(data.examples[i]))
    pad_from = len(data.examples[short])
    if pad_from < batch["labels"].shape[1]:
        assert (batch["labels"][short, pad_from:] == IGNORE).all()
        assert (batch["attention_mask"][short, pad_from:] == 0).all()


def test_too_long_answers_are_dropped_and_their_case_keeps_its_weight(tokenizer):
    recs = [SftRecord(r["case_id"], r["prompt"], r["response"], r["weight"]) for r in make_records(tokenizer, [8, 1])]
    # same prompt for case A: make two of its answers longer than the limit
    limit = max(len(tokenizer(r.prompt + r.response)["input_ids"]) for r in recs) + 8
    recs[0] = replace(recs[0], response=recs[0].response + "很长" * limit)
    recs[1] = replace(recs[1], response=recs[1].response + "很长" * limit)
    data = build_examples(tokenizer, recs, max_length=limit)
    assert (data.dropped_too_long, data.dropped_cases, len(data.examples), data.cases) == (2, 0, 7, 2)
    assert all(len(e) <= limit for e in data.examples)  # dropped, never cut
    totals = {}
    for e in data.examples:
        totals[e.group] = totals.get(e.group, 0) + e.weight
    assert sorted(totals.values()) == pytest.approx([1.0, 1.0])
    with pytest.raises(InputError, match=r"field 'train.max_length'.*all 9 accepted answers are longer than 10"):
        build_examples(tokenizer, recs, max_length=10)


OPTIMIZERS = [("paged_adamw_32bit", "cpu", "adamw_torch"), ("paged_adamw_32bit", "cuda", "paged_adamw_32bit"),
              ("adamw_torch", "cpu", "adamw_torch"), ("paged_adamw_8bit", "cpu", "adamw_torch")]


@pytest.mark.parametrize("requested,device,used", OPTIMIZERS)
def test_optimizer_fallback(requested, device, used):
    assert resolve_optimizer(requested, torch.device(device)) == used


# ---- the real Trainer loop -------------------------------------------------------------------------------------


class GradientProbe(TrainerCallback):
    """Sums the gradients each optimizer step is about to apply (after accumulation, before the update)."""

    def __init__(self):
        self.grads, self.steps, self.model = {}, 0, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.model, self.steps = model, self.steps + 1
        for name, p in model.named_parameters():
            if p.grad is not None:
                self.grads[name] = self.grads.get(name, 0) + p.grad.detach().clone()


# (load_in_4bit, per-device batch, accumulation, steps): 9 answers in 1 step of 5 micro-batches, or in 2 steps (6 + 3)
STEP_LAYOUTS = [(True, 2, 5, 1), (True, 3, 2, 2), (False, 3, 2, 2)]


@pytest.mark.parametrize("load_in_4bit,batch,accum,n_steps", STEP_LAYOUTS)
def test_trainer_gradients_equal_the_weighted_objective(tmp_path, tiny_base, tokenizer, sft_8_1, load_in_4bit,
                                                        batch, accum, n_steps):
    # lr 0 keeps the weights fixed, so the steps' gradients can be summed and compared with one backward pass
    tp = replace(TINY_TRAIN, load_in_4bit=load_in_4bit, per_device_train_batch_size=batch,
                 gradient_accumulation_steps=accum, learning_rate=0.0)
    probe = GradientProbe()
    metrics = train_sft(str(tiny_base), sft_8_1, tmp_path / "sft", tp, callbacks=[probe], **run_dirs(tmp_path))
    assert probe.steps == metrics["steps"] == n_steps
    model = probe.model

    # QLoRA really runs: the targeted layers are bitsandbytes 4-bit, and only LoRA parameters got gradients
    import bitsandbytes as bnb

    wrapped = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(wrapped) == 7 * model.config.num_hidden_layers
    kind = bnb.nn.Linear4bit if load_in_4bit else torch.nn.Linear
    assert all(type(m.base_layer) is kind for m in wrapped)
    lora = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert set(probe.grads) == lora == {n for n, p in model.named_parameters() if p.requires_grad}
    assert model.base_model.model.is_activation_checkpointing

    # the objective in one go: sum_i w_i * meanCE_i / sum_i w_i over all 9 answers in one padded batch
    recs = read_sft(sft_8_1)
    examples = build_examples(tokenizer, recs, tp.max_length).examples
    enc = collate(examples, tokenizer.pad_token_id)
    model.zero_grad()
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    loss = (enc["weights"] * per_sequence_loss(logits, enc["labels"])).sum() / enc["weights"].sum()
    loss.backward()
    n, per_step = len(examples), batch * accum
    for name, p in model.named_parameters():
        if name in lora:
            # summed over the epoch the steps give N / min(B, N) times the objective's gradient
            torch.testing.assert_close(probe.grads[name] * min(per_step, n) / n, p.grad, rtol=1e-4, atol=1e-7)
    if n_steps == 1:  # the logged loss of the one step is the objective itself
        logged = (tmp_path / "dvclive" / "train" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
        assert float(logged[1].split("\t")[1]) == pytest.approx(loss.item(), rel=1e-5)
    assert metrics["weight_sum"] == pytest.approx(2.0) and metrics["cases"] == 2
    assert metrics["optimizer"] == "adamw_torch" and metrics["optimizer_requested"] == "paged_adamw_32bit"


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


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path, tiny_base, sft_8_1):
    tp = replace(TINY_TRAIN, per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=4, save_steps=2,
                 learning_rate=1e-3)
    dirs, out = run_dirs(tmp_path), tmp_path / "models" / "sft"
    with pytest.raises(Interrupt):
        train_sft(str(tiny_base), sft_8_1, out, tp, callbacks=[StopAfter(3)], **dirs)
    assert not out.exists()  # no half-written adapter
    assert sorted(p.name for p in dirs["ckpt_dir"].glob("checkpoint-*")) == ["checkpoint-2"]

    first = FirstStep()
    metrics = train_sft(str(tiny_base), sft_8_1, out, tp, callbacks=[first], **dirs)
    assert first.global_step == 2 and metrics["resumed_from"] == "checkpoint-2" and metrics["steps"] == 4
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not dirs["ckpt_dir"].exists()  # finished runs leave nothing to resume
    steps = [int(line.split("\t")[0]) for line in
             (dirs["live_dir"] / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]  # step 3, logged before the interruption, is logged once
    assert list(dirs["tb_dir"].glob("events.out.tfevents.*"))

    # the resumed adapter is the one an uninterrupted run trains
    clean = tmp_path / "clean"
    train_sft(str(tiny_base), sft_8_1, clean / "sft", tp, **run_dirs(clean))
    resumed, straight = adapter_tensors(out), adapter_tensors(clean / "sft")
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key])


def test_checkpoints_of_other_settings_are_never_resumed(tmp_path, tiny_base, sft_8_1):
    ckpt = tmp_path / "checkpoints"
    fp = fingerprint(str(tiny_base), sft_8_1, TINY_TRAIN)
    assert prepare_checkpoints(ckpt, fp) is None
    for step, complete in ((3, True), (4, False)):  # checkpoint-4 was cut short while being written
        (ckpt / f"checkpoint-{step}").mkdir()
        if complete:
            (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert prepare_checkpoints(ckpt, fp) == ckpt / "checkpoint-3"
    # bookkeeping params keep the fingerprint; data and params that change the weights do not
    assert fingerprint(str(tiny_base), sft_8_1, replace(TINY_TRAIN, logging_steps=7, save_steps=9)) == fp
    other_data = write_jsonl(tmp_path / "other.jsonl", read_sft_dicts(sft_8_1)[:-1])
    changed = [fingerprint(str(tiny_base), other_data, TINY_TRAIN),
               fingerprint(str(tiny_base), sft_8_1, replace(TINY_TRAIN, learning_rate=1e-3)),
               fingerprint(str(tiny_base), sft_8_1, TINY_TRAIN, trust_remote_code=True)]
    assert fp not in changed and len(set(changed)) == 3
    assert prepare_checkpoints(ckpt, changed[1]) is None
    assert not list(ckpt.glob("checkpoint-*"))


def read_sft_dicts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- the stage -------------------------------------------------------------------------------------------------


def stage_project(tmp_path: Path, tiny_base: Path, records: list[dict], train: dict) -> Path:
    """A project directory as the stage sees it: params.yaml, models/base, outputs/sft.jsonl."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(train)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    (tmp_path / "models").mkdir()
    os.symlink(tiny_base, tmp_path / "models" / "base")
    write_jsonl(tmp_path / "outputs" / "sft.jsonl", records)
    return tmp_path


def test_stage_trains_an_adapter_the_eval_stage_loads(tmp_path, tiny_base, tokenizer, monkeypatch):
    train = {"num_train_epochs": 1, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
             "warmup_steps": 0, "logging_steps": 1, "max_length": 1024, "lora_r": 4, "device": "cpu"}
    project = stage_project(tmp_path, tiny_base, make_records(tokenizer, [3, 1, 2]), train)
    monkeypatch.chdir(project)
    spec = importlib.util.spec_from_file_location("train_stage", REPO / "stages" / "train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main()

    metrics = json.loads(Path("metrics/train.json").read_text())
    assert metrics["steps"] == 2 and metrics["examples"] == 6 and metrics["cases"] == 3
    assert metrics["trainable_params"] > 0 and metrics["train_tokens_per_second"] > 0
    assert math.isfinite(metrics["loss_last"]) and metrics["dropped_too_long"] == 0
    model = models.load_model(models.resolve_base("models/base"), device=torch.device("cpu"), adapter="models/sft")
    assert any(".lora_B." in n and p.abs().sum() > 0 for n, p in model.named_parameters())  # trained, not init
    # every dvclive file dvc.yaml declares as a plot is one the run really wrote
    declared = [path for plot in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
                for spec in plot.values() if isinstance(spec, dict) for path in spec.get("y", {})
                if path.startswith("dvclive/")]
    assert declared and all(Path(p).is_file() for p in declared)
    assert list(Path("logs/train").glob("events.out.tfevents.*"))
    assert not Path("dvc.yaml").exists() and not Path("dvclive/train/dvc.yaml").exists()


def test_stage_empty_input_is_one_line_and_exit_2(tmp_path, tiny_base):
    project = stage_project(tmp_path, tiny_base, [], {})
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "train.py")], cwd=project, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "metrics/filter.json" in proc.stderr
    assert not (project / "models" / "sft").exists()
