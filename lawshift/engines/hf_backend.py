"""The `hf` backend: N answers per prompt with transformers, on CPU or GPU, several prompts per call.

    backend = HFBackend(model, tokenizer, device)
    outs = backend.generate(prompts, GenerationSettings(n=8, temperature=0.8, top_p=0.95), seeds)

Shared prompt prefill (`decode`): each prompt is run through the model once and its KV cache repeated for its N
answers, which decode together, token by token, each prompt's answers drawing from its own seeded generator; an
answer that reaches eos leaves the batch. Greedy tokens equal `generate`'s and sampled ones follow the same
distribution (tests/engines/test_hf_backend.py). `shared_prefill=False` keeps transformers' plain `generate`, the
baseline
of `python -m benchmarks sampling`. docs/method.md says why this path is faster.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lawshift.engines.generation import Completion, GenerationSettings, PromptResult

# transformers fills every generation knob a call leaves unset from the model's generation_config.json, and hub
# models ship their own (Qwen2.5-Instruct: repetition_penalty 1.1, top_k 20, ...). Pinning the other logits
# processors to their no-op values makes the answers depend only on GenerationSettings, as with vLLM.
NEUTRAL_LOGITS = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)
NEUTRAL_SAMPLING = dict(min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)  # read only when sampling


class HFBackend:
    """Batched transformers generation: all prompts given in one batch, their answers decoded together."""

    name = "hf"

    def __init__(self, model, tokenizer, device: torch.device, shared_prefill: bool = True):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.shared_prefill = shared_prefill
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = eos_ids(model, tokenizer)

    @torch.inference_mode()
    def generate(self, prompts: list[str], settings: GenerationSettings, seeds: Sequence[int]) -> list[PromptResult]:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: pad on the left so every prompt ends at the same position
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        n = 1 if settings.greedy else settings.n  # greedy answers are all the same: decode one, repeat it
        if self.shared_prefill:
            new = decode(self.model, enc["input_ids"], enc["attention_mask"], settings, seeds, self.eos_ids,
                         tok.pad_token_id)
        else:
            new = self._plain_generate(enc, settings, seeds[0])
        results = []
        for i, plen in enumerate(prompt_lens):
            comps = [self._completion(new[i * n + j]) for j in range(n)]
            results.append(PromptResult(int(plen), comps * (settings.n if settings.greedy else 1)))
        return results

    def _plain_generate(self, enc, settings: GenerationSettings, seed: int) -> torch.Tensor:
        """transformers' `generate`: every prompt repeated n times, all rows decoded until the last one ends; one
        global seed for the call (the benchmarks' baseline, not the pipeline's path)."""
        torch.manual_seed(seed)
        n = 1 if settings.greedy else settings.n
        kwargs = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=self.eos_ids,
                      pad_token_id=self.tokenizer.pad_token_id, num_return_sequences=n, **NEUTRAL_LOGITS)
        if settings.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                          **NEUTRAL_SAMPLING)
        out = self.model.generate(**enc, **kwargs)
        return out[:, enc["input_ids"].shape[1]:]

    def _completion(self, ids: torch.Tensor) -> Completion:
        kept = until_eos(ids.tolist(), self.eos_ids)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text, len(kept), bool(kept) and kept[-1] in self.eos_ids)


# --- shared prefill decoding ---------------------------------------------------------------------------------------

def top_p_candidates(probs: torch.Tensor, top_p: float, k: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The nucleus of each row of `probs`, as transformers' TopPLogitsWarper keeps it, without sorting the vocabulary.

    A token survives when the tokens ranked above it hold less than `top_p` of the probability (so the most
    likely token always does). Once the k most likely tokens of every row hold `top_p`, no token below them
    survives, so only the top k are needed; k grows until that holds. Returns (weights, token ids), both (rows, k):
    the surviving tokens' probabilities, 0 for the dropped ones.
    """
    vocab = probs.shape[-1]
    k = min(k, vocab)
    while True:
        top, ids = probs.topk(k, dim=-1)  # sorted, most likely first
        cumulative = top.cumsum(dim=-1)
        if k == vocab or bool((cumulative[:, -1] >= top_p).all()):
            break
        k = min(4 * k, vocab)
    above = cumulative - top  # probability of the tokens ranked above each one
    return top.masked_fill(above >= top_p, 0.0), ids


