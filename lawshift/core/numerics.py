"""CPU numerics pinned, so the default pipeline gives the same bytes from machine to machine (docs/reproducibility.md).

`pin()` runs when the package is imported (lawshift/__init__.py), before anything imports torch, and sets
ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=COMPATIBLE, oneDNN's ISA cap and two threads, overriding the caller;
`LAWSHIFT_NUMERICS=native` turns the pins off. `configure_torch` turns on deterministic algorithms on CPU-only
machines. What each pin does, what it costs and what could not be pinned: docs/reproducibility.md.
"""

from __future__ import annotations

import os
import platform
import sys

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
THREADS = 2
_state = {"pinned": False}


def pin() -> bool:
    """Set the pins in the environment, before torch and MKL read them (they read each once, when first used).
    `LAWSHIFT_NUMERICS=native` leaves the machine's own choices in place: faster, not reproducible elsewhere
    (for timing comparisons; the time files then say `pinned: false`). Returns whether the pins were set."""
    if os.environ.get("LAWSHIFT_NUMERICS") == "native":
        print("lawshift: LAWSHIFT_NUMERICS=native: CPU numerics not pinned; results can differ between machines",
              file=sys.stderr)
        _state["pinned"] = False
        return False
    if "torch" in sys.modules:
        print("lawshift: torch was imported before lawshift; the CPU numerics pins hold only if no torch operation "
              "has run yet (import lawshift first)", file=sys.stderr)
    threads = os.environ.get("LAWSHIFT_THREADS", str(THREADS))  # a Ray worker's share (python -m benchmarks scaleout)
    os.environ.update(PINS | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    _state["pinned"] = True
    return True


def configure_torch() -> None:
    """Once torch is imported: the thread count, and deterministic algorithms where no GPU is present."""
    import torch

    if not _state["pinned"]:
        return
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def settings() -> dict:
    """What decided this run's float results: the pins and whether they held, the capability torch runs, threads,
    the processor, and the GPU and library versions when there is one. Goes in every stage's time file."""
    out = {"pinned": _state["pinned"], **{k.lower(): os.environ.get(k) for k in PINS}, "cpu": cpu_name(),
           "machine": platform.machine()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out |= {"torch": torch.__version__, "aten_capability": torch.backends.cpu.get_cpu_capability(),
                "torch_threads": torch.get_num_threads(),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
        if torch.cuda.is_initialized():  # never the first CUDA call: a vLLM stage leaves the GPU to its engine
            out |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    return out
