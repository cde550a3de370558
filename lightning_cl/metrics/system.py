"""Readings of the process: CPU time, RAM, and CUDA memory (no dependency beyond the standard library)."""

from __future__ import annotations

import os
import sys
import time

import torch

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

_MB = 1024.0 * 1024.0


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, in seconds, over all its threads."""
    return time.process_time()


def peak_ram_mb() -> float:
    """Peak resident memory of this process in MiB (``getrusage``; NaN where unavailable)."""
    if resource is None:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0


def ram_mb() -> float:
    """Current resident memory of this process in MiB, from ``/proc/self/statm``.

    Where ``/proc`` does not exist (macOS, Windows) this is the peak, :func:`peak_ram_mb`.
    """
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_ram_mb()
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / _MB


def system_metrics(device: torch.device, cpu_percent: float | None = None) -> dict[str, float]:
    """The ``system/*`` values of :class:`~lightning_cl.metrics.ContinualMetrics` for this process.

    Args:
        device: the device of the model; CUDA memory is read when it is a CUDA device.
        cpu_percent: CPU use over the last interval, in percent of one core (left out if None).

    Example:
        >>> values = system_metrics(torch.device("cpu"), cpu_percent=50.0)
        >>> sorted(values)
        ['system/cpu_percent', 'system/cpu_seconds', 'system/peak_ram_mb', 'system/ram_mb']
        >>> values["system/ram_mb"] > 0
        True
    """
    ram, peak = ram_mb(), peak_ram_mb()
    # two sources that count pages slightly differently: the peak is never below the current value
    values = {
        "system/cpu_seconds": cpu_seconds(),
        "system/ram_mb": ram,
        "system/peak_ram_mb": peak if peak >= ram else ram,
    }
    if cpu_percent is not None:
        values["system/cpu_percent"] = cpu_percent
    if device.type == "cuda":
        values["system/gpu_memory_mb"] = torch.cuda.memory_allocated(device) / _MB
        values["system/gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / _MB
    return values
