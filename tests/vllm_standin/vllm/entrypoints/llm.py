"""`vllm.LLM` of the test-only stand-in: vLLM 0.33.0's offline entry point, run with transformers on the CPU.

It keeps what the project relies on: the construction arguments and their checks, `generate` with one
SamplingParams or LoRARequest per prompt, n > 1 as child requests seeded seed + j (each child its own generator, so
an answer never depends on its call mates), vLLM's sampling order and stop rules, incremental detokenisation,
special tokens added unless `tokenization_kwargs` says otherwise, and the engine start's fork/spawn choice.
`VLLM_STANDIN_LOG=<file>` logs one JSON line per engine and call; `VLLM_STANDIN_THREADS=<k>` sets torch's threads.
docs/testing.md lists every point with the vLLM file it follows, and the log's fields.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import _SAMPLING_EPS, RequestOutputKind, SamplingParams

LOG_ENV = "VLLM_STANDIN_LOG"
THREADS_ENV = "VLLM_STANDIN_THREADS"  # optional torch thread count (one thread is fastest for the tiny model)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
LOAD_FORMATS = {"auto": None, "safetensors": True, "pt": False}  # -> from_pretrained(use_safetensors=...)
WEIGHT_GLOBS = {"auto": ("*.safetensors", "*.bin", "*.pt"), "safetensors": ("*.safetensors",), "pt": ("*.bin", "*.pt")}
# What a GPU engine's start depends on: torch's CUDA check, vLLM's process start method, its usage report and its
# batch-invariant kernels (vllm/envs.py).
ENGINE_ENV = ("PYTORCH_NVML_BASED_CUDA_CHECK", "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_NO_USAGE_STATS",
              "VLLM_BATCH_INVARIANT")
# The config keys vLLM reads the model's length limit from (vllm/config/model.py _get_and_verify_max_len).
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_len",
                "max_sequence_length", "max_seq_length", "seq_len")


def _log(event: dict) -> None:
    """Append one JSON line to $VLLM_STANDIN_LOG, if set. Read at each event, so a test can set it late."""
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, ensure_ascii=False, default=repr) + "\n")


def _unseeded_seed(llm_seed: int, request_id: str, index: int) -> int:
    """Seed for an unseeded child: fixed by the LLM's seed and the request counter, distinct per child.
    (vLLM draws unseeded children from one global stream seeded by the LLM's seed: also reproducible per run.)"""
    digest = hashlib.sha256(f"{llm_seed}/{request_id}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_stop_strings(output_text: str, new_char_count: int, stop: list[str],
                       include_in_output: bool) -> tuple[str, int] | None:
    """vLLM's check (v1/engine/detokenizer.py): (stop string, index to truncate the text to, -1 for none) when a
    stop string ends in the newly decoded characters."""
    if not new_char_count or not stop:
        return None
    for stop_str in stop:
        # search only where the new characters could complete a stop string
        stop_index = output_text.find(stop_str, 1 - new_char_count - len(stop_str))
        if stop_index == -1:
            continue
        if include_in_output:
            stop_index += len(stop_str)
            if stop_index >= len(output_text):
                return stop_str, -1
        return stop_str, stop_index
    return None


class _Detokenizer:
    """Incremental text of one answer, as vLLM's FastIncrementalDetokenizer (tokenizers' DecodeStream primed with
    the prompt ids); falls back to decoding the whole answer for a tokenizer without a Rust backend."""

    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
        self.stream = None
        if self.backend is not None:
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=skip_special_tokens)
        self.ids: list[int] = []  # fallback only
        self.emitted = ""

    def step(self, token_id: int) -> str:
        """The new text `token_id` completes ("" while a character's bytes are incomplete)."""
        if self.stream is not None:
            return self.stream.step(self.backend, token_id) or ""
        self.ids.append(token_id)
        # hold back a trailing incomplete character, as an incremental detokenizer does
        full = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip).rstrip("\ufffd")
        new, self.emitted = full[len(self.emitted):], full
        return new


