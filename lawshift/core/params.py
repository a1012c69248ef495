"""Typed parameters: `params.yaml` loaded into dataclasses that reject unknown keys and wrong types.

One section per stage, as in DVC's example-get-started. Defaults are the original two-script workflow's
(docs/pipeline.md); `params.yaml` sets the tiny embedded profile and every key DVC should track.

    from lawshift.core.params import load_params
    p = load_params("params.yaml")
    p.sample.num_samples

Every rule a value must satisfy (ranges, choices, relations between keys) lives here, in each section's `problems`,
and runs when the params load: a stage never starts with a value it cannot use, and library functions take the
typed params without checking or re-defaulting them. A broken rule is an `InputError` naming params.yaml and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lawshift.core.files import InputError, read_text
from lawshift.core.typedconfig import build

PARAMS_FILE = "params.yaml"  # what every stage reads (DVC's default params file)
SAMPLE_BACKENDS = ("hf", "vllm")
EVAL_BACKENDS = ("hf", "vllm")
WEIGHTINGS = ("inverse_n", "uniform")
REWARDS = ("binary", "partial")  # grpo.reward (lawshift/rl/reward.py)
GRPO_LOSSES = ("grpo", "dr_grpo", "bnpo", "dapo")  # TRL's loss_type
MAX_DRAWS = 1 << 12  # answers one case may draw: its random streams (lawshift.engines.generation.SEED_STRIDE)


def add_shard_options(ap: argparse.ArgumentParser, section: str) -> None:
    """A stage's `--shard-index` / `--num-shards`: one shard of a run split by hand, overriding `<section>.*`."""
    ap.add_argument("--shard-index", type=int, help=f"this process's shard (overrides {section}.shard_index)")
    ap.add_argument("--num-shards", type=int, help=f"shards of the run (overrides {section}.num_shards)")


def shard_overrides(args: argparse.Namespace) -> dict:
    """The shard options a stage was given, as overrides of its params section."""
    return {k: v for k in ("shard_index", "num_shards") if (v := getattr(args, k)) is not None}


def param_error(key: str, message: str) -> InputError:
    """A bad value in the params file, as the one-line error every stage prints."""
    return InputError(PARAMS_FILE, message, field=key)


def _at_least(obj, low, *names) -> list[tuple[str, str]]:
    return [(n, f"must be >= {low}, got {getattr(obj, n)!r}") for n in names if getattr(obj, n) < low]


def _memory_share(obj) -> list[tuple[str, str]]:
    share = obj.gpu_memory_utilization
    return [] if 0 < share <= 1 else [("gpu_memory_utilization", f"must be in (0, 1], got {share}")]


@dataclass
class DataParams:
    root: str = "data/lawshift-sample"
    # Articles rendered into training prompts; on the full dataset a folder's articles_original.json.
    train_articles: str = "data/lawshift-sample/criminal_law_articles.json"
    strict_articles: bool = False  # an article id missing from its articles file is an error, not a count


@dataclass
class TinyParams:
    """The offline tiny Qwen2 stand-in built by the base stage when `model.base` is `tiny`."""

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

    def problems(self) -> list[tuple[str, str]]:
        out = _at_least(self, 1, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                        "warmup_batch_size") + _at_least(self, 0, "warmup_steps")
        if not 0 <= self.term_noise <= 1:
            out.append(("term_noise", f"must be in [0, 1], got {self.term_noise}"))
        return out


@dataclass
class ModelParams:
    base: str = "Qwen/Qwen2.5-0.5B-Instruct"  # hub id, local path, or `tiny`
    # A hub id's branch, tag or commit in the local Hugging Face cache; null = what the cache's `main` points to.
    # Stage `base` records the commit it resolved and every file's sha256 in models/base/base.json.
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False  # allow pytorch_model.bin weights (unsafe pickle); safetensors otherwise
    tiny: TinyParams = field(default_factory=TinyParams)


