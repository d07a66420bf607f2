"""Memory figures: resident set of this process, and GPU memory on CUDA.

- RSS: ``psutil`` (current).  Peak: ``VmHWM`` from ``/proc/self/status`` (Linux), else
  ``resource.getrusage`` (``ru_maxrss``).  On Linux the peak can be reset by writing ``5``
  to ``/proc/self/clear_refs``; when that works a probe reports the peak *during* its
  window, otherwise the process-lifetime peak (``peak_scope`` says which).
- ORT arena: onnxruntime's Python API exposes no allocator statistics, so the CPU arena is
  not reported on its own; it is part of the RSS growth a probe measures (session weights,
  arena chunks for the activations of every shape it ran).
- GPU: NVML (``pynvml``, optional) per-process used memory, else ``nvidia-smi
  --query-compute-apps`` for this pid, else device-wide used memory (``scope`` says
  which).  ORT's CUDA arena does not give memory back, so the figure after a run is its
  peak so far.  ORT's ``device_id`` counts the devices CUDA can see; NVML and nvidia-smi
  count all of them, so ``nvml_device`` translates through ``CUDA_VISIBLE_DEVICES``
  (indices or ``GPU-``/``MIG-`` UUIDs).  Without that variable the two orders are taken to
  agree (``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes sure of it on machines with mixed GPUs).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

__all__ = [
    "from_psutil",
    "rss_bytes",
    "peak_rss_bytes",
    "reset_peak_rss",
    "MemoryProbe",
    "gpu_used_bytes",
    "nvidia_smi",
    "parse_compute_apps",
    "parse_gpu_used",
    "nvml_device",
    "nvml_handle",
]

log = logging.getLogger(__name__)


def from_psutil(read):
    """``read(psutil)``, or None when psutil is missing or cannot tell."""
    try:
        import psutil

        return read(psutil)
    except Exception:
        return None


def rss_bytes() -> int | None:
    return from_psutil(lambda p: int(p.Process().memory_info().rss))


def _vm_hwm() -> int | None:
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes() -> int | None:
    """Peak resident set of this process since start (or since the last reset)."""
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    except Exception:
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False when refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def nvidia_smi(args: list[str], timeout: float = 10.0) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def parse_compute_apps(text: str, pid: int) -> int | None:
    """Bytes used by ``pid`` in ``nvidia-smi --query-compute-apps=pid,used_memory
    --format=csv,noheader,nounits`` output (MiB), or None when the pid is not listed."""
    total, found = 0, False
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0] == str(pid):
            try:
                total += int(float(parts[1])) * 2**20
                found = True
            except ValueError:
                continue
    return total if found else None


def parse_gpu_used(text: str, device_id: int) -> int | None:
    """Bytes used on GPU ``device_id`` in ``--query-gpu=index,memory.used`` output (MiB)."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0] == str(device_id):
            try:
                return int(float(parts[1])) * 2**20
            except ValueError:
                return None
    return None


def nvml_device(device_id: int = 0, visible: str | None = None) -> int | str:
    """The NVML / nvidia-smi identity (index or UUID) of CUDA device ``device_id``.

    ``visible``: the ``CUDA_VISIBLE_DEVICES`` value (default: from the environment).  Its
    ``device_id``-th entry is the device; without it (or an entry out of range) the index
    is ``device_id`` itself."""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible or not visible.strip():
        return device_id
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not 0 <= device_id < len(entries):
        return device_id
    e = entries[device_id]
    return int(e) if e.isdigit() else e


def nvml_handle(pynvml, device_id: int):
    """The NVML handle of CUDA device ``device_id`` (``nvml_device``)."""
    dev = nvml_device(device_id)
    return (
        pynvml.nvmlDeviceGetHandleByIndex(dev)
        if isinstance(dev, int)
        else pynvml.nvmlDeviceGetHandleByUUID(dev)
    )


def gpu_used_bytes(device_id: int = 0) -> tuple[int | None, str | None, str | None]:
    """``(bytes, source, scope)``: GPU memory used by this process (scope ``process``) or, when
    the process is not visible (containers with their own pid namespace), by the whole
    device (scope ``device``).  ``(None, None, None)`` without NVML and nvidia-smi.
    ``device_id`` is ORT's (CUDA's) device index (``nvml_device``)."""
    pid = os.getpid()
    with suppress(Exception):
        import pynvml  # optional

        pynvml.nvmlInit()
        try:
            h = nvml_handle(pynvml, device_id)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == pid and p.usedGpuMemory is not None:
                    return int(p.usedGpuMemory), "nvml", "process"
            return int(pynvml.nvmlDeviceGetMemoryInfo(h).used), "nvml", "device"
        finally:
            pynvml.nvmlShutdown()
    dev = nvml_device(device_id)
    out = nvidia_smi(
        [
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
            f"--id={dev}",
        ]
    )
    if out is not None:
        used = parse_compute_apps(out, pid)
        if used is not None:
            return used, "nvidia-smi", "process"
    out = nvidia_smi(
        ["--query-gpu=index,memory.used", "--format=csv,noheader,nounits", f"--id={dev}"]
    )
    if out is not None:
        # one line for the device asked for: match on its own index column
        first = out.strip().splitlines()[:1]
        idx = first[0].split(",")[0].strip() if first else None
        used = parse_gpu_used(out, int(idx)) if idx and idx.isdigit() else None
        if used is not None:
            return used, "nvidia-smi", "device"
    return None, None, None


class MemoryProbe:
    """Memory growth over a window (``with MemoryProbe(gpu=...) as p: ...``; ``p.to_dict()``).

    ``rss_delta_bytes``: RSS after minus before.  ``peak_rss_delta_bytes``: the peak during
    the window minus the RSS before (``peak_scope="window"``), or the process-lifetime peak
    minus the RSS before when the kernel refused the reset (``peak_scope="process"``).
    """

    def __init__(self, *, gpu: bool = False, device_id: int = 0):
        self.gpu = gpu
        self.device_id = device_id
        self.result: dict = {}

    def __enter__(self) -> MemoryProbe:
        self._reset = reset_peak_rss()
        self._rss0 = rss_bytes()
        if self.gpu:
            self._gpu0 = gpu_used_bytes(self.device_id)
        return self

    def __exit__(self, *exc) -> None:
        rss1, peak = rss_bytes(), peak_rss_bytes()
        r = {
            "rss_before_bytes": self._rss0,
            "rss_after_bytes": rss1,
            "rss_delta_bytes": (rss1 - self._rss0)
            if rss1 is not None and self._rss0 is not None
            else None,
            "peak_rss_bytes": peak,
            "peak_rss_delta_bytes": (peak - self._rss0)
            if peak is not None and self._rss0 is not None
            else None,
            "peak_scope": "window" if self._reset else "process",
        }
        if self.gpu:
            g1 = gpu_used_bytes(self.device_id)
            g0 = self._gpu0
            r["gpu_used_before_bytes"], r["gpu_used_after_bytes"] = g0[0], g1[0]
            r["gpu_delta_bytes"] = (
                (g1[0] - g0[0]) if g0[0] is not None and g1[0] is not None else None
            )
            r["gpu_source"], r["gpu_scope"] = g1[1], g1[2]
        self.result = r

    def to_dict(self) -> dict:
        return dict(self.result)
