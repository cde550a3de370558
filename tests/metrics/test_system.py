"""Process readings of the ``system`` metrics, against /proc/self/status."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_cl.metrics import system

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    raise KeyError(field)


@linux_only
def test_ram_matches_proc_status() -> None:
    assert system.ram_mb() == pytest.approx(status_mb("VmRSS"), abs=2.0)
    assert system.peak_ram_mb() == pytest.approx(status_mb("VmHWM"), abs=2.0)


@linux_only
def test_ram_follows_an_allocation() -> None:
    before = system.ram_mb()
    block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
    assert system.ram_mb() - before == pytest.approx(64, abs=8)
    assert system.peak_ram_mb() >= before + 56
    del block


def test_cpu_seconds_grow_with_work() -> None:
    before = system.cpu_seconds()
    assert sum(range(3_000_000)) > 0  # some tens of milliseconds of CPU
    assert system.cpu_seconds() - before > 0.005


def test_system_metrics_on_cpu_and_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    values = system.system_metrics(torch.device("cpu"))
    assert set(values) == {"system/cpu_seconds", "system/ram_mb", "system/peak_ram_mb"}
    assert values["system/peak_ram_mb"] >= values["system/ram_mb"] > 0
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 * 1024 * 1024)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 5 * 1024 * 1024)
    values = system.system_metrics(torch.device("cuda", 0), cpu_percent=12.5)
    assert (values["system/gpu_memory_mb"], values["system/gpu_peak_memory_mb"]) == (3.0, 5.0)
    assert values["system/cpu_percent"] == 12.5


def test_without_proc_the_current_reading_is_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", no_proc)
    assert system.ram_mb() == system.peak_ram_mb()
    if sys.platform != "win32":
        assert system.peak_ram_mb() > 0
