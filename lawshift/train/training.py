"""Weighted, completion-only QLoRA SFT on the accepted answers (the learning step of the method).

    python stages/train.py round1    # normally: dvc repro train@round1; N processes with train.num_processes: N

Reads outputs/<round>/sft.jsonl (encoded by lawshift/train/sftdata.py, objective in lawshift/train/objective.py,
order in lawshift/train/order.py, processes in lawshift/train/launch.py), loads the base in 4-bit NF4 (or plain
LoRA with `train.load_in_4bit: false`), trains a fresh adapter from the base, and writes it atomically to
models/<round>/. Checkpoints in checkpoints/<round>/ resume a killed run when the settings
match; TensorBoard logs go to logs/<round>/, DVCLive's to dvclive/<round>/ (its curves also to
plots/train_curves/<round>.csv). docs/pipeline.md (train) has the optimizer, resume and metrics details.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path

import torch

from lawshift.core import files, journal, models, paths
from lawshift.core.codedeps import code_digest
from lawshift.core.files import atomic_path, write_text
from lawshift.core.params import Params, TrainParams, param_error
from lawshift.train.launch import step_layout
from lawshift.train.objective import loss_normaliser, trainer_class
from lawshift.train.order import StepSampler
from lawshift.train.sftdata import Collator, SftDataset, build_examples, read_sft

log = logging.getLogger(__name__)

TIMING_LOGS = ("runtime", "_per_second")  # Trainer log keys that measure speed, not training
JOURNAL = "journal.jsonl"  # in the checkpoint folder: the settings its checkpoints were made under
PAGED_OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit")
CPU_FALLBACK_OPTIMIZER = "adamw_torch"
# Params that only change bookkeeping, not the trained weights: a change keeps checkpoints resumable.
BOOKKEEPING_PARAMS = ("logging_steps", "save_steps", "save_total_limit")


# ---- model ---------------------------------------------------------------------------------------------------


def resolve_optimizer(requested: str, device: torch.device) -> str:
    """Paged bitsandbytes optimizers need CUDA unified memory; elsewhere use PyTorch's AdamW (module docstring)."""
    if requested in PAGED_OPTIMIZERS and device.type != "cuda":
        return CPU_FALLBACK_OPTIMIZER
    return requested


def load_policy(base: str, tp, device: torch.device, seed: int, *, trust_remote_code: bool = False,
                allow_pickle: bool = False):
    """Base model (4-bit NF4 + double quantisation when `tp.load_in_4bit`) with fresh, seeded LoRA adapters."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, set_seed

    dtype = models.compute_dtype(device)
    quant = None
    if tp.load_in_4bit:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
    model = models.load_model(base, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              dtype=dtype, quantization_config=quant)
    model.config.use_cache = False  # the cache is useless in training and conflicts with checkpointing
    ckpt_kwargs = {"use_reentrant": False}
    if tp.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tp.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=ckpt_kwargs)
    elif tp.gradient_checkpointing:
        # transformers renamed gradient to activation checkpointing after 5.20 (the GPU set's version, which has only
        # the old names; newer ones keep them as warning aliases until v6)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    set_seed(seed)  # LoRA's A matrices are drawn here
    config = LoraConfig(r=tp.lora_r, lora_alpha=tp.lora_alpha, lora_dropout=tp.lora_dropout,
                        target_modules=list(tp.lora_target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise param_error("train.lora_target_modules", str(err).splitlines()[0]) from None


def count_trainable(model) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT counts a packed 4-bit weight as its unpacked size."""
    return model.get_nb_trainable_parameters()


# ---- checkpoints ---------------------------------------------------------------------------------------------


def run_settings(base: str, sft_path: str | Path, tp: TrainParams, seed: int, trust_remote_code: bool = False) -> dict:
    """What determines the trained weights: the code, data, base model files (or hub id) and the train params that
    matter."""
    return {"code": code_digest("train"),
            "params": {k: v for k, v in asdict(tp).items() if k not in BOOKKEEPING_PARAMS},
            "seed": seed, "trust_remote_code": trust_remote_code, "data": files.file_digest(sft_path),
            "base": files.model_digest(base)}


def _read_json_or_none(path: Path):
    """A JSON file's content, or None when it is missing or was cut short by a kill."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest `checkpoint-<step>` that was fully written (the Trainer writes `trainer_state.json` last, so a
    readable one means the rest is there)."""
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and isinstance(_read_json_or_none(p / "trainer_state.json"), dict)]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def made_on_other_processes(ckpt_dir: Path, settings: dict) -> int | None:
    """The process count the checkpoints were made with, when that is the one setting that differs."""
    try:
        with open(Path(ckpt_dir) / JOURNAL, "rb") as f:
            head = journal.parse_header(f.readline())
    except OSError:
        return None
    old = (head or {}).get("settings", {})
    n, was = settings.get("params", {}).get("num_processes"), old.get("params", {}).get("num_processes")
    same = {**old, "params": {**old.get("params", {}), "num_processes": n}} == json.loads(json.dumps(settings))
    return was if same and was != n else None