def draw(weights: torch.Tensor, generators: Sequence[torch.Generator], owners: torch.Tensor) -> torch.Tensor:
    """One index per row of `weights`, each row drawn with the generator of its prompt, `generators[owners[row]]`.
    `owners` is sorted (rows are grouped by prompt), so each prompt's rows are one slice and one draw."""
    if len(generators) == 1:
        return torch.multinomial(weights, num_samples=1, generator=generators[0]).squeeze(1)
    out = torch.empty(weights.shape[0], dtype=torch.long, device=weights.device)
    prompts, counts = torch.unique_consecutive(owners, return_counts=True)
    start = 0
    for prompt, count in zip(prompts.tolist(), counts.tolist(), strict=True):
        rows = slice(start, start + count)
        out[rows] = torch.multinomial(weights[rows], num_samples=1, generator=generators[prompt]).squeeze(1)
        start += count
    return out


def next_tokens(logits: torch.Tensor, settings: GenerationSettings, generators: Sequence[torch.Generator],
                owners: torch.Tensor) -> torch.Tensor:
    """One token per row of float32 `logits`: argmax when greedy, else temperature, top-p, then a draw from the
    row's prompt's generator (`owners[row]` indexes `generators`)."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    probs = (logits / settings.temperature).softmax(dim=-1)
    if settings.top_p >= 1:
        return draw(probs, generators, owners)
    weights, ids = top_p_candidates(probs, settings.top_p)
    return ids.gather(1, draw(weights, generators, owners)[:, None]).squeeze(1)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values sit in buffers with room to spare: a decode step writes its token in
    place, where DynamicLayer concatenates, copying the layer's whole cache at every step (for 64 answers to a
    1,000-token prompt that copy costs more than the step's attention). The buffers grow `room` tokens at a time."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.room, self.length = room, keys.shape[-2]
        self.is_initialized, self.device = True, keys.device
        self._keys, self._values = self._with_room(keys), self._with_room(values)
        self._expose()

    @classmethod
    def left_padded(cls, layers: Sequence[DynamicLayer], total: int, room: int) -> GrowingLayer:
        """One batch from the caches of single prompts, each right-aligned at `total` positions: the layout of a
        left-padded batch. The padding slots hold zeros; the attention mask keeps them out."""
        first = layers[0].keys
        shape = (len(layers), first.shape[1], total, first.shape[3])
        keys, values = first.new_zeros(shape), first.new_zeros(shape)
        for i, layer in enumerate(layers):
            length = layer.keys.shape[-2]
            keys[i, :, total - length:] = layer.keys[0]
            values[i, :, total - length:] = layer.values[0]
        return cls(keys, values, room)

    def _with_room(self, states: torch.Tensor) -> torch.Tensor:
        batch, heads, _, dim = states.shape
        buffer = states.new_empty((batch, heads, self.length + self.room, dim))
        buffer[:, :, :self.length] = states[:, :, :self.length]
        return buffer

    def _expose(self) -> None:
        self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.length + new > self._keys.shape[-2]:
            self._keys, self._values = self._with_room(self._keys), self._with_room(self._values)
        self._keys[:, :, self.length:self.length + new] = key_states
        self._values[:, :, self.length:self.length + new] = value_states
        self.length += new
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._expose()


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            room: int) -> tuple[DynamicCache, torch.Tensor]:
    """Run the left-padded prompts through the model once: their KV cache and each prompt's next-token logits.

    Positions count real tokens only and a batch without padding goes without a mask, as in transformers'
    generate. A padded batch of a full-attention model is run one prompt at a time, unpadded, and the caches put
    together left-padded: the masked attention a padded batch needs is about twice as slow per token on CPU.
    """
    cache = DynamicCache(config=model.config)
    last_only = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}  # no logits for the prompt's body
    kw = _cache_kwarg(model)
    full_attention = bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
    padded = not bool((attention_mask == 1).all())
    if not (full_attention and padded):
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        out = model(input_ids=input_ids, attention_mask=attention_mask if padded else None, position_ids=positions,
                    **{kw: cache}, use_cache=True, **last_only)
        if full_attention:
            cache.layers = [GrowingLayer(layer.keys, layer.values, room) for layer in cache.layers]
        return cache, out.logits[:, -1].float()
    total, logits, parts = input_ids.shape[1], [], []
    for i, length in enumerate(attention_mask.sum(dim=1).tolist()):
        part = DynamicCache(config=model.config)
        out = model(input_ids=input_ids[i:i + 1, total - length:], **{kw: part}, use_cache=True, **last_only)
        logits.append(out.logits[:, -1].float())
        parts.append(part)
    cache.layers = [GrowingLayer.left_padded([part.layers[k] for part in parts], total, room)
                    for k in range(len(cache.layers))]
    return cache, torch.cat(logits)


def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
           seeds: Sequence[int], eos_ids: Sequence[int], pad_id: int, cache_room: int = 256) -> torch.Tensor:
    """New tokens for n answers to each left-padded prompt: shape (batch * n, max_new_tokens), row i * n + j the
    j-th answer to prompt i, eos kept, `pad_id` after it (n = 1 when greedy).

    The prompts are prefilled once; each prompt's KV cache is then repeated for its n answers. Rows whose answer
    has reached eos are dropped from the batch and the cache before the next step. The cache grows `cache_room`
    tokens at a time. Prompt i's answers draw from one generator seeded with `seeds[i]`, so they do not depend on
    the other prompts of the batch.
    """
    device = input_ids.device
    n = 1 if settings.greedy else settings.n
    if len(seeds) != input_ids.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {input_ids.shape[0]} prompts")
    generators = [] if settings.greedy else [torch.Generator(device=device).manual_seed(s) for s in seeds]
    cache, logits = prefill(model, input_ids, attention_mask, room=min(settings.max_new_tokens, cache_room))
    mask = None if bool((attention_mask == 1).all()) else attention_mask
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)
        mask = None if mask is None else mask.repeat_interleave(n, dim=0)
    position = (attention_mask.sum(dim=1, keepdim=True) - 1).repeat_interleave(n, dim=0)
    kw = _cache_kwarg(model)

    rows = torch.arange(logits.shape[0], device=device)  # which output row each batch row is
    new = torch.full((logits.shape[0], settings.max_new_tokens), pad_id, dtype=torch.long, device=device)
    eos = torch.tensor(list(eos_ids), device=device)
    for step in range(settings.max_new_tokens):
        tokens = next_tokens(logits, settings, generators, rows // n)
        new[rows, step] = tokens
        if step + 1 == settings.max_new_tokens:
            break
        done = torch.isin(tokens, eos)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            rows, tokens, position = rows[keep], tokens[keep], position[keep]
            mask = None if mask is None else mask[keep]
        position = position + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position, **{kw: cache},
                    use_cache=True)
        logits = out.logits[:, -1].float()
        del out
    return new


def _forward_params(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model passes them on
    return inspect.signature(inner.forward).parameters


def _takes_logits_to_keep(model) -> bool:
    return "logits_to_keep" in _forward_params(model)


def _cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: `cache` in newer transformers, `past_key_values` up to 5.20
    (the GPU set's; later versions still take it, with a deprecation warning)."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def until_eos(ids: Sequence[int], eos: Collection[int]) -> list[int]:
    """An answer's tokens up to and including its first eos (all of them when it reached none)."""
    for k, token in enumerate(ids):
        if token in eos:
            return list(ids[:k + 1])
    return list(ids)


def eos_ids(model, tokenizer) -> list[int]:
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
