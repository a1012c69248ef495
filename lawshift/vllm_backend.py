"""vLLM generation backend (optional: `pip install -r requirements-gpu.txt`, selected by `backend: vllm`).

All prompts of a call go to one `LLM.generate` with `SamplingParams(n=N, …)`; vLLM schedules them itself and,
with prefix caching on, prefills a shared prompt once for its N answers. A fine-tuned model's adapter is served
through `LoRARequest`, so the base weights load once. vLLM is imported only when this backend is built.

The pure parts, the sampling arguments and the mapping of vLLM's outputs back to prompts, are plain functions
tested without a GPU (tests/test_vllm_backend.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from lawshift.generation import Completion, GenerationSettings, PromptResult


def sampling_kwargs(settings: GenerationSettings, seed: int) -> dict:
    """Arguments for `vllm.SamplingParams`: greedy is temperature 0 with a single answer repeated n times."""
    if settings.greedy:
        return {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": settings.max_new_tokens, "seed": seed}
    return {"n": settings.n, "temperature": settings.temperature, "top_p": settings.top_p,
            "max_tokens": settings.max_new_tokens, "seed": seed}


def request_kwargs(settings: GenerationSettings, seed: int, count: int) -> list[dict]:
    """One SamplingParams' arguments per prompt, each with its own seed: with one shared seed every prompt of a
    call would draw from the same random stream."""
    return [sampling_kwargs(settings, seed + i) for i in range(count)]


def map_outputs(prompts: Sequence[str], outputs: Sequence, settings: GenerationSettings) -> list[PromptResult]:
    """vLLM RequestOutputs (same order as the prompts) -> one PromptResult per prompt.

    The order is checked, not assumed: a mismatch would silently attach answers to the wrong case.
    """
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    results = []
    for i, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
        if out.prompt is not None and out.prompt != prompt:
            raise RuntimeError(f"vLLM output {i} belongs to another prompt")
        comps = [Completion(c.text, len(c.token_ids), c.finish_reason == "stop") for c in out.outputs]
        if settings.greedy:
            comps = comps[:1] * settings.n
        if len(comps) != settings.n:
            raise RuntimeError(f"vLLM returned {len(comps)} answers for prompt {i}, expected {settings.n}")
        results.append(PromptResult(len(out.prompt_token_ids or []), comps))
    return results


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 seed: int = 0, adapter: str | None = None, lora_rank: int = 64, max_model_len: int | None = None,
                 trust_remote_code: bool = False, allow_pickle: bool = False):
        from vllm import LLM  # optional dependency: only needed when this backend is selected

        # vLLM's "auto" falls back to pickle *.bin weights; as everywhere else, only with model.allow_pickle.
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, seed=seed, enable_prefix_caching=True,
                       enable_lora=adapter is not None, max_lora_rank=lora_rank, max_model_len=max_model_len,
                       trust_remote_code=trust_remote_code, load_format="auto" if allow_pickle else "safetensors")
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("sft", 1, adapter)

    def generate(self, prompts: list[str], settings: GenerationSettings, seed: int) -> list[PromptResult]:
        from vllm import SamplingParams

        params = [SamplingParams(**kw) for kw in request_kwargs(settings, seed, len(prompts))]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        return map_outputs(prompts, outputs, settings)
