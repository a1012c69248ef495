"""An instant `vllm` for `python -m benchmarks driver` only: canned answers at once, chosen by seed.

The driver puts `benchmarks/instant_vllm` first on a stage's PYTHONPATH and sets `backend: vllm`, so
stages/sample.py and stages/eval.py run their real code (lawshift/engines/vllm_backend.py included) around an
engine that costs nothing: what is left to time and measure is the stage's own work. Never installed, never
imported by the package; tests/vllm_standin is the stand-in that really generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANSWERS = ("<think>容留他人吸毒，情节一般。</think><answer> 容留他人吸毒 | 7 </answer>",
           "<think>不构成犯罪。</think><answer> 不违规 </answer>",
           "<think>数额较大。</think><answer> 盗窃罪 | 10 </answer>")
TOKENS = (24,) * 24  # every answer's token ids: 24 of them, as the answer's length


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: tuple = TOKENS
    finish_reason: str = "stop"


@dataclass
class RequestOutput:
    request_id: str
    prompt: str
    prompt_token_ids: list = field(default_factory=list)  # not tokenised: the engine costs nothing
    outputs: list = field(default_factory=list)


class LLM:
    """vLLM's offline entry point, answering child j of a request seeded s with ANSWERS[(s + j) % 3]."""

    def __init__(self, model: str, **kwargs):
        self.model, self.kwargs = model, kwargs

    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None, tokenization_kwargs=None):
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        return [RequestOutput(str(i), p, [], [CompletionOutput(j, ANSWERS[((sp.seed or 0) + j) % 3])
                                              for j in range(sp.n)])
                for i, (p, sp) in enumerate(zip(prompts, params, strict=True))]
