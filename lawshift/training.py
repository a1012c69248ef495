"""Weighted, completion-only QLoRA SFT on the accepted answers (the learning step of the method).

    python stages/train.py           # normally: dvc repro train
    accelerate launch --num_processes N stages/train.py   # with train.num_processes: N (one GPU per process)

Input: `outputs/sft.jsonl` from the filter stage, one accepted answer per line with the exact rendered `prompt`
it was sampled from, the `response`, its `weight` (1/n for a case with n accepted answers) and its `case_id`.
Output: the PEFT adapter (safetensors) plus the tokenizer in `models/sft/`, written atomically.

Model. By default QLoRA: the base is loaded in 4-bit NF4 with double quantisation (bitsandbytes; it runs on CPU
too), compute dtype bf16 where the device supports it and fp32 otherwise, then `prepare_model_for_kbit_training`
(gradient checkpointing with `use_reentrant=False`), then LoRA on `train.lora_target_modules`.
`train.load_in_4bit: false` gives plain LoRA on the unquantised base.

Objective. Answer i has mean token cross-entropy l_i over its trained tokens (the answer and its closing
`<|im_end|>`; prompt and padding are masked with -100, see `lawshift.examples`) and weight w_i. Over the training
set (N answers, W = sum_i w_i) the objective is

    L = sum_i w_i * l_i / W.

With the filter's weights w_i = 1/n_c, W is the number of cases C and L = (1/C) * sum_c mean_{i in c} l_i: every
case counts 1/C, whether it has 1 accepted answer or 8. The Trainer sees, for each micro-batch m,

    loss_m = sum_{i in m} w_i * l_i / Z,   Z = (W / N) * min(B, N) / P,

B = per_device_train_batch_size * gradient_accumulation_steps * P answers per optimizer step and P processes
(DDP averages the P gradients). Z is one constant for the whole run and the Trainer sums micro-batch gradients
without dividing by the accumulation steps (`loss_is_scaled_for_ga = True`), so:

* an answer's influence never depends on its batch mates, the micro-batch split or the accumulation;
* summed over an epoch, the optimizer steps' gradients are exactly N / min(B, N) times the gradient of L;
* a uniformly drawn step has expected loss L; when the whole set fits one step (N <= B) its gradient is exactly
  the gradient of L. A short last step carries proportionally less (it holds fewer answers).

A normaliser per step (e.g. the weight sum of the step) would instead make an answer's effective weight depend on
which other answers share its step, and case equality would hold only within steps. The *logged* loss of a step
is its weighted mean, sum_{i in step} w_i * l_i / sum_{i in step} w_i (the loss above rescaled by Z / W_step, after
the backward pass), so the curve reads as a loss and a short last step does not show as a dip.

Length. An answer whose prompt + response + `<|im_end|>` is longer than `train.max_length` tokens is dropped, never
truncated (a cut answer would train a label that was never the answer), and counted in `dropped_too_long`. The
remaining answers of its case are rescaled so the case keeps its total weight; a case whose answers are all too
long is dropped (`dropped_cases`). If nothing is left, that is an error naming `train.max_length`.

Optimizer. `paged_adamw_32bit` (bitsandbytes) pages optimizer state through CUDA unified memory, which exists on
CUDA only; on any other device the stage uses PyTorch's `adamw_torch` (the same 32-bit AdamW update, unpaged;
bitsandbytes itself would silently drop the paging there) and records the optimizer actually used in
`metrics/train.json` (`optimizer`, beside `optimizer_requested`).

Checkpoints and resume. Checkpoints go to `checkpoints/sft/` (git-ignored, not a DVC output), every
`train.save_steps` optimizer steps, keeping `train.save_total_limit`. `fingerprint.json` there records a hash of
the training data, the base model files, and every train param that changes the result. A rerun with the same
fingerprint resumes from the newest complete checkpoint (one with `trainer_state.json`); checkpoints from another
fingerprint are deleted, never resumed. After a successful run the checkpoints are removed: the adapter is in
`models/sft/` and a rerun trains from scratch.

Logging. TensorBoard event files go to `logs/train/` (git-ignored); DVCLive writes `dvclive/train/` through
transformers' `DVCLiveCallback` with `dvcyaml=False` (dvc.yaml is never rewritten) and `save_dvc_exp=False`, at
x = the optimizer step: `dvclive/train/plots/metrics/loss.tsv` and `learning_rate.tsv` are the loss and lr curves
that `dvc.yaml` declares as plots. On resume both logs drop what was logged after the resumed checkpoint.

Metrics (`metrics/train.json`): `loss_first` / `loss_last` (the logged step loss of the first step and the mean of
the last logging window, which always ends at the final step), `train_loss` (mean over this run's steps), `steps`,
`train_tokens_per_second` (non-padding input tokens, all processes, over the Trainer's runtime),
`trainable_params`, `examples`, `cases`, `dropped_too_long`, `weight_sum`, `loss_normaliser` (Z), the optimizer,
`resumed_from` and `wall_seconds`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lawshift import models
from lawshift.examples import Example, collate, encode_example, per_sequence_loss
from lawshift.files import InputError, atomic_path, read_jsonl, write_text

log = logging.getLogger(__name__)

FILTER_METRICS = "metrics/filter.json"
FINGERPRINT = "fingerprint.json"
PAGED_OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit")
CPU_FALLBACK_OPTIMIZER = "adamw_torch"
# Params that only change bookkeeping, not the trained weights: a change keeps checkpoints resumable.
BOOKKEEPING_PARAMS = ("logging_steps", "save_steps", "save_total_limit")


# ---- data ----------------------------------------------------------------------------------------------------


@dataclass
class SftRecord:
    case_id: str
    prompt: str
    response: str
    weight: float


def _field(rec: dict, name: str, kind: type, path: Path, line: int):
    value = rec.get(name)
    if name not in rec:
        raise InputError(path, "missing", line=line, field=name)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise InputError(path, f"must be a positive finite number, got {value!r}", line=line, field=name)
        return float(value)
    if not isinstance(value, kind) or not value.strip():
        raise InputError(path, f"must be a non-empty {kind.__name__}, got {value!r}"[:120], line=line, field=name)
    return value


def read_sft(path: str | Path) -> list[SftRecord]:
    """Validated records of `outputs/sft.jsonl`; no records at all is an error pointing at the filter's metrics."""
    path = Path(path)
    records = []
    for line, rec in read_jsonl(path):
        if not isinstance(rec, dict):
            raise InputError(path, f"expected an object, got {type(rec).__name__}", line=line)
        records.append(SftRecord(case_id=_field(rec, "case_id", str, path, line),
                                 prompt=_field(rec, "prompt", str, path, line),
                                 response=_field(rec, "response", str, path, line),
                                 weight=_field(rec, "weight", float, path, line)))
    if not records:
        raise InputError(path, f"no accepted answers to train on: the filter accepted none (see {FILTER_METRICS} "
                               "for per-case counts; a stronger base or more samples per case may help)")
    return records


