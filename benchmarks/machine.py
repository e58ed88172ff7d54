"""What machine a measurement came from: CPU, cores, OS, Python and library versions, load.

``describe()`` is stored in every result JSON; ``fingerprint()`` is the part that must match for two
results to be compared in one table (the load and the time are not part of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata

from mobilekd.threads import usable_cores

LIBRARIES = ("mobilekd", "torch", "timm", "numpy", "onnxruntime", "onnx", "ai-edge-litert", "litert-torch",
             "ai-edge-quantizer", "coremltools", "faiss-cpu")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            import subprocess

            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD features that decide kernel speed (AVX2/AVX-512/VNNI/NEON...), when the OS tells them."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "asimd", "neon")
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("flags", "features")):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in present]
    except OSError:
        pass
    return []


# SIMD features that decide how fast int8 and fp32 kernels run, by the names /proc/cpuinfo gives them.
# x86: int8 dot products are fast with VNNI (avx512_vnni, avx_vnni) or AMX; without them XNNPACK's int8
# convolutions widen to 16 bit (AVX2 vpmaddubsw/vpmaddwd) and gain little over fp32 FMA.
# ARM: asimddp (SDOT/UDOT, "dotprod") and i8mm (SMMLA) are what make int8 faster than fp32 NEON.
X86_SIMD = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")
ARM_SIMD = ("asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16")
INT8_DOT = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
            "asimddp": "dotprod (SDOT)", "i8mm": "i8mm (SMMLA)"}


def simd_features(cpuinfo: str, where: str = "host") -> dict:
    """The SIMD features of a CPU from its ``/proc/cpuinfo`` text (this machine's, or a phone's over adb).

    Returns ``{"where": "host"|"phone", "isa": "x86"|"arm"|None, "features": {name: bool}, "int8_dot": [...]}``;
    a feature counts when every listed core has it (big.LITTLE phones list each core). ``int8_dot`` names the
    int8 dot-product instructions present; empty means int8 kernels have no dot-product instruction here."""
    lines = [line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line]
    sets = [set(value.split()) for key, value in lines if key.strip().lower() in ("flags", "features")]
    common = set.intersection(*sets) if sets else set()
    isa = "x86" if any(key.strip().lower() == "flags" for key, _ in lines) else \
        ("arm" if any(key.strip().lower() == "features" for key, _ in lines) else None)
    names = X86_SIMD if isa == "x86" else ARM_SIMD if isa == "arm" else ()
    return {"where": where, "isa": isa, "features": {name: name in common for name in names},
            "int8_dot": [label for name, label in INT8_DOT.items() if name in common]}


def host_simd() -> dict:
    """``simd_features`` of this machine (``isa`` None where there is no /proc/cpuinfo, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return simd_features(handle.read(), "host")
    except OSError:
        return simd_features("", "host")


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe() -> dict:
    """The machine description stored in every result file."""
    info = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "simd": host_simd(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "os": platform.platform(),
        "system": platform.system(),
        "arch": platform.machine(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "load_average": load_average(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info["fingerprint"] = fingerprint(info)
    return info


def fingerprint(info: dict) -> str:
    """Short hash of what makes timings comparable: CPU, cores, OS, Python and library versions."""
    key = {k: info.get(k) for k in ("cpu_model", "usable_cores", "system", "arch", "python", "libraries")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def short_name(info: dict) -> str:
    return f"{info.get('cpu_model', '?')} x{info.get('usable_cores', '?')}, {info.get('system', '?')} ({info.get('fingerprint', '?')})"


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    """The commit of the code that produced a result: ``git rev-parse HEAD`` of the checkout that holds this
    package (``root``), with ``-dirty`` when tracked files differ from it; None outside a git checkout (an
    installed copy, or no ``git``), so a number can always be traced to the code or is marked untraceable."""
    import subprocess

    root = os.path.abspath(root or os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(root):
            return None  # this package is not the top of a checkout (e.g. vendored inside another repository)
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None
