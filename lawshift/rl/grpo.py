"""The GRPO arm: TRL's GRPOTrainer trains a fresh LoRA adapter from the base on the filter's verifier.

    python stages/grpo.py    # normally: dvc repro grpo

One prompt per training case, rendered as sample renders it (plain text through the chat template, so TRL never
re-parses the answers); each step draws `sample.num_samples` answers for each of grpo.batch_size / num_samples
cases (the sample stage's decoder through TRL's rollout_func, lawshift/rl/rollout.py; with `grpo.use_vllm` TRL's
colocated vLLM), scores them with lawshift/rl/reward.py and updates the adapter. The run stops at the budget
(lawshift/rl/budget.py). Checkpoints in checkpoints/grpo/ each hold the meter, so a rerun after a kill resumes
from the newest and counts on; checkpoints made under other settings are discarded. Writes models/grpo/,
outputs/grpo/steps.csv and metrics/grpo/train.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from lawshift.core import files, journal, models, paths
from lawshift.core.codedeps import code_digest
from lawshift.core.params import Params
from lawshift.engines.generation import GenerationSettings
from lawshift.engines.hf_backend import eos_ids
from lawshift.rl import budget, reward, rollout
from lawshift.task.data import ArticleLookup, load_articles, training_cases
from lawshift.task.prompts import load_prompt, render_prompt
from lawshift.train.training import load_policy, sort_target_modules

JOURNAL = "journal.jsonl"  # in checkpoints/grpo: the settings its checkpoints were made under
BOOKKEEPING = ("logging_steps", "save_steps", "save_total_limit")  # change nothing trained: checkpoints stay good
STEP_COLUMNS = ("step", "answers", "tokens", "reward", "groups_all_0", "groups_all_1", "loss")


def case_prompts(p: Params, tokenizer) -> tuple[list[dict], int]:
    """One row per training case: the rendered prompt and what the verifier needs; and missing article ids."""
    cases = training_cases(p.data.root)
    source = Path(p.data.root) / "training_set.json"
    lookup = ArticleLookup(load_articles(p.data.train_articles), p.data.train_articles, p.data.strict_articles)
    prompt = load_prompt(p.sample.prompt)
    rows = [{"prompt": render_prompt(tokenizer, prompt.messages(c.fact, lookup.for_case(c, i, source))),
             "charge": c.charge, "prison_time": c.prison_time} for i, c in enumerate(cases)]
    return rows, lookup.missing


def run_settings(p: Params, plan: budget.Plan, rows: list[dict]) -> dict:
    """What decides the trained weights: the code, base, prompts and every param the stage reads."""
    sp, tp = p.sample, p.train
    return {"code": code_digest("grpo"), "base": files.model_digest(paths.BASE), "prompts": files.json_digest(rows),
            "seed": p.seed, "grpo": {k: v for k, v in asdict(p.grpo).items() if k not in BOOKKEEPING},
            "sample": [sp.num_samples, sp.temperature, sp.top_p, sp.max_new_tokens],
            "lora": [tp.lora_r, tp.lora_alpha, tp.lora_dropout, list(tp.lora_target_modules)],
            "term_tolerance": p.filter.term_tolerance, "budget": plan.budget}


def _complete(folder: Path) -> bool:
    """The trainer writes trainer_state.json last, then the meter is added: both there, the checkpoint is whole."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        json.loads((folder / paths.METER).read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def resume_point(ckpt_dir: Path, settings: dict) -> Path | None:
    """The newest whole checkpoint made under these settings, or None (a fresh folder with its journal)."""
    if ckpt_dir.exists():
        why = journal.check(ckpt_dir / JOURNAL, settings)
        if why is None:
            found = [c for c in ckpt_dir.glob("checkpoint-*") if c.name.split("-")[-1].isdigit() and _complete(c)]
            return max(found, key=lambda c: int(c.name.split("-")[-1]), default=None)
        print(f"grpo: discarding the checkpoints in {ckpt_dir}: {why}", file=sys.stderr)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    journal.start(ckpt_dir / JOURNAL, settings)
    return None


def meter_callback(meter: budget.Meter, plan: budget.Plan):
    """Stops the run at the budget; saves the meter into each checkpoint the trainer has just written."""
    from transformers import TrainerCallback

    class MeterCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if meter.answers >= plan.answers:
                control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):
            meter.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return MeterCallback()


def score_answers_only() -> None:
    """TRL 1.16 takes each answer token's log-prob from a chunked LM-head kernel that, off CUDA, scores every
    position of prompt + answer, though only the answer's count (trl/trainer/utils.py `_fused_forward`); on the CPU
    that is about 40% of a step. Its compact mode, which CUDA runs, scores the answer positions alone: the same
    values (tests/rl/test_grpo.py), with the kernel's own CPU tiles."""
    from trl.trainer import utils

    utils._use_triton = lambda device: True  # read only for `compact` there; the kernel checks its own copy


