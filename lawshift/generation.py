"""Generation backends: N answers for each of many prompts, behind one interface.

`HFBackend` runs transformers' `generate` on several prompts per call (left-padded, sampled or greedy,
stopping at eos) on CPU or GPU. A vLLM backend plugs in behind the same `Backend.generate` signature.

    backend = HFBackend(model, tokenizer, device)
    outs = backend.generate(prompts, GenerationSettings(n=8, temperature=0.8, top_p=0.95, max_new_tokens=256), seed=0)
    outs[i][j].text   # j-th answer to prompt i
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


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


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], settings: GenerationSettings, seed: int) -> list[PromptResult]: ...


# transformers fills every generation knob a call leaves unset from the model's generation_config.json, and hub
# models ship their own (Qwen2.5-Instruct: repetition_penalty 1.1, top_k 20, ...). Pinning the other logits
# processors to their no-op values makes the answers depend only on GenerationSettings, as with vLLM.
NEUTRAL_LOGITS = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)
NEUTRAL_SAMPLING = dict(min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)  # read only when sampling


class HFBackend:
    """Batched transformers generation: one `generate` call for all prompts given."""

    name = "hf"

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)

    @torch.inference_mode()
    def generate(self, prompts: list[str], settings: GenerationSettings, seed: int) -> list[PromptResult]:
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: pad on the left so every prompt ends at the same position
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        torch.manual_seed(seed)
        n = 1 if settings.greedy else settings.n
        kwargs = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=self.eos_ids,
                      pad_token_id=tok.pad_token_id, num_return_sequences=n, **NEUTRAL_LOGITS)
        if settings.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                          **NEUTRAL_SAMPLING)
        out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        results = []
        for i, plen in enumerate(prompt_lens):
            comps = [self._completion(new[i * n + j]) for j in range(n)]
            results.append(PromptResult(int(plen), comps * (settings.n if settings.greedy else 1)))
        return results

    def _completion(self, ids: torch.Tensor) -> Completion:
        ids = ids.tolist()
        length, finished = len(ids), False
        for k, t in enumerate(ids):
            if t in self.eos_ids:
                length, finished = k + 1, True
                break
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        return Completion(text, length, finished)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)
