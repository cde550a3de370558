"""Regularization methods on real MNIST streams, against Avalanche 0.6 on the same workloads.

Workloads (issue 5): MLP 784-400-400, SGD(lr=0.01, momentum=0.9), batch 128, 1 epoch per
experience, 5 experiences.
  pmnist-*  PermutedMNIST (domain-incremental), one 10-way classifier.
  tasks-*   SplitMNIST task-incremental with the user's own multi-head model: a shared trunk and
            one 2-way head per task, forward(x, task_labels).
The bar is Avalanche's final average accuracy on this machine minus 0.02.

    python bench/regularization.py --list
    python bench/regularization.py pmnist-ewc tasks-lwf     # or: all
    python bench/regularization.py --si-sweep               # SI lambdas on PermutedMNIST
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from _mnist import quiet_trainer, stage_mnist
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualCallback, ContinualModule, StreamDataModule, fit_stream
from lightning_cl.benchmarks import PermutedMNIST, task_incremental
from lightning_cl.benchmarks.mnist import load_mnist
from lightning_cl.callbacks.ewc import EWC
from lightning_cl.callbacks.lwf import LwF
from lightning_cl.callbacks.si import SI
from lightning_cl.models import MLP, Classifier

AVALANCHE = {
    "pmnist-naive": 0.851,
    "pmnist-ewc": 0.929,
    "pmnist-lwf": 0.886,
    "pmnist-si": 0.851,
    "tasks-naive": 0.974,
    "tasks-ewc": 0.974,
    "tasks-si": 0.974,
    "tasks-lwf": 0.989,
}
METHODS: dict[str, Callable[[], list[ContinualCallback]]] = {
    "naive": lambda: [],
    "ewc": lambda: [EWC(ewc_lambda=100)],
    "lwf": lambda: [LwF(alpha=1, temperature=2)],
    "si": lambda: [SI(si_lambda=1)],
}


class MultiHead(L.LightningModule):
    """What a user writes for task-incremental learning: a shared trunk, one head per task."""

    def __init__(self, num_tasks: int = 5, classes_per_task: int = 2) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(400, classes_per_task) for _ in range(num_tasks))

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        out = torch.stack([head(h) for head in self.heads], dim=1)
        return out[torch.arange(len(x), device=x.device), task_labels]

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y, t = batch
        logits = self(x, t)
        return {"loss": F.cross_entropy(logits, y), "logits": logits}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def workload(name: str, root: Any) -> tuple[StreamDataModule, L.LightningModule]:
    if name.startswith("pmnist"):
        dm = PermutedMNIST(root=root, num_experiences=5, seed=0, batch_size=128, download=False)
        return dm, Classifier(MLP(784, 10, hidden_sizes=(400, 400)), lr=0.01, momentum=0.9)
    train, test = load_mnist(root, train=True), load_mnist(root, train=False)
    dm = task_incremental(train, test, num_experiences=5, class_order=list(range(10)), batch_size=128)
    return dm, MultiHead()


def run(name: str, root: Any, callbacks: list[ContinualCallback] | None = None) -> tuple[float, float]:
    L.seed_everything(0, verbose=False)
    dm, user = workload(name, root)
    method = name.split("-", 1)[1]
    trainer = quiet_trainer(callbacks=callbacks if callbacks is not None else METHODS[method]())
    start = time.perf_counter()
    result = fit_stream(trainer, ContinualModule(user), dm, evaluate_initial=False)
    return result.average_accuracy, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--si-sweep", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(AVALANCHE))
        return 0
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = stage_mnist()
    failed = False
    try:
        names = list(AVALANCHE) if args.names in ([], ["all"]) else args.names
        if not args.si_sweep:
            print(f"{'experiment':<14}{'ours':>8}{'Avalanche':>11}{'bar':>7}{'seconds':>9}")
            for name in names:
                ours, seconds = run(name, root)
                bar = AVALANCHE[name] - 0.02
                failed |= ours < bar
                flag = "" if ours >= bar else "  BELOW"
                print(f"{name:<14}{ours:8.4f}{AVALANCHE[name]:11.3f}{bar:7.3f}{seconds:9.1f}{flag}")
        else:
            for si_lambda in (1.0, 10.0, 100.0, 1000.0, 10000.0):
                ours, seconds = run("pmnist-si", root, [SI(si_lambda=si_lambda)])
                print(f"SI si_lambda={si_lambda:<8g} PermutedMNIST average accuracy {ours:.4f} ({seconds:.1f} s)")
    finally:
        shutil.rmtree(root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