def prepare_checkpoints(ckpt_dir: Path, settings: dict) -> Path | None:
    """The checkpoint to resume from, or None. Checkpoints made under other settings are deleted, never resumed;
    those of the same run on another number of processes are refused (their dropout draws would differ)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.exists():
        why = journal.check(ckpt_dir / JOURNAL, settings)
        if why is None:
            return last_complete_checkpoint(ckpt_dir)
        if (was := made_on_other_processes(ckpt_dir, settings)) is not None and last_complete_checkpoint(ckpt_dir):
            n = settings.get("params", {}).get("num_processes")
            raise param_error("train.num_processes", f"{ckpt_dir} holds checkpoints of this run on {was} processes and "
                                                     f"this run has {n}: set {was} to resume it, or delete {ckpt_dir} "
                                                     "to start afresh")
        print(f"train: discarding the checkpoints in {ckpt_dir}: {why}", file=sys.stderr)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    journal.start(ckpt_dir / JOURNAL, settings)
    return None


# ---- logging -------------------------------------------------------------------------------------------------


def truncate_live(live_dir: Path, step: int) -> None:
    """Drop DVCLive rows logged after `step`: a resumed run logs those steps again."""
    def step_of(line: str, col: int) -> int | None:
        try:
            return int(line.split("\t")[col])
        except (IndexError, ValueError):
            return None  # a row cut short by a kill: dropped with the rows after the checkpoint

    for tsv in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines()
        if not lines or "step" not in lines[0].split("\t"):
            continue
        col = lines[0].split("\t").index("step")
        keep = [lines[0]] + [ln for ln in lines[1:] if (s := step_of(ln, col)) is not None and s <= step]
        write_text(tsv, "\n".join(keep) + "\n")  # atomic: a kill now must not cut the curve


def logging_callbacks(live_dir: Path, tb_dir: Path, resume_step: int | None, main: bool = True) -> list:
    """DVCLive at x = optimizer step (dvc.yaml untouched) and TensorBoard, on the main process; both continue a
    resumed run. Every process logs the final step (logging gathers the loss from all), so `loss_last` is the mean
    loss of the last logging window."""
    from dvclive import Live
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainerCallback
    from transformers.integrations import DVCLiveCallback, TensorBoardCallback

    class LogFinalStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True

    class StepDVCLiveCallback(DVCLiveCallback):
        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            self.live.step = state.global_step  # DVCLive would count log calls, not optimizer steps
            # dvclive/<round>'s curves are DVC outputs: timing (runtime, samples per second) would make their bytes
            # differ from machine to machine and run to run. It goes to metrics/time/<round>/train.json instead.
            logs = {k: v for k, v in (logs or {}).items() if not k.endswith(TIMING_LOGS)}
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    if not main:
        return [LogFinalStep()]
    if resume_step is None:
        shutil.rmtree(tb_dir, ignore_errors=True)
    else:
        truncate_live(live_dir, resume_step)
    live = Live(dir=str(live_dir), resume=resume_step is not None, dvcyaml=False, save_dvc_exp=False, report=None)
    # purge_step hides events a resumed run logs again
    writer = SummaryWriter(log_dir=str(tb_dir), purge_step=None if resume_step is None else resume_step + 1)
    return [LogFinalStep(), StepDVCLiveCallback(live=live), TensorBoardCallback(tb_writer=writer)]


# ---- run -----------------------------------------------------------------------------------------------------


def training_arguments(tp, ckpt_dir: Path, device: torch.device, optim: str, seed: int, world_size: int = 1):
    """The Trainer's arguments; N processes share the effective batch the params fix (launch.step_layout)."""
    from transformers import TrainingArguments

    micro, accumulation = step_layout(tp.per_device_train_batch_size, tp.gradient_accumulation_steps, world_size)
    bf16 = models.compute_dtype(device) == torch.bfloat16
    # the checkpointing argument as this transformers names it (renamed after 5.20, see load_policy)
    names = {f.name for f in fields(TrainingArguments)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=tp.num_train_epochs, max_steps=tp.max_steps,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation, learning_rate=tp.learning_rate,
        warmup_steps=tp.warmup_steps, lr_scheduler_type=tp.lr_scheduler_type, weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm, optim=optim, bf16=bf16, use_cpu=device.type == "cpu",
        **{ckpt: tp.gradient_checkpointing, f"{ckpt}_kwargs": {"use_reentrant": False}},
        logging_strategy="steps", logging_steps=tp.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=tp.save_steps, save_total_limit=tp.save_total_limit,
        remove_unused_columns=False,  # `weights` must reach compute_loss
        ddp_find_unused_parameters=False,  # every LoRA weight is used; a PeftModel would default to searching
        report_to="none",  # DVCLive and TensorBoard are passed as callbacks, exactly once each
        seed=seed, data_seed=seed, dataloader_num_workers=0,
    )


def _logged(history: list[dict], key: str) -> list[float]:
    return [h[key] for h in history if key in h]


