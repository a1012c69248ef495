"""Generation backends: N answers for each of many prompts, behind one interface.

`HFBackend` generates with transformers on CPU or GPU, several prompts per call (left-padded, sampled or
greedy, stopping at eos). A vLLM backend plugs in behind the same `Backend.generate` signature.

    backend = HFBackend(model, tokenizer, device)
    settings = GenerationSettings(n=8, temperature=0.8, top_p=0.95, max_new_tokens=256)
    outs = backend.generate(prompts, settings, [stream_seed(0, i) for i in range(len(prompts))])
    outs[i].completions[j].text   # j-th answer to prompt i

Seeds: every prompt of a call comes with its own seed, the first of its answers' streams (`stream_seed`: answer j
of case i draws from stream_seed(seed, i) + j). vLLM gives child j of an n-answer request the seed `seed + j`
(vllm/v1/engine/parallel_sampling.py), and the HF backend draws a prompt's answers from one generator seeded with
its seed; `stream_seed` spaces the cases so that neither scheme can give two (case, answer) pairs one stream, and a
case's *streams* never depend on which other cases share its call, its batch size, its shard or a resume. Its answers'
*bytes* are that independent only where the logits are too: on the `hf` backend on CPU under the pinned numerics
(tested), or on vLLM in its batch-invariant mode (`batch_invariant: true`). On a GPU, padding, batch composition and
vLLM's prefix-cache hits can change the last bits of the logits, and so a sampled token.

Shared prompt prefill (the default, `shared_prefill=True`, function `decode`): the N answers of a prompt share the
prompt, so each prompt is run through the model once and its KV cache repeated for its N answers; then all answers
of the batch are decoded together, token by token, with temperature + top-p sampling, each prompt's answers drawing
from that prompt's own seeded `torch.Generator`. An answer that reaches eos leaves the batch (its rows are dropped
from the cache), so finished answers cost nothing more. transformers' `generate(num_return_sequences=N)` instead
prefills N copies of every prompt, keeps decoding finished rows until the batch's last answer ends, and sorts the
whole vocabulary for top-p at every step (here only the few most likely tokens are ranked). Greedy decoding gives
the same tokens as `generate`, and sampled tokens follow the same distribution (tests/test_generation.py).
`shared_prefill=False` keeps the plain `generate` path: the baseline of `python -m benchmarks sampling`.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lawshift import models

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


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], settings: GenerationSettings, seeds: Sequence[int]) -> list[PromptResult]:
        """N answers to each prompt; `seeds[i]` is prompt i's first stream (its answers use seeds[i] + j)."""
        ...


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
        self.eos_ids = _eos_ids(model, tokenizer)

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
        ids = ids.tolist()
        length, finished = len(ids), False
        for k, t in enumerate(ids):
            if t in self.eos_ids:
                length, finished = k + 1, True
                break
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        return Completion(text, length, finished)


def call_size(backend: str, batch_size: int, chunk_size: int, count: int) -> int:
    """Prompts per generate call out of `count`: one padded device batch for `hf`; for `vllm` a whole chunk (0: all
    of them), which vLLM's scheduler and prefix cache handle better than many small calls."""
    if backend == "vllm":
        return chunk_size or max(count, 1)
    return batch_size


def make_backend(kind: str, base: str, *, device: str, seed: int, max_model_len: int, adapter: str | None = None,
                 trust_remote_code: bool = False, allow_pickle: bool = False, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, batch_invariant: bool = False):
    """The generation backend `kind` names (`hf` | `vllm`) over the resolved base model, `adapter` on top if given.

    `hf` merges the adapter into the weights (plain weights decode faster than base + LoRA on every step); `vllm`
    serves it unmerged through a LoRARequest (lawshift/vllm_backend.py says why). `max_model_len` is the longest
    prompt plus a full answer: vLLM reserves its KV cache for that, not for the model's whole context.
    """
    if adapter is not None:
        models.check_adapter(adapter)
    if kind == "vllm":
        from lawshift.vllm_backend import VLLMBackend

        models.check_local_model(base, allow_pickle)
        return VLLMBackend(base, tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization, seed=seed, adapter=adapter,
                           max_model_len=max_model_len, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle, batch_invariant=batch_invariant)
    dev = models.pick_device(device)
    model = models.load_model(base, device=dev, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                       adapter=adapter)
    if adapter is not None:
        model = model.merge_and_unload()
    return HFBackend(model, models.load_tokenizer(base, trust_remote_code), dev)


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
