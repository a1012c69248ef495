"""vLLM generation backend (GPU machines: `make gpu-venv`; selected by `sample.backend: vllm` / `eval.backend: vllm`).

A whole chunk of cases goes to one `LLM.generate`, one `SamplingParams(n=N, seed=stream)` per prompt (vLLM seeds
child j with seed + j), prompts without special tokens; a fine-tuned model is the base plus its adapter through a
`LoRARequest`. vLLM is imported only when this backend is built. The pure parts are tested without a GPU
(tests/engines/test_vllm_backend.py), the whole path against a stand-in `vllm` (tests/vllm_standin). docs/gpu.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from lawshift.engines.generation import Completion, GenerationSettings, PromptResult

# Prompts arrive chat-rendered, so the tokenizer adds nothing (vLLM's default for `generate` adds special tokens: a
# BOS-adding tokenizer would give every prompt one token more than the stage counted, and cut its longest one).
TOKENIZATION = {"add_special_tokens": False}
# The ranks vLLM's LoRA kernels are built for (vllm.config.lora.MaxLoRARanks); `max_lora_rank` must be one of them.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def sampling_kwargs(settings: GenerationSettings, seed: int) -> dict:
    """Arguments for `vllm.SamplingParams`: greedy is temperature 0 with a single answer repeated n times."""
    if settings.greedy:
        return {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": settings.max_new_tokens, "seed": seed}
    return {"n": settings.n, "temperature": settings.temperature, "top_p": settings.top_p,
            "max_tokens": settings.max_new_tokens, "seed": seed}


def request_kwargs(settings: GenerationSettings, seeds: Sequence[int]) -> list[dict]:
    """One SamplingParams' arguments per prompt, each with its case's seed."""
    return [sampling_kwargs(settings, seed) for seed in seeds]


def lora_rank(adapter: str | Path) -> int:
    """The smallest rank vLLM accepts that holds the adapter's (adapter_config.json `r`)."""
    r = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))["r"]
    fits = [k for k in VLLM_LORA_RANKS if k >= r]
    if not fits:
        raise ValueError(f"{adapter}: LoRA rank {r} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}")
    return fits[0]


def load_format(allow_pickle: bool) -> str:
    """`model.allow_pickle` as vLLM's `load_format`: "auto" falls back to pickle *.bin weights, so only with it."""
    return "auto" if allow_pickle else "safetensors"


def map_outputs(prompts: Sequence[str], outputs: Sequence, settings: GenerationSettings) -> list[PromptResult]:
    """vLLM RequestOutputs (same order as the prompts) -> one PromptResult per prompt.

    The order is checked, not assumed: a mismatch would silently attach answers to the wrong case. An answer is
    finished when vLLM stopped it at a stop token (`finish_reason == "stop"`), not at `max_tokens` ("length").
    """
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    results = []
    for i, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
        if out.prompt is not None and out.prompt != prompt:
            raise RuntimeError(f"vLLM output {i} belongs to another prompt")
        ordered = sorted(out.outputs, key=lambda c: c.index)  # child j is answer j: its stream is seed + j
        comps = [Completion(c.text, len(c.token_ids), c.finish_reason == "stop") for c in ordered]
        if settings.greedy:
            comps = comps[:1] * settings.n
        if len(comps) != settings.n:
            raise RuntimeError(f"vLLM returned {len(comps)} answers for prompt {i}, expected {settings.n}")
        results.append(PromptResult(len(out.prompt_token_ids or []), comps))
    return results


class VLLMBackend:
    name = "vllm"
    device = "cuda"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 seed: int = 0, adapter: str | None = None, max_model_len: int | None = None,
                 trust_remote_code: bool = False, allow_pickle: bool = False, batch_invariant: bool = False):
        # Read by vLLM when its engine starts (vllm/envs.py); lawshift/engines/gpuenv.py sets the rest.
        if batch_invariant:
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        from vllm import LLM  # optional dependency: only needed when this backend is selected

        lora = {"enable_lora": True, "max_lora_rank": lora_rank(adapter), "max_loras": 1} if adapter else {}
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, seed=seed, enable_prefix_caching=True,
                       max_model_len=max_model_len, trust_remote_code=trust_remote_code,
                       load_format=load_format(allow_pickle), **lora)
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("sft", 1, str(adapter))

    def generate(self, prompts: list[str], settings: GenerationSettings, seeds: Sequence[int]) -> list[PromptResult]:
        from vllm import SamplingParams

        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        params = [SamplingParams(**kw) for kw in request_kwargs(settings, seeds)]
        # One call for the whole chunk, with vLLM's own progress bar: the caller's advances once per chunk.
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=True,
                                    tokenization_kwargs=dict(TOKENIZATION))
        return map_outputs(prompts, outputs, settings)
