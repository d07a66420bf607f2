"""What the figures were measured on: CPU, cores, load, library versions, provider settings.

Everything here is read, never changed.  ``effective_threads`` follows onnxruntime's rule
for the CPU provider: without ``intra_op_num_threads`` a session uses one thread per
physical core.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from contextlib import suppress
from pathlib import Path

from ..session_options import machine_cores
from .memory import from_psutil, nvidia_smi, nvml_device, nvml_handle

__all__ = [
    "cpu_model",
    "physical_cores",
    "effective_threads",
    "load_average",
    "capture",
    "oversubscription_warning",
    "gpu_info",
    "cpu_isa",
    "isa_summary",
]

log = logging.getLogger(__name__)


def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The first non-empty value of one of ``keys`` in ``/proc/cpuinfo`` (None when unreadable)."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keys and value.strip():
                return value.strip()
    return None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    return _cpuinfo(("model name", "Hardware", "Processor")) or platform.processor() or platform.machine() or "unknown"


# /proc/cpuinfo flag -> extension; x86 "flags", ARM "Features" (asimddp: dot product)
_ISA_FLAGS = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni", "avx512vnni"),
    "amx": ("amx_int8", "amx_tile"),
    "arm_dotprod": ("asimddp",),
    "arm_i8mm": ("i8mm",),
}
_ISA_NAMES = {"avx2": "AVX2", "avx512": "AVX-512", "vnni": "VNNI", "amx": "AMX", "arm_dotprod": "ARM dot-product", "arm_i8mm": "ARM i8mm"}


@functools.cache
def cpu_isa() -> dict[str, bool]:
    """The CPU's instruction-set extensions that decide INT8/FP16 speed, read once from
    ``/proc/cpuinfo`` (all False where it cannot be read): AVX2, AVX-512, VNNI (AVX512-VNNI
    or AVX-VNNI: INT8 dot products; without it ORT's ConvInteger/MatMulInteger are slow),
    AMX, ARM dot-product and i8mm."""
    flags = set((_cpuinfo(("flags", "Features")) or "").split())
    return {name: any(f in flags for f in wanted) for name, wanted in _ISA_FLAGS.items()}


def isa_summary(isa: dict[str, bool] | None = None) -> str:
    """"AVX2, AVX-512, VNNI" or "no AVX2/AVX-512/VNNI/AMX/dot-product" for a report line."""
    isa = cpu_isa() if isa is None else isa
    have = [_ISA_NAMES[k] for k, v in isa.items() if v]
    return ", ".join(have) if have else "none of " + "/".join(_ISA_NAMES.values())


def physical_cores() -> int:
    return int(from_psutil(lambda p: p.cpu_count(logical=False)) or os.cpu_count() or 1)


def effective_threads(threads: int | None, provider: str = "cpu") -> int:
    """Intra-op threads a CPU session will use (ORT default: physical cores, within affinity)."""
    return int(threads) if threads else max(1, min(physical_cores(), machine_cores()))


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def oversubscription_warning(threads: int | None, concurrency: int, provider: str) -> str | None:
    """A warning when intra-op threads x concurrent workers exceed the usable cores."""
    if provider != "cpu":
        return None
    eff = effective_threads(threads, provider)
    cores = machine_cores()
    if eff * concurrency > cores:
        return (
            f"{eff} intra-op thread(s) x {concurrency} concurrent worker(s) = {eff * concurrency} > {cores} usable cores: "
            "the throughput workers compete for cores (the latency phase runs one request at a time)"
        )
    return None


def busy_warning() -> str | None:
    """A warning when the machine was already busy (1-minute load >= half the cores)."""
    load = load_average()
    cores = machine_cores()
    if load and load[0] >= 0.5 * cores:
        return (
            f"machine busy before the run: load average {load[0]} on {cores} usable cores; expect long tails and wider "
            "confidence intervals (--threads 1 suffers least from shared cores)"
        )
    return None


def gpu_info(device_id: int = 0) -> dict | None:
    """Name, driver and total memory of CUDA device ``device_id`` (NVML, else nvidia-smi;
    translated through ``CUDA_VISIBLE_DEVICES``, see ``memory.nvml_device``), or None."""
    with suppress(Exception):
        import pynvml  # optional

        pynvml.nvmlInit()
        try:
            h = nvml_handle(pynvml, device_id)
            name = pynvml.nvmlDeviceGetName(h)
            driver = pynvml.nvmlSystemGetDriverVersion()
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            return {
                "name": name.decode() if isinstance(name, bytes) else name,
                "driver": driver.decode() if isinstance(driver, bytes) else driver,
                "memory_total_bytes": int(mem.total),
                "source": "nvml",
            }
        finally:
            pynvml.nvmlShutdown()
    out = nvidia_smi(
        [
            "--query-gpu=index,name,driver_version,memory.total",
            "--format=csv,noheader,nounits",
            f"--id={nvml_device(device_id)}",
        ]
    )
    if out is None:
        return None
    for line in out.splitlines()[:1]:  # --id selects exactly one device
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            try:
                total = int(float(parts[3])) * 2**20
            except ValueError:
                total = None
            return {
                "name": parts[1],
                "driver": parts[2],
                "memory_total_bytes": total,
                "source": "nvidia-smi",
            }
    return None


def _governor() -> str | None:
    try:
        return (
            Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
            or None
        )
    except OSError:
        return None


def capture(
    provider: str,
    *,
    session=None,
    threads: int | None = None,
    concurrency: int = 1,
    io_binding: bool = False,
    cuda_options: dict | None = None,
) -> dict:
    """The environment block of the report (see docs/readme/bench.md for its schema)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    return {
        "cpu": cpu_model(),
        "cpu_isa": isa_summary(),
        "cores_logical": os.cpu_count(),
        "cores_physical": physical_cores(),
        "cores_usable": machine_cores(),
        "cpu_mhz": from_psutil(lambda p: round(float(p.cpu_freq().current), 1) if p.cpu_freq() else None),
        "cpu_governor": _governor(),
        "load_average": load_average(),  # at the end of the run; see load_average_before
        "memory_total_bytes": from_psutil(lambda p: int(p.virtual_memory().total)),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "providers_available": list(ort.get_available_providers()),
        "provider": provider,
        "ort_providers": list(session.get_providers()) if session is not None else None,
        "provider_options": dict(session.get_provider_options())
        if session is not None
        else (dict(cuda_options or {}) if provider == "cuda" else {}),
        "intra_op_threads": threads,
        "intra_op_threads_effective": effective_threads(threads, provider),
        "execution_mode": "sequential",
        "graph_optimization_level": "all (onnxruntime default)",
        "concurrency": concurrency,
        "io_binding": bool(io_binding),
        "gpu": gpu_info(int((cuda_options or {}).get("device_id", 0)))
        if provider == "cuda"
        else None,
    }
