"""Test-only: torch's CUDA driver entry points fail loudly until vLLM's engine is built (tests/test_cuda_state.py).

With this folder on PYTHONPATH, Python imports this file at start-up. Once torch is imported it looks like a CUDA
build on a machine whose NVML sees one GPU: `torch.cuda.is_available()` answers from NVML when
PYTORCH_NVML_BASED_CUDA_CHECK=1 (no driver touched), and every call that would initialise the CUDA driver in this
process (`cudaGetDeviceCount`, `torch._C._cuda_init`, hence `torch.cuda.init` and every lazy init) raises
`RuntimeError("CUDA tripwire: ...")`: vLLM would fork its engine from a process whose driver state a child cannot
use. When `vllm.LLM` is built (the engine start: in vLLM a process of its own), torch is the CPU build again.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

PREFIX = "CUDA tripwire"
_state = {"torch": None, "armed": False, "cudart": None}


def _trip(name: str):
    def call(*_args, **_kwargs):
        raise RuntimeError(f"{PREFIX}: {name} initialises the CUDA driver before vLLM's engine is built")
    return call


def arm(torch) -> None:
    torch._C._cuda_getDeviceCount = _trip("cudaGetDeviceCount (torch._C._cuda_getDeviceCount)")
    torch._C._cuda_init = _trip("torch._C._cuda_init")
    torch.cuda._device_count_nvml = lambda: 1  # NVML sees one GPU without touching the driver
    torch.cuda._cudart = _state["cudart"] = object()  # a CUDA build has its runtime bindings: lazy init goes on
    _state.update(torch=torch, armed=True)


def disarm() -> None:
    """The CPU build again: no CUDA entry points (torch.cuda.is_available() is False)."""
    torch = _state["torch"]
    if torch is not None and _state["armed"]:
        del torch._C._cuda_getDeviceCount, torch._C._cuda_init
        torch.cuda._device_count_nvml = lambda: -1
        torch.cuda._cudart = None
        _state["armed"] = False


def _after(module_name: str, then) -> None:
    """Call `then(module)` once `module_name` has been imported (its code run)."""

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != module_name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                then(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


def _wrap_engine_start(llm_module) -> None:
    build = llm_module.LLM.__init__

    def __init__(self, *args, **kwargs):
        disarm()
        build(self, *args, **kwargs)

    llm_module.LLM.__init__ = __init__


_after("torch", arm)
_after("vllm.entrypoints.llm", _wrap_engine_start)
