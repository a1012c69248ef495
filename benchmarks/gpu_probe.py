"""What the GPU smoke run learns about the machine without initialising CUDA in its own process.

The driver's CUDA version comes from NVML (else `nvidia-smi`), the GPU set's from the installed torch's
`torch/version.py` (read as text), library versions from a child process (`probe`), memory from `nvidia-smi`.
`cuda_problem` compares the two CUDA versions before anything else runs (tests/test_gpu_smoke.py).
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

POLL_SECONDS = 0.5
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
# Run in a child process with the stages' environment: importing vLLM there changes nothing here.
PROBE = ("import json, torch, vllm; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
         "'vllm': getattr(vllm, '__version__', None), 'vllm_from': vllm.__file__}))")


def driver_cuda() -> str | None:
    """The newest CUDA version the NVIDIA driver supports ("13.0"), from NVML (no CUDA context is created), else
    from `nvidia-smi`'s header; None without a driver."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() == 0:
            version = ctypes.c_int()
            ok = nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(version)) == 0
            nvml.nvmlShutdown()
            if ok:
                return f"{version.value // 1000}.{version.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"CUDA Version:\s*(\d+\.\d+)", out)
    return found.group(1) if found else None


def torch_build() -> dict[str, str | None]:
    """The installed torch's version and the CUDA version it was built for (None: a CPU build), read from
    torch/version.py without importing torch; {} when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return {}
    return version_fields((Path(spec.origin).parent / "version.py").read_text(encoding="utf-8"))


def version_fields(source: str) -> dict[str, str | None]:
    """`__version__` and `cuda` of a torch/version.py."""
    out = {}
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id in ("__version__", "cuda") and node.value is not None:
            out["torch" if target.id == "__version__" else "cuda"] = ast.literal_eval(node.value)
    return out


def cuda_problem(driver: str | None, build: Mapping[str, str | None]) -> str | None:
    """Why the GPU set cannot run on this driver, in one line naming both versions, or None. A CUDA runtime runs on
    any driver of its major version or newer (CUDA's minor-version compatibility)."""
    needed = build.get("cuda")
    if not build:
        return "torch is not installed here; install the GPU set (make gpu-venv)"
    if needed is None:
        return f"torch {build.get('torch')} is a CPU build; install the GPU set (make gpu-venv)"
    if driver is None:
        return f"no NVIDIA driver found (NVML, nvidia-smi); the GPU set (torch {build.get('torch')}) needs one " \
               f"that supports CUDA {needed}"
    if int(driver.split(".")[0]) < int(needed.split(".")[0]):
        return (f"the NVIDIA driver supports CUDA {driver}, the GPU set (torch {build.get('torch')}) needs CUDA "
                f"{needed}: install a driver for CUDA {needed.split('.')[0]}.x or newer")
    return None


def probe(env: Mapping[str, str]) -> dict:
    """torch's and vLLM's versions as a stage sees them (a child process with the stages' environment); raises
    RuntimeError with the child's last error line when vLLM does not import."""
    proc = subprocess.run([sys.executable, "-c", PROBE], env=dict(env), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"vllm is not importable ({last}); install requirements-gpu.txt (make gpu-venv)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES as nvidia-smi ids, when it is a list of indices; [] = every GPU."""
    ids = [s.strip() for s in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    return ids if ids and all(s.isdigit() for s in ids) else []


def gpu_memory_mb() -> int | None:
    """The largest memory use (MB) over the visible GPUs now; None without nvidia-smi or an answer."""
    ids = visible_gpus()
    cmd = NVIDIA_SMI + ([f"--id={','.join(ids)}"] if ids else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    values = [int(v) for v in out.split() if v.isdigit()]
    return max(values) if values else None


class GpuPeak:
    """Polls gpu_memory_mb() in a thread while the `with` block runs; `peak` is the largest seen (None: none)."""

    def __init__(self, enabled: bool):
        self.enabled, self.peak = enabled, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while True:
            mb = gpu_memory_mb()
            if mb is not None:
                self.peak = mb if self.peak is None else max(self.peak, mb)
            if self._stop.wait(POLL_SECONDS):
                return

    def __enter__(self) -> GpuPeak:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
