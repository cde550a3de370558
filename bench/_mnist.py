"""What the bench scripts share: staging the MNIST files (the shared folder is read-only), a quiet Trainer."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor

from lightning_cl.benchmarks.mnist import download_mnist, load_mnist

DEFAULT_DATA = Path(os.environ.get("LIGHTNING_CL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def stage_mnist(source: Path = DEFAULT_DATA) -> Path:
    """A temporary root with ``MNIST/raw`` extracted from ``source`` (md5 checked, no download)."""
    staged = Path(tempfile.mkdtemp(prefix="lightning_cl_mnist_"))
    shutil.copytree(source / "MNIST" / "raw", staged / "MNIST" / "raw")
    download_mnist(staged)
    return staged


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """One CPU process, no logger, checkpoint, progress bar or summary: only the work is timed."""
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**settings, **kwargs})


def mnist_tensors(root: Path = DEFAULT_DATA) -> tuple[Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: normalised MNIST in memory, staged from ``root``."""
    staged = stage_mnist(root)
    tensors = []
    for train in (True, False):
        data = load_mnist(staged, train=train)
        x, y = data.__getitems__(range(len(data))).tensors
        tensors += [x.contiguous(), y]
    shutil.rmtree(staged)
    return tuple(tensors)
