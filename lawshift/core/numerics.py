"""CPU numerics pinned, so the default pipeline gives the same bytes from machine to machine (docs/reproducibility.md).

`pin()` runs when the package is imported (lawshift/__init__.py), before anything imports torch, and sets
ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=COMPATIBLE, oneDNN's ISA cap and two threads, overriding the caller. It also
answers MKL's CPU-vendor queries as an Intel processor would (`pin_mkl_vendor`): MKL runs its own SGEMM kernels on a
CPU it takes for an AMD Zen whatever MKL_CBWR says. `LAWSHIFT_NUMERICS=native` turns the pins off.
`configure_torch` turns on deterministic algorithms on CPU-only machines.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
THREADS = 2
# MKL's vendor queries (exported by torch's libtorch_cpu.so and called through its PLT) answered as on an Intel
# processor, where MKL_CBWR=COMPATIBLE decides the SGEMM path; on an AMD Zen MKL would ignore it (issue 27).
MKL_VENDOR_SOURCE = """/* lawshift/core/numerics.py: MKL's vendor queries answered as on an Intel processor */
int mkl_serv_intel_cpu(void) { return 1; }
int mkl_serv_intel_cpu_true(void) { return 1; }
int mkl_serv_cpuiszen(void) { return 0; }
int mkl_serv_cpuisbulldozer(void) { return 0; }
int mkl_serv_cpuisitbarcelona(void) { return 0; }
"""
_state = {"pinned": False, "mkl_vendor": "not pinned"}


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
    _state["mkl_vendor"] = pin_mkl_vendor()
    return True


def _vendor_library() -> Path | None:
    """The compiled MKL_VENDOR_SOURCE, built once per user into a cache (atomically), or None without a compiler."""
    digest = hashlib.sha256(MKL_VENDOR_SOURCE.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lawshift"
    for folder in (cache, Path(tempfile.gettempdir()) / f"lawshift-{os.getuid()}"):
        lib = folder / f"mkl_vendor_{digest}.so"
        if lib.is_file():
            return lib
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                (Path(tmp) / "v.c").write_text(MKL_VENDOR_SOURCE, encoding="utf-8")
                subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(Path(tmp) / "v.so"), str(Path(tmp) / "v.c")],
                               check=True, capture_output=True, timeout=120)
                os.replace(Path(tmp) / "v.so", lib)
            return lib
        except (OSError, subprocess.SubprocessError):
            continue  # an unwritable cache: try the temp folder
    return None


def pin_mkl_vendor() -> str:
    """Load the vendor answers into the process's global symbol scope before torch loads: libtorch_cpu.so, loaded
    later, then binds MKL's queries to them (the first definition loaded wins). Returns what was pinned, or why not."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "not x86-64 Linux (no MKL)"
    if "torch" in sys.modules:
        return "torch imported before lawshift"
    lib = _vendor_library()
    if lib is None:
        print("lawshift: no C compiler: MKL keeps its own CPU-vendor dispatch, so an AMD machine's float results can "
              "differ from an Intel one's (docs/reproducibility.md)", file=sys.stderr)
        return "no C compiler"
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    return "intel"


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
    out = {"pinned": _state["pinned"], **{k.lower(): os.environ.get(k) for k in PINS},
           "mkl_vendor": _state["mkl_vendor"], "cpu": cpu_name(),
           "machine": platform.machine()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out |= {"torch": torch.__version__, "aten_capability": torch.backends.cpu.get_cpu_capability(),
                "torch_threads": torch.get_num_threads(),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
        if torch.cuda.is_initialized():  # never the first CUDA call: a vLLM stage leaves the GPU to its engine
            out |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    return out
