"""Builds the generation backend a stage asks for: `hf` (transformers, merged adapter) or `vllm` (LoRARequest).

    backend = make_backend("hf", "models/base", device="cpu", seed=0, max_model_len=2048, adapter="models/round1")

The one place a new engine, or a pool of them, plugs in.
"""

from __future__ import annotations

from lawshift import models
from lawshift.hf_backend import HFBackend


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
        from lawshift.vllm_backend import VLLMBackend  # vLLM is imported only when this backend is built

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