@dataclass
class SampleParams:
    backend: str = "hf"  # hf | vllm
    prompt: str = "prompts/judge.yaml"  # the judge prompt file (lawshift/task/prompts.py)
    num_samples: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 2048
    batch_size: int = 8  # hf: cases per generate call (one padded batch)
    chunk_size: int = 1024  # vllm: cases per LLM.generate call, saved when it returns; 0 = the whole shard
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    shard_index: int = 0
    num_shards: int = 1
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm
    batch_invariant: bool = False  # vllm: VLLM_BATCH_INVARIANT=1, answers bitwise independent of batching (slower)
    workers: int = 1  # >1: a Ray pool of this many engines, this stage its driver (docs/scaling.md)
    cluster: str = ""  # the Ray cluster to join; "" = RAY_ADDRESS if set, else a local Ray for the workers
    ship_models: bool = False  # the workers get base and adapter as bytes (nodes without a shared filesystem)
    # Difficulty-aware resampling (DART-Math): after the first num_samples draws, a case with fewer than
    # min_accepted accepted answers draws num_samples more, again and again, up to max_samples draws in all.
    min_accepted: int = 0  # 0 = off: every case gets num_samples draws
    max_samples: int = 0  # draws per case at most, the first num_samples included; 0 = num_samples

    @property
    def draw_limit(self) -> int:
        """The most answers one case may get."""
        return max(self.max_samples, self.num_samples) if self.min_accepted else self.num_samples

    def problems(self) -> list[tuple[str, str]]:
        out = _at_least(self, 1, "num_samples", "max_new_tokens", "batch_size", "num_shards", "tensor_parallel_size",
                        "workers")
        out += _at_least(self, 0, "chunk_size", "min_accepted", "max_samples") + _memory_share(self)
        if self.max_samples and not self.num_samples <= self.max_samples <= MAX_DRAWS:
            out.append(("max_samples", f"must be 0 or in [num_samples={self.num_samples}, {MAX_DRAWS}], "
                                       f"got {self.max_samples}"))
        elif self.min_accepted > 0 and self.max_samples <= self.num_samples:
            out.append(("max_samples", f"min_accepted {self.min_accepted} asks for more draws, but max_samples "
                                       f"{self.max_samples} allows none beyond num_samples={self.num_samples}"))
        if self.backend not in SAMPLE_BACKENDS:
            out.append(("backend", f"unknown backend {self.backend!r}, expected one of {SAMPLE_BACKENDS}"))
        if self.temperature < 0:
            out.append(("temperature", f"must be >= 0, got {self.temperature}"))
        if not 0 < self.top_p <= 1:
            out.append(("top_p", f"must be in (0, 1], got {self.top_p}"))
        if not 0 <= self.shard_index < self.num_shards:
            out.append(("shard_index", f"must be in [0, num_shards={self.num_shards}), got {self.shard_index}"))
        return out


@dataclass
class FilterParams:
    term_tolerance: int = 0  # months; 0 = exact term
    dedup: bool = True
    weighting: str = "inverse_n"  # inverse_n | uniform

    def problems(self) -> list[tuple[str, str]]:
        out = _at_least(self, 0, "term_tolerance")
        if self.weighting not in WEIGHTINGS:
            out.append(("weighting", f"unknown weighting {self.weighting!r}, expected one of {WEIGHTINGS}"))
        return out


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
    save_total_limit: int = 2  # checkpoints kept in checkpoints/<round> (only to resume an interrupted run)
    max_length: int = 4096
    gradient_checkpointing: bool = True
    optim: str = "paged_adamw_32bit"
    group_by_length: bool = True
    device: str = "auto"
    num_processes: int = 1

    def problems(self) -> list[tuple[str, str]]:
        return _at_least(self, 1, "lora_r", "per_device_train_batch_size", "gradient_accumulation_steps",
                         "max_length", "logging_steps", "save_steps", "num_processes")


@dataclass
class EvalParams:
    backend: str = "hf"  # hf | vllm (the sft model: base + adapter through a LoRARequest)
    prompt: str = "prompts/judge.yaml"  # the judge prompt file (lawshift/task/prompts.py)
    folders: list[str] = field(default_factory=list)  # empty = every folder with a known label type
    show_old_statute: bool = False  # poisoned prompts also show the original statute
    num_samples: int = 1  # >1 draws k sampled answers per case and averages success (LawShift used 3 at T=0.7)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 2048
    batch_size: int = 8
    device: str = "auto"
    term_low: int = 36  # months: the protocol's 3-year threshold
    term_high: int = 120  # months: the protocol's 10-year threshold
    train_subset: int = 64  # training cases for the train-set exact-answer check
    shard_index: int = 0  # with num_shards > 1 this process evaluates prompts shard_index, +num_shards, ...
    num_shards: int = 1  # then `python -m lawshift.evaluate.evalmerge` joins the shards (docs/scaling.md)
    chunk_size: int = 1024  # vllm: prompts per LLM.generate call, saved when it returns; 0 = all of them
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm
    batch_invariant: bool = False  # vllm: VLLM_BATCH_INVARIANT=1, answers bitwise independent of batching (slower)
    workers: int = 1  # >1: a Ray pool of this many engines, this stage its driver (docs/scaling.md)
    cluster: str = ""  # the Ray cluster to join; "" = RAY_ADDRESS if set, else a local Ray for the workers
    ship_models: bool = False  # the workers get base and adapter as bytes (nodes without a shared filesystem)

    def problems(self) -> list[tuple[str, str]]:
        out = _at_least(self, 1, "num_samples", "batch_size", "max_new_tokens", "tensor_parallel_size", "workers",
                        "num_shards")
        out += _at_least(self, 0, "train_subset", "chunk_size") + _memory_share(self)
        if self.temperature < 0:
            out.append(("temperature", f"must be >= 0 (0 = greedy), got {self.temperature}"))
        if not 0 < self.top_p <= 1:
            out.append(("top_p", f"must be in (0, 1], got {self.top_p}"))
        if not 0 <= self.term_low <= self.term_high:
            out.append(("term_high", f"needs 0 <= term_low <= term_high, got {self.term_low}, {self.term_high}"))
        if self.backend not in EVAL_BACKENDS:
            out.append(("backend", f"unknown backend {self.backend!r}, expected one of {EVAL_BACKENDS}"))
        if not 0 <= self.shard_index < self.num_shards:
            out.append(("shard_index", f"must be in [0, num_shards={self.num_shards}), got {self.shard_index}"))
        return out


