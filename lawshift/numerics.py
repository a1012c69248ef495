"""CPU numerics pinned, so the default pipeline gives the same bytes on any x86-64 machine with AVX2, Intel or AMD.

Float results on a CPU depend on which instructions the kernels use (a sum in AVX-512 lanes rounds differently from
one in AVX2 lanes) and on how work is split over threads. torch picks both per machine, so without a pin two
machines train two different tiny bases, and sampling amplifies the difference. `pin()` runs when the package is
imported (lawshift/__init__.py), which every stage does before anything imports torch, and sets:

* `ATEN_CPU_CAPABILITY=avx2`: torch's own vectorised kernels (initialisation, softmax, norms, AdamW, reductions)
  use their AVX2 build on every machine that has AVX2, AVX-512 ones included;
* `MKL_CBWR=COMPATIBLE`: MKL, which does every fp32 matmul of torch's CPU wheel, takes its COMPATIBLE code path in
  Conditional Numerical Reproducibility mode: SSE2 without the approximate rcpps/rsqrtps instructions, the one
  branch MKL supports on Intel and non-Intel processors alike (its AVX2 branch is Intel-only: an AMD machine falls
  back to MKL's automatic choice, and other digits). Reproducible for a fixed thread count, which is pinned below;
  `MKL_ENABLE_INSTRUCTIONS=AVX2` keeps a caller's wider setting from reaching MKL's other functions;
* `ONEDNN_MAX_CPU_ISA=DNNL_MAX_CPU_ISA=AVX2`: the same for oneDNN, should an op take its path;
* `OMP_NUM_THREADS=MKL_NUM_THREADS=2` (and `torch.set_num_threads(2)`): the same split of work everywhere (two
  threads halve the tiny warm-start's time on 2 cores; more would not split its small matrices further).

They override what the caller set: forcing `ATEN_CPU_CAPABILITY=avx512` from outside changes nothing
(tests/test_numerics.py runs the base stage under forced capabilities and compares bytes). `LAWSHIFT_NUMERICS=native`
turns the pins off, to measure what they cost. When torch is imported,
`configure_torch` also turns on `torch.use_deterministic_algorithms` on CPU-only machines (warn-only: an op without a
deterministic version warns instead of stopping a run). What it costs and what could not be
pinned is in the README (Reproducibility): the COMPATIBLE branch is slower (the warm-start takes about 1.6x its time
on the AVX2 branch), and bitsandbytes' 4-bit inference kernels pick AVX-512-BF16 code by CPUID (the pipeline never
runs them: training runs in training mode, eval unquantised).
GPU runs are not bitwise reproducible; `settings()` records what a run ran on in every stage's time file.
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
    os.environ.update(PINS)
    _state["pinned"] = True
    return True


def configure_torch() -> None:
    """Once torch is imported: the thread count, and deterministic algorithms where no GPU is present."""
    import torch

    if not _state["pinned"]:
        return
    torch.set_num_threads(THREADS)
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
