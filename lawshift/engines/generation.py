"""What every generation backend takes and returns, and the random stream of every (case, answer).

    settings = GenerationSettings(n=8, temperature=0.8, top_p=0.95, max_new_tokens=256)
    outs = backend.generate(prompts, settings, [stream_seed(0, i) for i in range(len(prompts))])
    outs[i].completions[j].text   # j-th answer to prompt i, drawn from stream stream_seed(0, i) + j

`lawshift.engines.backends.make_backend` builds a backend: `hf` (lawshift/engines/hf_backend.py) or `vllm`
(lawshift/engines/vllm_backend.py). A case's streams never depend on its call, batch, shard or a resume; its answers'
bytes are as independent only where the logits are too (docs/reproducibility.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# A run's streams fill the 32-bit seed space: 2**20 cases of 2**12 answers each. 32 bits, because torch's CPU
# generator (Mersenne Twister) keeps only a seed's low 32 bits: wider seeds that differ above them draw alike.
SEED_STRIDE = 1 << 12  # answers one case may draw: its streams are stream_seed(seed, i) + 0 .. SEED_STRIDE - 1
MAX_CASES = 1 << 20  # case indices a run may have
SEED_SPACE = 1 << 32


def run_offset(seed: int, family: str = "") -> int:
    """Where run `seed`'s streams start in the 32-bit space: a hash, so that nearby run seeds start far apart.
    `family` names a further set of streams of the same run (a later round's sampling: `round2`, ...)."""
    key = f"lawshift-streams:{seed}" + (f":{family}" if family else "")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def stream_seed(seed: int, index: int, family: str = "") -> int:
    """The first random stream of case `index` under run seed `seed`; its answer j draws from this + j.

    Cases sit SEED_STRIDE streams apart from the run's offset, modulo 2**32, so for any j < SEED_STRIDE no two
    (case, answer) pairs of one run share a stream under vLLM's child rule (seed + j), nor under the low 32 bits a
    CPU generator reads. It depends on nothing else: batch size, chunking and sharding leave it unchanged.
    """
    if not 0 <= index < MAX_CASES:
        raise ValueError(f"case index {index} outside [0, {MAX_CASES})")
    return (run_offset(seed, family) + index * SEED_STRIDE) % SEED_SPACE


@dataclass(frozen=True)
class GenerationSettings:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int  # generated tokens, eos included when reached
    finished: bool  # stopped at eos rather than at max_new_tokens


@dataclass(frozen=True)
class PromptResult:
    prompt_tokens: int
    completions: list[Completion]


@dataclass(frozen=True)
class BackendSpec:
    """What builds a backend (backends.make_backend's arguments): a Ray worker builds its own from it."""

    kind: str  # hf | vllm
    base: str
    device: str
    seed: int
    max_model_len: int
    adapter: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    batch_invariant: bool = False


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], settings: GenerationSettings, seeds: Sequence[int]) -> list[PromptResult]:
        """N answers to each prompt; `seeds[i]` is prompt i's first stream (its answers use seeds[i] + j)."""
        ...


def call_size(backend: str, batch_size: int, chunk_size: int, count: int, workers: int = 1) -> int:
    """Prompts per generate call out of `count`: one padded device batch for `hf` (one per worker of a pool); for
    `vllm` a whole chunk (0: all of them), which vLLM's scheduler and prefix cache handle better than small calls."""
    if backend == "vllm":
        return chunk_size or max(count, 1)
    return batch_size * workers