def grpo_config(p: Params, plan: budget.Plan, ckpt_dir: Path, device):
    import torch
    from trl import GRPOConfig

    g, sp = p.grpo, p.sample
    # the checkpointing argument as this transformers names it (lawshift/train/training.py, training_arguments)
    ckpt = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(GRPOConfig)} \
        else "gradient_checkpointing"
    return GRPOConfig(
        output_dir=str(ckpt_dir), max_steps=plan.steps, per_device_train_batch_size=plan.batch,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=plan.group, num_iterations=1,
        **{ckpt: False},  # TRL's default is on: the tiny model needs no memory saving
        learning_rate=g.learning_rate, beta=g.beta, loss_type=g.loss_type,
        # TRL's defaults would differ from the sample stage's: T 1.0, 512 tokens, truncated answers in the loss
        temperature=sp.temperature, top_p=sp.top_p, max_completion_length=sp.max_new_tokens,
        mask_truncated_completions=True, bf16=models.compute_dtype(device) == torch.bfloat16,
        use_cpu=device.type == "cpu",
        use_vllm=g.use_vllm, vllm_mode="colocate", seed=p.seed, data_seed=p.seed, logging_steps=g.logging_steps,
        save_strategy="steps", save_steps=g.save_steps, save_total_limit=g.save_total_limit, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False)


def write_steps(path: str | Path, meter: budget.Meter, history: list[dict]) -> None:
    """One line per optimizer step: the meter's row and the loss TRL logged at that step."""
    loss = {h["step"]: h["loss"] for h in history if "loss" in h and "step" in h}
    lines = [",".join(STEP_COLUMNS)]
    for row in meter.rows:
        row = {**row, "loss": round(loss[row["step"]], 6) if row["step"] in loss else ""}
        lines.append(",".join(str(row[c]) for c in STEP_COLUMNS))
    files.write_text(path, "\n".join(lines) + "\n")


def summary(plan: budget.Plan, meter: budget.Meter, kind: str, steps: int, trainable: tuple[int, int]) -> dict:
    rows = meter.rows
    groups = sum(r["groups"] for r in rows)
    return {"answers_generated": meter.answers, "generated_tokens": meter.tokens, "budget": plan.budget,
            "budget_unused": plan.budget - meter.answers, "steps": steps, "answers_per_step": plan.batch,
            "answers_per_case": plan.group, "reward": kind,
            "reward_first": rows[0]["reward"] if rows else None, "reward_last": rows[-1]["reward"] if rows else None,
            "reward_mean": round(sum(r["reward"] for r in rows) / len(rows), 6) if rows else None,
            "groups_all_0": round(sum(r["groups_all_0"] for r in rows) / groups, 6) if groups else None,
            "groups_all_1": round(sum(r["groups_all_1"] for r in rows) / groups, 6) if groups else None,
            "trainable_params": trainable[0], "total_params": trainable[1]}


def run(p: Params) -> tuple[dict, dict]:
    """The grpo stage: plan the budget, train, write the adapter, its steps and metrics. Returns (metrics, info)."""
    start = time.time()
    plan = budget.plan(p)  # bad params fail here, before the heavy imports
    if plan.note:
        print(f"grpo: {plan.note}", file=sys.stderr)
    from datasets import Dataset
    from trl import GRPOTrainer

    where, g = paths.GRPO_FILES, p.grpo
    base = models.resolve_base(paths.BASE)
    tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows, missing = case_prompts(p, tokenizer)
    longest = max(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows)
    models.check_context(models.load_config(base, p.model.trust_remote_code), longest + p.sample.max_new_tokens,
                         "sample.max_new_tokens")
    ckpt_dir = Path(where["checkpoints"])
    resume = resume_point(ckpt_dir, run_settings(p, plan, rows))
    meter = budget.Meter.load(resume) if resume else budget.Meter(plan.group)
    device = models.pick_device(g.device)
    tp = replace(p.train, load_in_4bit=g.load_in_4bit, gradient_checkpointing=False)
    model = load_policy(base, tp, device, p.seed, trust_remote_code=p.model.trust_remote_code,
                        allow_pickle=p.model.allow_pickle)
    model.config.use_cache = True  # generation needs its cache; load_policy turns it off for SFT
    verifier = reward.reward_function(g.reward, p.filter.term_tolerance, g.charge_weight, eos_ids(model, tokenizer),
                                      lambda step, ids, rewards: meter.add(step, ids, rewards))
    sp = p.sample  # the sample stage's decoder draws the answers, except on vLLM (TRL's colocated engine)
    settings = GenerationSettings(sp.num_samples, sp.temperature, sp.top_p, sp.max_new_tokens)
    own = None if g.use_vllm else rollout.rollout_function(tokenizer, settings, p.seed, plan.group)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL 1.16: pinned, tested
    score_answers_only()
    trainer = GRPOTrainer(model=model, reward_funcs=verifier, args=grpo_config(p, plan, ckpt_dir, device),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          callbacks=[meter_callback(meter, plan)], rollout_func=own)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    with files.atomic_path(where["adapter"]) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        sort_target_modules(tmp / "adapter_config.json")
    write_steps(where["steps"], meter, trainer.state.log_history)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: nothing left to resume
    metrics = summary(plan, meter, g.reward, trainer.state.global_step, trainer.model.get_nb_trainable_parameters())
    metrics["missing_articles"] = missing
    seconds = time.time() - start
    info = {"device": str(device), "resumed_from": resume.name if resume else None, "budget_source": plan.source,
            "generated_tokens_per_second": round(meter.tokens / seconds, 1) if seconds else None}
    return metrics, info