@dataclass
class TrainData:
    examples: list[Example]
    records: int
    cases: int
    dropped_too_long: int
    dropped_cases: int

    @property
    def weight_sum(self) -> float:
        return sum(e.weight for e in self.examples)


def build_examples(tokenizer, records: list[SftRecord], max_length: int,
                   params_file: str = "params.yaml") -> TrainData:
    """Encode (prompt masked, answer + `<|im_end|>` trained); drop over-long answers and keep case totals."""
    kept: dict[str, list[Example]] = defaultdict(list)
    case_total: dict[str, float] = defaultdict(float)
    dropped = 0
    for rec in tqdm(records, desc="encode", unit="answer", leave=False):
        case_total[rec.case_id] += rec.weight
        ex = encode_example(tokenizer, rec.prompt, rec.response, rec.weight, rec.case_id)
        if len(ex) > max_length:
            dropped += 1
        else:
            kept[rec.case_id].append(ex)
    if not kept:
        raise InputError(params_file, f"all {len(records)} accepted answers are longer than {max_length} tokens",
                         field="train.max_length")
    examples = []
    for case_id, exs in kept.items():
        # An answer dropped for length must not shrink its case's share: rescale the case's remaining answers.
        scale = case_total[case_id] / sum(e.weight for e in exs)
        examples += [Example(e.input_ids, e.labels, e.weight * scale, e.group) for e in exs]
    return TrainData(examples, len(records), len(kept), dropped, len(case_total) - len(kept))