class _Child:
    """One child request: its tokens, text and stop state (vLLM's check_stop and detokenizer update)."""

    def __init__(self, index: int, generator: torch.Generator, prompt_ids: list[int], sp: SamplingParams, tokenizer,
                 max_model_len: int, vocab_size: int):
        self.index = index
        self.generator = generator
        self.sp = sp
        self.prompt_len = len(prompt_ids)
        self.max_model_len = max_model_len
        self.max_tokens = sp.max_tokens if sp.max_tokens is not None else max_model_len - len(prompt_ids)
        self.detok = _Detokenizer(tokenizer, prompt_ids, sp.skip_special_tokens)
        self.counts = torch.zeros(vocab_size, dtype=torch.float32)  # output token counts, for the penalties
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    def add(self, token: int) -> None:
        sp = self.sp
        self.token_ids.append(token)
        self.counts[token] += 1
        # v1/core/sched/utils.py check_stop: eos and stop ids first (not before min_tokens), then the length caps
        stop_terminated = False
        if len(self.token_ids) >= sp.min_tokens:
            if token == sp.eos_token_id:
                self.finish_reason, stop_terminated = "stop", True
            elif token in sp.stop_token_ids:
                self.finish_reason, self.stop_reason, stop_terminated = "stop", token, True
        if self.finish_reason is None and (self.prompt_len + len(self.token_ids) >= self.max_model_len
                                           or len(self.token_ids) >= self.max_tokens):
            self.finish_reason = "length"
        # v1/engine/detokenizer.py update: the stop token's text is left out unless include_stop_str_in_output
        if stop_terminated and not sp.include_stop_str_in_output:
            return
        before = len(self.text)
        self.text += self.detok.step(token)
        if sp.stop and len(self.token_ids) > sp.min_tokens:
            hit = check_stop_strings(self.text, len(self.text) - before, sp.stop, sp.include_stop_str_in_output)
            if hit is not None:
                stop_str, truncate_to = hit
                if truncate_to != -1:
                    self.text = self.text[:truncate_to]
                self.finish_reason, self.stop_reason = "stop", stop_str

    def output(self) -> CompletionOutput:
        return CompletionOutput(index=self.index, text=self.text, token_ids=list(self.token_ids),
                                cumulative_logprob=None, logprobs=None, finish_reason=self.finish_reason,
                                stop_reason=self.stop_reason)


