"""Machine-independent CPU numerics: the base stage gives the same bytes whatever capability the machine offers.

Another machine is emulated by forcing, from outside, what differs between machines: the kernels torch picks
(ATEN_CPU_CAPABILITY), MKL's and oneDNN's instruction sets, the thread count. The stage pins them itself
(lawshift/core/numerics.py), so every run must write byte-identical weights. The control shows that the forcing does
reach the computation when nothing pins it: the same stage with the pins off (LAWSHIFT_NUMERICS=native) writes
other bytes under another capability.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from conftest import ENV, REPO, read_json

from lawshift.core import numerics

pytestmark = pytest.mark.slow

# The warm-start is the computation most sensitive to float rounding (300 steps in the default run; 20 here).
TINY = {"model": {"tiny": {"warmup_steps": 20, "hidden_size": 64, "intermediate_size": 256, "vocab_size": 1000}}}
FORCED = {  # what another machine (or a caller) would pick: none of it may reach the result
    "as is": {},
    "generic kernels": {"ATEN_CPU_CAPABILITY": "default"},
    "an AVX-512 machine": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                           "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "DNNL_MAX_CPU_ISA": "AVX512_CORE"},
    "MKL's automatic branch (what a non-Intel machine gets from an Intel-only one)": {"MKL_CBWR": "AUTO"},
    "an AVX2 machine, one thread": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                    "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1",
                                    "MKL_NUM_THREADS": "1"},
}


def weights_digest(project, env: dict) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "base.py")], cwd=project, env={**ENV, **env},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return hashlib.sha256((project / "models" / "base" / "model.safetensors").read_bytes()).hexdigest()


def test_forced_capabilities_give_identical_bytes(project):
    root = project(base=False, params=TINY)
    digests = {name: weights_digest(root, env) for name, env in FORCED.items()}
    assert len(set(digests.values())) == 1, digests
    recorded = read_json(root / "metrics" / "time" / "base.json")["numerics"]
    assert recorded["pinned"] is True
    assert (recorded["aten_capability"], recorded["mkl_cbwr"], recorded["torch_threads"]) == ("AVX2", "COMPATIBLE",
                                                                                             numerics.THREADS)


def test_control_the_mkl_branch_reaches_the_bytes(project):
    # without the pins, MKL's AUTO and COMPATIBLE branches write other weights: the MKL pin is not a no-op
    root = project(base=False, params=TINY)
    native = {branch: weights_digest(root, {"LAWSHIFT_NUMERICS": "native", "ATEN_CPU_CAPABILITY": "avx2",
                                            "OMP_NUM_THREADS": "2", "MKL_CBWR": branch})
              for branch in ("AUTO", "COMPATIBLE")}
    assert native["AUTO"] != native["COMPATIBLE"]


def test_control_without_the_pin_the_forcing_changes_the_bytes(project):
    root = project(base=False, params=TINY)
    native = {cap: weights_digest(root, {"LAWSHIFT_NUMERICS": "native", "ATEN_CPU_CAPABILITY": cap})
              for cap in ("default", "avx2")}
    assert native["default"] != native["avx2"]
    recorded = read_json(root / "metrics" / "time" / "base.json")["numerics"]
    assert recorded["pinned"] is False and recorded["aten_capability"] == "AVX2"


# --- MKL's vendor dispatch (issue 27) ----------------------------------------------------------------------------
# MKL asks the CPU who made it (mkl_serv_intel_cpu, mkl_serv_cpuiszen, exported by libtorch_cpu.so and called
# through its PLT) and, on a CPU it takes for an AMD Zen, runs its own SGEMM kernels whatever MKL_CBWR says. An AMD
# machine is emulated by a library answering those queries as a Zen: loaded into the global symbol scope before
# torch, it reaches MKL. The pin loads the Intel answers first (numerics.pin_mkl_vendor), so the first matmul of the
# warm-start (the first q_proj addmm, op 247 of the base stage's trace) must keep its bytes. docs/reproducibility.md.
ZEN_SHIM = """
int mkl_serv_intel_cpu_true(void) { return 0; }
int mkl_serv_intel_cpu(void) { return 0; }
int mkl_serv_cpuiszen(void) { return 1; }
"""
FIRST_ADDMM = """
import ctypes, sys
if sys.argv[1] == "zen before the pin":
    ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_GLOBAL)
import lawshift
if sys.argv[1] == "zen after the pin":
    ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_GLOBAL)
import hashlib, torch
from lawshift.core import numerics
numerics.configure_torch()
g = torch.Generator().manual_seed(0)
x, w, b = torch.randn(2512, 128, generator=g), torch.randn(128, 128, generator=g), torch.randn(128, generator=g)
print(hashlib.blake2b(torch.addmm(b, x, w.t()).numpy().tobytes(), digest_size=8).hexdigest())
"""


def mkl_vendor_shim(tmp_path) -> str:
    import ctypes
    import shutil

    import torch  # only to find libtorch_cpu.so; the subprocesses load their own

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the vendor shim")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    if not hasattr(lib, "mkl_serv_cpuiszen"):
        pytest.skip("this torch does not export MKL's vendor queries (no statically linked MKL)")
    src, so = tmp_path / "zen.c", tmp_path / "zen.so"
    src.write_text(ZEN_SHIM)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    return str(so)


def first_addmm_digest(how: str, shim: str) -> str:
    proc = subprocess.run([sys.executable, "-c", FIRST_ADDMM, how, shim], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()[-1]


def test_matmul_same_bytes_when_mkl_sees_an_amd_zen(tmp_path):
    shim = mkl_vendor_shim(tmp_path)
    digests = {how: first_addmm_digest(how, shim) for how in ("this CPU", "zen after the pin", "zen before the pin")}
    assert digests["zen after the pin"] == digests["this CPU"], digests  # the pin's Intel answers win
    # control: the Zen answers do reach MKL's SGEMM and change its bytes when nothing answers before them
    assert digests["zen before the pin"] != digests["this CPU"], digests


def test_the_vendor_pin_is_recorded_and_skipped_after_torch():
    assert numerics.settings()["mkl_vendor"] in ("intel", "no C compiler", "not x86-64 Linux (no MKL)")
    assert numerics.pin_mkl_vendor() == "torch imported before lawshift"  # torch is loaded by now
