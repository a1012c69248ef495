"""Builds the generation backend a stage asks for: `hf` (transformers, merged adapter) or `vllm` (LoRARequest),
in this process or as a Ray pool of them.

    backend = open_backend(BackendSpec("hf", "models/base", "cpu", seed=0, max_model_len=2048), workers=2, piece=8)
    ...
    close(backend)

The one place a new engine, or a pool of them, plugs in.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from lawshift.core import models
from lawshift.engines.generation import Backend, BackendSpec
from lawshift.engines.hf_backend import HFBackend


def open_backend(spec: BackendSpec, workers: int = 1, piece: int = 0, cluster: str = "",
                 ship_models: bool = False) -> Backend:
    """The backend `spec` names in this process, or with `workers` > 1 a Ray pool of them (lawshift/engines/raypool.py)
    handing `piece` prompts (0: an even share) of each call to whichever worker is free. Close it with `close`."""
    if workers <= 1:
        return make_backend(**asdict(spec))
    from lawshift.engines.raypool import RayPool  # Ray is imported only when a pool is asked for

    # Workers may run elsewhere (another node, another working directory): they get absolute paths.
    spec = replace(spec, base=str(Path(spec.base).resolve()),
                   adapter=spec.adapter and str(Path(spec.adapter).resolve()))
    return RayPool(make_backend, spec, workers, piece, cluster, ship_models)


def close(backend: Backend) -> None:
    """Let a backend go: a pool's workers end and a Ray it started shuts down."""
    if hasattr(backend, "close"):
        backend.close()


def make_backend(kind: str, base: str, *, device: str, seed: int, max_model_len: int, adapter: str | None = None,
                 trust_remote_code: bool = False, allow_pickle: bool = False, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, batch_invariant: bool = False):
    """The generation backend `kind` names (`hf` | `vllm`) over the resolved base model, `adapter` on top if given.

    `hf` merges the adapter into the weights (plain weights decode faster than base + LoRA on every step); `vllm`
    serves it unmerged through a LoRARequest (lawshift/engines/vllm_backend.py says why). `max_model_len` is the longest
    prompt plus a full answer: vLLM reserves its KV cache for that, not for the model's whole context.
    """
    if adapter is not None:
        models.check_adapter(adapter)
    if kind == "vllm":
        from lawshift.engines.vllm_backend import VLLMBackend  # vLLM is imported only when this backend is built

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