class LLM:
    """vLLM's offline LLM on the CPU (float32). Unknown keyword arguments are accepted and recorded in the log
    (vLLM would pass them to EngineArgs)."""

    def __init__(self, model: str, *, tokenizer: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, seed: int = 0, enable_prefix_caching: bool = False,
                 enable_lora: bool = False, max_lora_rank: int = 16, max_loras: int = 1,
                 max_model_len: int | None = None, trust_remote_code: bool = False, load_format: str = "auto",
                 dtype: Any = "auto", revision: str | None = None, tokenizer_revision: str | None = None,
                 **kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if load_format not in LOAD_FORMATS:
            raise NotImplementedError(f"vllm stand-in: load_format {load_format!r} is not modelled "
                                      f"(only {sorted(LOAD_FORMATS)})")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"GPU memory utilization must be within (0, 1]. Got {gpu_memory_utilization}.")
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}.")
        if enable_lora:  # vLLM builds (and validates) its LoRAConfig only with LoRA on
            if max_lora_rank not in LORA_RANKS:
                raise ValueError(f"max_lora_rank ({max_lora_rank}) must be one of {LORA_RANKS}.")
            if max_loras < 1:
                raise ValueError(f"max_loras ({max_loras}) must be at least 1.")

        self.model_path = str(model)
        self.seed = seed
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.load_format = load_format
        self.trust_remote_code = trust_remote_code
        self.kwargs = dict(kwargs)
        if os.environ.get(THREADS_ENV):
            torch.set_num_threads(int(os.environ[THREADS_ENV]))
        folder = Path(self.model_path)
        if folder.is_dir() and not any(any(folder.glob(g)) for g in WEIGHT_GLOBS[load_format]):
            # vLLM's loader looks only for its load_format's files (model_loader/default_loader.py)
            raise RuntimeError(f"Cannot find any model weights with `{self.model_path}`")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or self.model_path,
                                                       trust_remote_code=trust_remote_code,
                                                       revision=tokenizer_revision or revision)
        # float32 whatever `dtype` says: the CPU has no fast half-precision path, and tests compare with HF in fp32
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32,
                                                          use_safetensors=LOAD_FORMATS[load_format],
                                                          trust_remote_code=trust_remote_code, revision=revision)
        self.model.eval()
        self.max_model_len = self._verify_max_len(max_model_len)
        gen = getattr(self.model, "generation_config", None)
        self.generation_config = gen.to_dict() if gen is not None else {}
        self._loras: dict[int, tuple[str, torch.nn.Module]] = {}  # lora_int_id -> (path, merged model)
        self._request_counter = 0
        # vllm/utils/system_utils.py get_mp_context: the engine process starts with VLLM_WORKER_MULTIPROC_METHOD
        # (default fork), forced to spawn only when torch reports CUDA initialised (not when only the driver is).
        mp_method = os.environ.get("VLLM_WORKER_MULTIPROC_METHOD", "fork")
        if torch.cuda.is_initialized():
            mp_method = "spawn"
        _log({"event": "init", "mp_method": mp_method, "env": {k: os.environ.get(k) for k in ENGINE_ENV},
              "model": self.model_path, "load_format": load_format, "enable_lora": enable_lora,
              "max_lora_rank": max_lora_rank, "max_model_len": max_model_len, "seed": seed, "kwargs": self.kwargs,
              "tokenizer": tokenizer, "tensor_parallel_size": tensor_parallel_size,
              "gpu_memory_utilization": gpu_memory_utilization, "enable_prefix_caching": enable_prefix_caching,
              "max_loras": max_loras, "trust_remote_code": trust_remote_code, "dtype": str(dtype),
              "revision": revision})

    # ------------------------------------------------------------------ construction helpers

    def _verify_max_len(self, max_model_len: int | None) -> int:
        """vLLM's rule: the smallest length limit in the model config; a larger user value is an error."""
        config = self.model.config
        limits = [getattr(config, key) for key in MAX_LEN_KEYS if isinstance(getattr(config, key, None), int)]
        derived = min(limits) if limits else 2048  # vLLM's default when the config names none
        if max_model_len is None:
            return derived
        if max_model_len > derived:
            raise ValueError(f"User-specified max_model_len ({max_model_len}) is greater than the derived "
                             f"max_model_len (max_position_embeddings={derived} or model_max_length=None in model's "
                             f"config.json).")
        return max_model_len

    def get_tokenizer(self):
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """vLLM's default when generate gets none: SamplingParams() with the sampling values the model's
        generation_config sets (vLLM reads its non-default values: get_diff_sampling_param)."""
        gen = self.model.generation_config.to_diff_dict() if self.model.generation_config is not None else {}
        keys = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}
        return SamplingParams(**{ours: gen[theirs] for theirs, ours in keys.items() if gen.get(theirs) is not None})

    # ------------------------------------------------------------------ generate

    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 use_tqdm: Any = True, lora_request: LoRARequest | Sequence[LoRARequest] | None = None,
                 priority: list[int] | None = None, tokenization_kwargs: dict[str, Any] | None = None,
                 mm_processor_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        if priority is not None or mm_processor_kwargs is not None:
            raise NotImplementedError("vllm stand-in: priority and mm_processor_kwargs are not modelled")
        # vllm/renderers/params.py TokenizeParams.with_kwargs: add_special_tokens defaults to True for generate
        add_special = bool((tokenization_kwargs or {}).get("add_special_tokens", True))
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        num = len(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, Sequence) and len(sampling_params) != num:
            raise ValueError("The lengths of prompts and params must be the same.")
        if isinstance(lora_request, Sequence) and len(lora_request) != num:
            raise ValueError("The lengths of prompts and lora_request must be the same.")
        params = list(sampling_params) if isinstance(sampling_params, Sequence) else [sampling_params] * num
        loras = list(lora_request) if isinstance(lora_request, Sequence) else [lora_request] * num

        # validate every request before running any (vLLM validates each request as it is added)
        requests = []
        for prompt, sp, lora in zip(prompts, params, loras, strict=True):
            if not isinstance(sp, SamplingParams):
                raise TypeError(f"vllm stand-in: expected SamplingParams, got {type(sp).__name__}")
            if sp.unsupported():
                raise NotImplementedError(f"vllm stand-in: SamplingParams options not modelled: {sp.unsupported()}")
            text, ids = self._tokenize(prompt, add_special)
            self._validate_lora(lora)
            sp = sp.clone()  # vLLM's processor clones before filling in the eos ids
            sp.output_kind = RequestOutputKind.FINAL_ONLY  # what LLM.generate asks of the engine
            sp.update_from_generation_config(self.generation_config, self.tokenizer.eos_token_id)
            request_id = str(self._request_counter)
            self._request_counter += 1
            requests.append((request_id, text, ids, sp, lora))

        _log({"event": "generate", "prompts": num, "tokenization_kwargs": tokenization_kwargs,
              "requests": [{"request_id": rid, "seed": sp.seed, "n": sp.n, "child_seeds": self._child_seeds(sp),
                            "temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k,
                            "max_tokens": sp.max_tokens, "lora_path": lora.lora_path if lora else None,
                            "prompt": text, "prompt_tokens": len(ids)}
                           for rid, text, ids, sp, lora in requests]})

        outputs = []
        with torch.inference_mode():
            for request_id, text, ids, sp, lora in requests:
                model = self._model_for(lora)
                completions = self._run_request(model, request_id, ids, sp)
                outputs.append(RequestOutput(request_id=request_id, prompt=text, prompt_token_ids=ids,
                                             prompt_logprobs=None, outputs=completions, finished=True,
                                             lora_request=lora, num_cached_tokens=0))
        return outputs

    def _tokenize(self, prompt, add_special_tokens: bool = True) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:  # a TokensPrompt: never tokenized, `prompt` only if given
                text, ids = prompt.get("prompt"), list(prompt["prompt_token_ids"])
            else:
                text = prompt["prompt"]
                ids = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        elif isinstance(prompt, str):
            text, ids = prompt, self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
        else:
            raise TypeError(f"vllm stand-in: a prompt must be a str or a dict, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        if len(ids) > self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                             f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number "
                             f"of text tokens.")
        vocab = self.model.config.vocab_size
        if max(ids) >= vocab or min(ids) < 0:
            raise ValueError(f"Token id {max(ids)} is out of vocabulary")
        return text, list(ids)

    def _validate_lora(self, lora: LoRARequest | None) -> None:
        if lora is None:
            return
        if not self.enable_lora:
            raise ValueError(f"Got lora_request {lora} but LoRA is not enabled!")
        config_path = Path(lora.lora_path) / "adapter_config.json"
        if not config_path.is_file():
            raise ValueError(f"Loading lora {lora.lora_name} failed: No adapter found for {lora.lora_path}")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        # vllm/lora/peft_helper.py validate_legal
        errors = []
        if config.get("modules_to_save"):
            errors.append("vLLM only supports modules_to_save being None.")
        if config.get("r", 0) > self.max_lora_rank:
            errors.append(f"LoRA rank {config.get('r')} is greater than max_lora_rank {self.max_lora_rank}.")
        if config.get("bias", "none") != "none":
            errors.append("Adapter bias cannot be used without bias_enabled.")
        if config.get("use_dora"):
            errors.append("vLLM does not yet support DoRA.")
        if errors:
            raise ValueError(" ".join(errors))

    def _model_for(self, lora: LoRARequest | None) -> torch.nn.Module:
        """The base model, or the base with the adapter merged in, cached by lora_int_id as vLLM caches adapters
        (a later request with the same id but another path gets the cached adapter, as in vLLM)."""
        if lora is None:
            return self.model
        if lora.lora_int_id not in self._loras:
            from peft import PeftModel

            # a copy: PeftModel injects its layers into the model it wraps, and the base must stay the base
            peft_model = PeftModel.from_pretrained(copy.deepcopy(self.model), lora.lora_path)
            merged = peft_model.merge_and_unload()
            merged.eval()
            self._loras[lora.lora_int_id] = (lora.lora_path, merged)
        return self._loras[lora.lora_int_id][1]

    @staticmethod
    def _child_seeds(sp: SamplingParams) -> list[int | None]:
        """vllm/v1/engine/parallel_sampling.py: child j of a seeded request gets seed + j; n == 1 keeps the seed."""
        if sp.n == 1:
            return [sp.seed]
        return [None if sp.seed is None else sp.seed + j for j in range(sp.n)]

    # ------------------------------------------------------------------ one request

    def _run_request(self, model, request_id: str, ids: list[int], sp: SamplingParams) -> list[CompletionOutput]:
        """The n children of one request, decoded together: the prompt is prefilled once and its cache repeated
        per child (rows of one batch; a finished child leaves the batch). Each child samples from its own row with
        its own generator, so its answer depends only on the prompt, its seed and the settings."""
        children = []
        logits, cache = self._forward(model, torch.tensor([ids], dtype=torch.long), None)
        vocab = logits.shape[-1]
        for index, seed in enumerate(self._child_seeds(sp)):
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed if seed is not None else _unseeded_seed(self.seed, request_id, index))
            children.append(_Child(index, generator, ids, sp, self.tokenizer, self.max_model_len, vocab))
        prompt_mask = torch.zeros(vocab, dtype=torch.bool)
        prompt_mask[torch.tensor(ids)] = True
        if sp.n > 1:
            logits = logits.expand(sp.n, -1)
            cache.batch_repeat_interleave(sp.n)
        active = children  # batch row r is active[r]
        while True:
            for row, child in enumerate(active):
                child.add(self._sample(logits[row].clone(), sp, child.generator, child.counts, prompt_mask,
                                       len(child.token_ids)))
            keep = [row for row, child in enumerate(active) if child.finish_reason is None]
            if not keep:
                break
            if len(keep) < len(active):
                cache.batch_select_indices(torch.tensor(keep))
                active = [active[row] for row in keep]
            step = torch.tensor([[child.token_ids[-1]] for child in active], dtype=torch.long)
            logits, cache = self._forward(model, step, cache)
        return [child.output() for child in children]

    def _forward(self, model, input_ids: torch.Tensor, cache):
        """Last-position logits (float32, one row per sequence) and the grown KV cache. transformers 5 renamed
        `past_key_values` to `cache`; both spellings are handled so the stand-in does not pin a version."""
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        extra = {name: cache} if cache is not None else {}
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **extra)
        new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        return out.logits[:, -1].float(), new_cache

    @staticmethod
    def _sample(logits: torch.Tensor, sp: SamplingParams, generator: torch.Generator, counts: torch.Tensor,
                prompt_mask: torch.Tensor, num_out: int) -> int:
        """One token, in vLLM's order (v1/sample/sampler.py)."""
        if num_out < sp.min_tokens and sp.all_stop_token_ids:  # min_tokens: no stop token before the minimum
            logits[torch.tensor(sorted(sp.all_stop_token_ids))] = float("-inf")
        if sp.repetition_penalty != 1.0:  # over prompt and output tokens, as vLLM
            seen = prompt_mask | (counts > 0)
            penalised = torch.where(logits > 0, logits / sp.repetition_penalty, logits * sp.repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        if sp.frequency_penalty:
            logits = logits - sp.frequency_penalty * counts
        if sp.presence_penalty:
            logits = logits - sp.presence_penalty * (counts > 0).float()
        if sp.temperature < _SAMPLING_EPS:
            return int(torch.argmax(logits))
        logits = logits / sp.temperature
        if sp.min_p > 0:
            probs = logits.softmax(dim=-1)
            logits = logits.masked_fill(probs < sp.min_p * probs.max(), float("-inf"))
        logits = _apply_top_k_top_p(logits, sp.top_k if sp.top_k > 0 else None, sp.top_p if sp.top_p < 1 else None)
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        return int(torch.multinomial(probs, 1, generator=generator))


def _apply_top_k_top_p(logits: torch.Tensor, k: int | None, p: float | None) -> torch.Tensor:
    """vLLM's apply_top_k_top_p on one row: sort ascending; top-k keeps values >= the k-th largest; top-p masks
    the tokens whose cumulative probability (ascending, itself included) is <= 1 - p, never the most likely one.
    That is: a token is kept when the probability of the tokens more likely than it is < p."""
    if k is None and p is None:
        return logits
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    if k is not None:
        kth = logits_sort[max(logits_sort.shape[-1] - k, 0)]
        logits_sort = logits_sort.masked_fill(logits_sort < kth, float("-inf"))
    if p is not None:
        probs_sum = logits_sort.softmax(dim=-1).cumsum(dim=-1)
        mask = probs_sum <= 1 - p
        mask[-1] = False
        logits_sort = logits_sort.masked_fill(mask, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, logits_idx, logits_sort)

