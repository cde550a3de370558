"""Staging the MNIST files for the bench scripts (the shared data folder is read-only)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torchvision

DEFAULT_DATA = Path(os.environ.get("LIGHTNING_CL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def stage_mnist(source: Path = DEFAULT_DATA) -> Path:
    """A temporary root with ``MNIST/raw`` extracted from ``source`` (md5 checked, no download)."""
    staged = Path(tempfile.mkdtemp(prefix="lightning_cl_mnist_"))
    shutil.copytree(source / "MNIST" / "raw", staged / "MNIST" / "raw")
    for train in (True, False):
        torchvision.datasets.MNIST(str(staged), train=train, download=True)
    return staged