def train_device(name: str) -> torch.device:
    """`pick_device`, and on N processes (lawshift/train/launch.py) each process's own GPU."""
    device = models.pick_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def resume_point(ckpt_dir: Path, settings: dict, args) -> Path | None:
    """The main process prepares the checkpoint folder; the others then read what it settled on."""
    with args.main_process_first(desc="checkpoints"):
        if args.process_index == 0:
            return prepare_checkpoints(ckpt_dir, settings)
        return last_complete_checkpoint(ckpt_dir)


def train_sft(base: str, sft_path: str | Path, out_dir: str | Path, tp: TrainParams, *,
              seed: int, trust_remote_code: bool = False, allow_pickle: bool = False,
              ckpt_dir: str | Path, live_dir: str | Path, tb_dir: str | Path,
              callbacks: Iterable = ()) -> tuple[dict, dict] | None:
    """Train the adapter into `out_dir` (atomically), resuming a matching interrupted run.

    Returns (metrics, run info) on the main process, None on the other processes (train.num_processes).
    """
    start = time.time()
    sft_path, ckpt_dir = Path(sft_path), Path(ckpt_dir)
    records = read_sft(sft_path)  # fails on bad or empty input before any model is loaded
    device = train_device(tp.device)
    optim = resolve_optimizer(tp.optim, device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != tp.num_processes:
        raise param_error("train.num_processes", f"{tp.num_processes} processes set but this run has {world} (a "
                                                 "multi-node run sets train.num_processes to all its processes)")
    args = training_arguments(tp, ckpt_dir, device, optim, seed, world)
    main = args.process_index == 0
    tokenizer = models.load_tokenizer(base, trust_remote_code)
    # From the config alone, before any weights load: max_length must fit the model's context.
    models.check_context(models.load_config(base, trust_remote_code), tp.max_length, "train.max_length")
    data = build_examples(tokenizer, records, tp.max_length)
    resume = resume_point(ckpt_dir, run_settings(base, sft_path, tp, seed, trust_remote_code), args)
    model = load_policy(base, tp, device, seed, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    resume_step = json.loads((resume / "trainer_state.json").read_text())["global_step"] if resume else None
    per_step = tp.per_device_train_batch_size * tp.gradient_accumulation_steps
    normaliser = loss_normaliser([e.weight for e in data.examples], per_step, args.world_size)
    loggers = logging_callbacks(Path(live_dir), Path(tb_dir), resume_step, main)
    sampler = StepSampler([len(e) for e in data.examples], seed, step=per_step, micro=args.per_device_train_batch_size,
                          processes=args.world_size, group_by_length=tp.group_by_length)
    trainer = trainer_class()(
        model=model, args=args, train_dataset=SftDataset(data.examples, padded=sampler.pad > 0),
        data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer, normaliser=normaliser,
        sampler=sampler, callbacks=[*loggers, *callbacks])
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    tokens = int(trainer.accelerator.reduce(torch.as_tensor(trainer.input_tokens, device=args.device), "sum"))
    if not main:
        return None
    with atomic_path(out_dir) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        sort_target_modules(tmp / "adapter_config.json")
        shutil.copyfile(sft_path, tmp / paths.TRAINED_ON)  # what this model learnt from: a later round may keep it
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the adapter is the result, nothing left to resume
    losses = _logged(trainer.state.log_history, "loss")
    trainable, total = count_trainable(trainer.model)
    runtime = result.metrics.get("train_runtime") or (time.time() - start)
    metrics = {
        "loss_first": round(losses[0], 4) if losses else None, "loss_last": round(losses[-1], 4) if losses else None,
        "train_loss": round(result.training_loss, 4), "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "trainable_params": trainable, "total_params": total, "examples": len(data.examples), "cases": data.cases,
        "records": data.records, "dropped_too_long": data.dropped_too_long, "dropped_cases": data.dropped_cases,
        "weight_sum": round(data.weight_sum, 6), "loss_normaliser": round(normaliser, 6), "optimizer": optim,
        "optimizer_requested": tp.optim, "load_in_4bit": tp.load_in_4bit,
        "compute_dtype": str(models.compute_dtype(device)).removeprefix("torch."), "processes": args.world_size,
    }
    info = {"train_tokens_per_second": round(tokens / runtime, 1) if runtime else None, "device": str(device),
            "resumed_from": resume.name if resume else None}
    return metrics, info


def sort_target_modules(config: Path) -> None:
    """PEFT keeps `target_modules` as a set and saves it in set order, which changes with Python's string hashing
    from process to process: sorted, the adapter's bytes depend on its content alone."""
    data = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run(p: Params, round_name: str) -> tuple[dict, dict] | None:
    """The train stage of round `round_name`: a fresh adapter over the settled base, trained on the round's filtered
    answers (see `train_sft`)."""
    p.round(round_name)  # a known round, or the one-line error
    where = paths.round_files(round_name)
    return train_sft(models.resolve_base(paths.BASE), where["sft"], where["adapter"], p.train, seed=p.seed,
                     trust_remote_code=p.model.trust_remote_code, allow_pickle=p.model.allow_pickle,
                     ckpt_dir=where["checkpoints"], live_dir=where["live"], tb_dir=where["tensorboard"])
