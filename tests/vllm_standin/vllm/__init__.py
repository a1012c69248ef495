"""Test-only CPU stand-in for the `vllm` package (see ../README.md); never installed, never imported by the project.

The same top-level names as vLLM: `from vllm import LLM, SamplingParams` and `from vllm.outputs import
RequestOutput, CompletionOutput` both work. vLLM imports these lazily; here eager imports are fine.
"""

from vllm.entrypoints.llm import LLM
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

# Not a real vLLM version on purpose: anything that records the version shows this was the stand-in.
__version__ = "0.0.0+cpu.standin"
STANDIN = True

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "RequestOutputKind", "__version__"]
