"""Shared fixtures: real data from ../shared/data (or $LIGHTNING_CL_DATA), small models, a quiet Trainer."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]

# Tiny models gain nothing from intra-op threads, and on 2 cores a second thread per process
# oversubscribes the CPU as soon as anything else runs (two-process DDP tests included).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_process_state() -> Any:
    """Per test: one intra-op thread, and no W&B run left active afterwards.

    Lightning's DDP strategy sets the thread count of the process it runs in (an in-process
    one-device ``ddp`` run does), and the spinning threads then slow every later test tenfold on
    a busy machine; a W&B run left active would be reused by the next ``WandbLogger``.
    """
    torch.set_num_threads(1)
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def data_root() -> Path:
    return Path(os.environ.get("LIGHTNING_CL_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data not found at {root} (set LIGHTNING_CL_DATA to the folder of ../shared/data)")
    return root


@pytest.fixture(scope="session")
def mnist_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with MNIST/raw/*.gz staged exactly as torchvision downloads them."""
    root = tmp_path_factory.mktemp("mnist")
    shutil.copytree(shared_data / "MNIST" / "raw", root / "MNIST" / "raw")
    for f in (root / "MNIST" / "raw").iterdir():
        f.chmod(0o644)
    return root


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        max_epochs=1,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


class TinyClassifier(L.LightningModule):
    """A user module as users write them: logs with self.log, returns the loss."""

    def __init__(self, in_features: int = 64, num_classes: int = 10, lr: float = 0.1, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("user_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def make_tensor_stream(num_experiences: int = 3, per_class: int = 20, num_classes: int = 6, **kwargs: Any):
    """A small, learnable class-incremental stream: one Gaussian blob per class."""
    from lightning_cl.benchmarks import from_tensors

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(num_classes, 8, generator=g) * 3
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = centers[y] + torch.randn(len(y), 8, generator=g)
    kwargs.setdefault("class_order", list(range(num_classes)))
    kwargs.setdefault("batch_size", 16)
    return from_tensors(x, y, x.clone(), y.clone(), num_experiences=num_experiences, **kwargs)


def _ddp_entry(rank: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)
    fn(rank, *args)
    if torch.distributed.is_initialized():
        # a gloo group left to interpreter shutdown can abort the process ("terminate called
        # without an active exception") after the work is done: close it while both ranks are here
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_two_processes(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(rank, *args)`` in two processes that form a gloo process group.

    The environment variables make Lightning join the group (``strategy="ddp"``) instead of
    re-running the pytest command line; ``fn`` must be a module-level function.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_entry, args=(port, fn, args), nprocs=2, join=True)
