"""Test-only CPU stand-in for the `vllm` package (see ../README.md); never installed, never imported by the project.

The same top-level names as vLLM: `from vllm import LLM, SamplingParams` and `from vllm.outputs import
RequestOutput, CompletionOutput` both work. vLLM imports these lazily; here eager imports are fine.
"""

import os

# vllm/env_override.py, imported first by vLLM's own __init__: what importing vLLM does to the environment.
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
os.environ.setdefault("TILELANG_CLEANUP_TEMP_FILES", "1")

from vllm.entrypoints.llm import LLM  # noqa: E402
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402
from vllm.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402

# Not a real vLLM version on purpose: anything that records the version shows this was the stand-in.
__version__ = "0.0.0+cpu.standin"
STANDIN = True

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "RequestOutputKind", "__version__"]