class SftDataset(torch.utils.data.Dataset):
    """Examples as mappings, so the Trainer's length-grouped sampler can read `input_ids` lengths."""

    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight, "group": e.group}


@dataclass
class Collator:
    pad_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate([Example(**f) for f in features], self.pad_id)


# ---- objective -----------------------------------------------------------------------------------------------


def loss_normaliser(weights: Iterable[float], per_step: int, processes: int = 1) -> float:
    """Z = (W / N) * min(B, N) / P, with B = `per_step` answers per optimizer step over all P processes."""
    weights = list(weights)
    n = len(weights)
    return sum(weights) / n * min(per_step, n) / processes


def weighted_loss(per_seq: torch.Tensor, weights: torch.Tensor, normaliser: float) -> torch.Tensor:
    """sum_i w_i * l_i / Z for one micro-batch (l_i: mean token loss of answer i)."""
    return (weights.to(per_seq.dtype) * per_seq).sum() / normaliser


def _trainer_class():
    from transformers import Trainer

    class WeightedSFTTrainer(Trainer):
        """Trainer whose loss is `weighted_loss` with one fixed normaliser for the whole run (module docstring)."""

        # The micro-batch losses are already on the step's scale: the Trainer must not divide by accumulation.
        loss_is_scaled_for_ga = True

        def __init__(self, *args, normaliser: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.normaliser = normaliser
            self.input_tokens = 0  # non-padding tokens through forward/backward in this process, this run
            self.step_weight = 0.0

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            # The Trainer fetches all micro-batches of an optimizer step up front: note the step's weight sum.
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            self.step_weight = float(sum(b["weights"].sum() for b in batches)) if batches else 0.0
            return batches, num_items

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)  # backward ran on sum w*l / Z
            # What gets logged is the step's weighted mean loss, comparable from step to step (a short last step
            # would otherwise show a dip that is only its smaller share of the gradient).
            return loss * (self.normaliser / self.step_weight) if self.step_weight else loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # num_items_in_batch (the Trainer's token count) is deliberately unused: the weighting is per answer.
            inputs = dict(inputs)
            labels, weights = inputs.pop("labels"), inputs.pop("weights")
            outputs = model(**inputs, use_cache=False)
            loss = weighted_loss(per_sequence_loss(outputs.logits, labels), weights, self.normaliser)
            if model.training:  # kept on the device: no sync per micro-batch
                self.input_tokens += inputs["attention_mask"].sum().detach()
            return (loss, outputs) if return_outputs else loss

    return WeightedSFTTrainer


# ---- model ---------------------------------------------------------------------------------------------------


def resolve_optimizer(requested: str, device: torch.device) -> str:
    """Paged bitsandbytes optimizers need CUDA unified memory; elsewhere use PyTorch's AdamW (module docstring)."""
    if requested in PAGED_OPTIMIZERS and device.type != "cuda":
        return CPU_FALLBACK_OPTIMIZER
    return requested


