"""Typed parameters: `params.yaml` loaded into dataclasses that reject unknown keys and wrong types.

One section per stage, as in DVC's example-get-started. Defaults are the original two-script workflow's
(see README); `params.yaml` sets the tiny embedded profile and every key DVC should track.

    from lawshift.params import load_params
    p = load_params("params.yaml")
    p.sample.num_samples
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lawshift.files import InputError, read_text


@dataclass
class DataParams:
    root: str = "data/lawshift-sample"
    # Articles rendered into training prompts; on the full dataset a folder's articles_original.json.
    train_articles: str = "data/lawshift-sample/criminal_law_articles.json"
    strict_articles: bool = False  # an article id missing from its articles file is an error, not a count


@dataclass
class TinyParams:
    """The offline tiny Qwen2 stand-in built by the base stage when `model.base` is `tiny`."""

    seed: int = 0
    vocab_size: int = 3000
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    # Warm-start: a short, seeded pass on templated answers with noisy terms so the base answers in format.
    warmup_steps: int = 300
    warmup_batch_size: int = 8
    warmup_lr: float = 3e-3
    # A share of warm-start answers over-state the term (gold + one of term_offsets months): the base policy is
    # biased, so its greedy answer is often wrong while sampling still finds the right term for many cases.
    term_noise: float = 0.6
    term_offsets: list[int] = field(default_factory=lambda: [2])


@dataclass
class ModelParams:
    base: str = "Qwen/Qwen2.5-0.5B-Instruct"  # hub id, local path, or `tiny`
    trust_remote_code: bool = False
    allow_pickle: bool = False  # allow pytorch_model.bin weights (unsafe pickle); safetensors otherwise
    tiny: TinyParams = field(default_factory=TinyParams)


@dataclass
class SampleParams:
    backend: str = "hf"  # hf | vllm
    num_samples: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 2048
    batch_size: int = 8  # cases per generate call
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    shard_index: int = 0
    num_shards: int = 1
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm


@dataclass
class FilterParams:
    term_tolerance: int = 0  # months; 0 = exact term
    dedup: bool = True
    weighting: str = "inverse_n"  # inverse_n | uniform


@dataclass
class TrainParams:
    load_in_4bit: bool = True
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    num_train_epochs: float = 3.0
    max_steps: int = -1  # >0 stops after this many optimizer steps (overrides epochs); -1 = train all epochs
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # gradient clipping (the Trainer default the reference ran with); 0 = off
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int = 2  # checkpoints kept in checkpoints/sft (only to resume an interrupted run)
    max_length: int = 4096
    gradient_checkpointing: bool = True
    optim: str = "paged_adamw_32bit"
    group_by_length: bool = True
    seed: int = 42
    device: str = "auto"
    num_processes: int = 1


@dataclass
class EvalParams:
    folders: list[str] = field(default_factory=list)  # empty = every folder with a known label type
    show_old_statute: bool = False  # poisoned prompts also show the original statute
    num_samples: int = 1  # >1 draws k sampled answers per case and averages success (LawShift used 3 at T=0.7)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 2048
    batch_size: int = 8
    seed: int = 42
    device: str = "auto"
    term_low: int = 36  # months: the protocol's 3-year threshold
    term_high: int = 120  # months: the protocol's 10-year threshold
    train_subset: int = 64  # training cases for the train-set exact-answer check
    backend: str = "hf"


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    sample: SampleParams = field(default_factory=SampleParams)
    filter: FilterParams = field(default_factory=FilterParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)


def _check_type(value: Any, tp: Any, where: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(path, f"expected a mapping, got {type(value).__name__}", field=where)
        return _build(tp, value, where, path)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise InputError(path, f"expected a list, got {type(value).__name__}", field=where)
        return [_check_type(v, item, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check_type(value, args[0], where, path)
    # bool is an int subclass in Python: keep `true` out of int fields and ints out of bool fields.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise InputError(path, f"expected {tp.__name__}, got {type(value).__name__} {value!r}", field=where)
    return value


def _build(cls: type, raw: dict, prefix: str, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(path, f"unknown key{hint}", field=where)
        kwargs[key] = _check_type(value, hints[key], where, path)
    return cls(**kwargs)


def params_from_dict(raw: dict | None, path: str = "params.yaml") -> Params:
    return _build(Params, raw or {}, "", path)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate a params file (yaml.safe_load; unknown keys and wrong types are errors)."""
    try:
        raw = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise InputError(path, f"invalid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise InputError(path, "expected a mapping of sections")
    return params_from_dict(raw, str(path))


def to_dict(params: Any) -> dict:
    return dataclasses.asdict(params)