@dataclass
class GrpoParams:
    """The GRPO arm (lawshift/rl/); its group, prompt, T, top_p, length and LoRA shape: sample.*, train.lora_*."""

    reward: str = "binary"  # binary: the filter's decision; partial: charge and term credit (docs/method.md)
    budget: int = 0  # answers to generate; 0 = as many as all rounds sampled (metrics/<round>/sample.json)
    batch_size: int = 64  # answers per optimizer step: batch_size / sample.num_samples cases
    learning_rate: float = 1e-4
    loss_type: str = "grpo"  # TRL's; its default dapo normalises over tokens, grpo per answer as train does
    beta: float = 0.0  # KL to the base (0: no reference model)
    charge_weight: float = 0.5  # partial: the credit of a right charge; the rest is the term's
    load_in_4bit: bool = False  # a GPU without vLLM: 4-bit base (docs/gpu.md)
    use_vllm: bool = False  # a GPU: vLLM colocate on a bf16 base
    device: str = "auto"
    logging_steps: int = 1
    save_steps: int = 5  # checkpoints/grpo, each with the answers and tokens paid for so far
    save_total_limit: int = 2

    def problems(self) -> list[tuple[str, str]]:
        out = _at_least(self, 0, "budget", "beta") + _at_least(self, 1, "batch_size", "logging_steps", "save_steps")
        for key, value, allowed in (("reward", self.reward, REWARDS), ("loss_type", self.loss_type, GRPO_LOSSES)):
            if value not in allowed:
                out.append((key, f"unknown {key} {value!r}, expected one of {allowed}"))
        if not 0 <= self.charge_weight <= 1:
            out.append(("charge_weight", f"must be in [0, 1], got {self.charge_weight}"))
        if self.load_in_4bit and self.use_vllm:
            out.append(("use_vllm", "vLLM's weight sync merges LoRA into a 4-bit base, lossy: one or the other"))
        return out


@dataclass
class RoundParams:
    """One round of sample -> filter -> train (ReST-EM / expert iteration)."""

    # The model that samples this round: `base` for round1, the round before it otherwise (round<k-1>). dvc.yaml
    # cannot compute k-1, so each round names it; the params check accepts nothing else.
    policy: str = "base"
    # Also train on the answers the policy's model was trained on (expert iteration: a round's data grows);
    # false = this round's accepted answers only (ReST-EM). Either way the adapter starts afresh from the base.
    keep_previous: bool = False


def _round_problems(rounds: dict[str, RoundParams]) -> list[tuple[str, str]]:
    if not rounds:
        return [("rounds", "needs at least one round (round1)")]
    out = []
    for k, (name, rp) in enumerate(rounds.items(), start=1):
        if name != f"round{k}":
            out.append((f"rounds.{name}", f"round {k} must be named round{k}"))
        elif rp.policy != (want := "base" if k == 1 else f"round{k - 1}"):
            out.append((f"rounds.{name}.policy", f"round{k} samples from {want}, got {rp.policy!r}"))
    return out


@dataclass
class Params:
    # Every random choice of every stage follows this one seed: the tiny base's initialisation and warm-start,
    # sampling, LoRA initialisation and data order, eval's training subset and draws. A spread over seeds:
    # `make seeds` (lawshift/experiments/seeds.py).
    seed: int = 0
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    sample: SampleParams = field(default_factory=SampleParams)
    filter: FilterParams = field(default_factory=FilterParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)
    grpo: GrpoParams = field(default_factory=GrpoParams)
    # Rounds in order (round1, round2, ...); the original workflow is one round.
    rounds: dict[str, RoundParams] = field(default_factory=lambda: {"round1": RoundParams()})

    def problems(self) -> list[tuple[str, str]]:
        return _round_problems(self.rounds)

    def round(self, name: str, path: str | Path = PARAMS_FILE) -> RoundParams:
        """Round `name`'s params; a name that is not a round is the one-line error naming the file and `rounds`."""
        if name not in self.rounds:
            raise InputError(path, f"no round {name!r}; the rounds are {list(self.rounds)}", field="rounds")
        return self.rounds[name]


def params_from_dict(raw: dict | None, path: str = PARAMS_FILE) -> Params:
    return build(Params, raw or {}, "", path)


def load_params(path: str | Path = PARAMS_FILE, overrides: dict | None = None) -> Params:
    """Load and validate a params file (yaml.safe_load; unknown keys, wrong types and broken rules are errors).

    `overrides` ({section: {key: value}}, e.g. a shard index from the command line) replace values of the file
    before validation, so they obey the same rules.
    """
    try:
        raw = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise InputError(path, f"invalid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise InputError(path, "expected a mapping of sections")
    raw = dict(raw or {})
    for section, values in (overrides or {}).items():
        raw[section] = {**(raw.get(section) or {}), **values}
    return params_from_dict(raw, str(path))


def to_dict(params: Any) -> dict:
    return dataclasses.asdict(params)