def load_policy(base: str, tp, device: torch.device, *, trust_remote_code: bool = False, allow_pickle: bool = False):
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
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
    set_seed(tp.seed)  # LoRA's A matrices are drawn here
    config = LoraConfig(r=tp.lora_r, lora_alpha=tp.lora_alpha, lora_dropout=tp.lora_dropout,
                        target_modules=list(tp.lora_target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise InputError("params.yaml", str(err).splitlines()[0], field="train.lora_target_modules") from None


def count_trainable(model) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT counts a packed 4-bit weight as its unpacked size."""
    return model.get_nb_trainable_parameters()


# ---- checkpoints ---------------------------------------------------------------------------------------------


def _digest_tree(path: Path, h) -> None:
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)


def fingerprint(base: str, sft_path: Path, tp, trust_remote_code: bool = False) -> str:
    """Hash of what determines the trained weights: data, base model files (or hub id) and train params."""
    h = hashlib.sha256()
    params = {k: v for k, v in asdict(tp).items() if k not in BOOKKEEPING_PARAMS}
    h.update(json.dumps({"params": params, "trust_remote_code": trust_remote_code}, sort_keys=True).encode())
    _digest_tree(Path(sft_path), h)
    if Path(base).exists():
        _digest_tree(Path(base), h)
    else:
        h.update(base.encode())  # a hub id, read from the local cache
    return h.hexdigest()[:16]


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


def prepare_checkpoints(ckpt_dir: Path, fp: str) -> Path | None:
    """The checkpoint to resume from, or None. Checkpoints of another fingerprint are deleted, never resumed."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / FINGERPRINT
    if ckpt_dir.exists():
        content = _read_json_or_none(marker)
        old = content.get("fingerprint") if isinstance(content, dict) else None
        if old == fp:
            return last_complete_checkpoint(ckpt_dir)
        log.warning("discarding checkpoints in %s: made with other data or settings (%s != %s)", ckpt_dir, old, fp)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    write_text(marker, json.dumps({"fingerprint": fp}) + "\n")
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


def logging_callbacks(live_dir: Path, tb_dir: Path, resume_step: int | None) -> list:
    """DVCLive at x = optimizer step (dvc.yaml untouched) and TensorBoard; both continue a resumed run.

    The final step is always logged, so `loss_last` is the mean loss of the last logging window.
    """
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
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    if resume_step is None:
        shutil.rmtree(tb_dir, ignore_errors=True)
    else:
        truncate_live(live_dir, resume_step)
    live = Live(dir=str(live_dir), resume=resume_step is not None, dvcyaml=False, save_dvc_exp=False, report=None)
    # purge_step hides events a resumed run logs again
    writer = SummaryWriter(log_dir=str(tb_dir), purge_step=None if resume_step is None else resume_step + 1)
    return [LogFinalStep(), StepDVCLiveCallback(live=live), TensorBoardCallback(tb_writer=writer)]


# ---- run -----------------------------------------------------------------------------------------------------


def training_arguments(tp, ckpt_dir: Path, device: torch.device, optim: str):
    from transformers import TrainingArguments

    bf16 = models.compute_dtype(device) == torch.bfloat16
    return TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=tp.num_train_epochs, max_steps=tp.max_steps,
        per_device_train_batch_size=tp.per_device_train_batch_size,
        gradient_accumulation_steps=tp.gradient_accumulation_steps, learning_rate=tp.learning_rate,
        warmup_steps=tp.warmup_steps, lr_scheduler_type=tp.lr_scheduler_type, weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm, optim=optim, bf16=bf16, use_cpu=device.type == "cpu",
        activation_checkpointing=tp.gradient_checkpointing, activation_checkpointing_kwargs={"use_reentrant": False},
        logging_strategy="steps", logging_steps=tp.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=tp.save_steps, save_total_limit=tp.save_total_limit,
        train_sampling_strategy="group_by_length" if tp.group_by_length else "random",
        remove_unused_columns=False,  # `weights` must reach compute_loss
        report_to="none",  # DVCLive and TensorBoard are passed as callbacks, exactly once each
        seed=tp.seed, data_seed=tp.seed, dataloader_num_workers=0,
    )


def _logged(history: list[dict], key: str) -> list[float]:
    return [h[key] for h in history if key in h]


def train_device(name: str) -> torch.device:
    """`pick_device`, and under `accelerate launch` each process's own GPU."""
    device = models.pick_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def resume_point(ckpt_dir: Path, fp: str, args) -> Path | None:
    """The main process prepares the checkpoint folder; the others then read what it settled on."""
    with args.main_process_first(desc="checkpoints"):
        if args.process_index == 0:
            return prepare_checkpoints(ckpt_dir, fp)
        return last_complete_checkpoint(ckpt_dir)


def train_sft(base: str, sft_path: str | Path, out_dir: str | Path, tp, *, trust_remote_code: bool = False,
              allow_pickle: bool = False, ckpt_dir: str | Path = "checkpoints/sft", live_dir: str | Path =
              "dvclive/train", tb_dir: str | Path = "logs/train", callbacks: Iterable = (),
              params_file: str = "params.yaml") -> dict | None:
    """Train the adapter into `out_dir` (atomically), resuming a matching interrupted run.

    Returns the metrics on the main process, None on the others (`accelerate launch --num_processes N`).
    """
    start = time.time()
    sft_path, ckpt_dir = Path(sft_path), Path(ckpt_dir)
    records = read_sft(sft_path)  # fails on bad or empty input before any model is loaded
    device = train_device(tp.device)
    optim = resolve_optimizer(tp.optim, device)
    args = training_arguments(tp, ckpt_dir, device, optim)
    if args.world_size != tp.num_processes:
        raise InputError(params_file, f"{tp.num_processes} processes set but this run has {args.world_size}; "
                                      f"start it as accelerate launch --num_processes {tp.num_processes} "
                                      "stages/train.py", field="train.num_processes")
    main = args.process_index == 0
    tokenizer = models.load_tokenizer(base, trust_remote_code)
    # From the config alone, before any weights load: max_length must fit the model's context.
    models.check_context(models.load_config(base, trust_remote_code), tp.max_length, "train.max_length", params_file)
    data = build_examples(tokenizer, records, tp.max_length, params_file)
    model = load_policy(base, tp, device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    resume = resume_point(ckpt_dir, fingerprint(base, sft_path, tp, trust_remote_code), args)
    resume_step = json.loads((resume / "trainer_state.json").read_text())["global_step"] if resume else None
    per_step = tp.per_device_train_batch_size * tp.gradient_accumulation_steps * args.world_size
    normaliser = loss_normaliser([e.weight for e in data.examples], per_step, args.world_size)
    loggers = logging_callbacks(Path(live_dir), Path(tb_dir), resume_step) if main else []
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=SftDataset(data.examples), data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer, normaliser=normaliser, callbacks=[*loggers, *callbacks])
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    tokens = int(trainer.accelerator.reduce(torch.as_tensor(trainer.input_tokens, device=args.device), "sum"))
    if not main:
        return None
    with atomic_path(out_dir) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the adapter is the result, nothing left to resume
    losses = _logged(trainer.state.log_history, "loss")
    trainable, total = count_trainable(trainer.model)
    runtime = result.metrics.get("train_runtime") or (time.time() - start)
    return {
        "loss_first": round(losses[0], 4) if losses else None, "loss_last": round(losses[-1], 4) if losses else None,
        "train_loss": round(result.training_loss, 4), "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "train_tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "trainable_params": trainable, "total_params": total, "examples": len(data.examples), "cases": data.cases,
        "records": data.records, "dropped_too_long": data.dropped_too_long, "dropped_cases": data.dropped_cases,
        "weight_sum": round(data.weight_sum, 6), "loss_normaliser": round(normaliser, 6), "optimizer": optim,
        "optimizer_requested": tp.optim, "load_in_4bit": tp.load_in_4bit, "device": str(device),
        "compute_dtype": str(models.compute_dtype(device)).removeprefix("torch."), "processes": args.world_size,
        "resumed_from": resume.name if resume else None, "wall_seconds": round(time.time() - start, 2),
    }
