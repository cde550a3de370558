"""Speed of lightning_cl against a plain PyTorch loop and a bare Lightning loop (workload W1).

W1: SplitMNIST, 5 experiences, classes 0..9 in order, class-incremental, 1 epoch per experience,
MLP 784-400-400-10, SGD(lr=0.01, momentum=0.9), batch 128, naive fine-tuning; after each
experience the whole test stream (5 experiences) is evaluated. The three runners read the same
in-memory tensors; each figure is the best of ``--repeats`` interleaved repetitions.

    python bench/speed_splitmnist.py [--root DIR] [--repeats 3]

``--root`` holds ``MNIST/raw`` (the .gz files as torchvision downloads them are enough); by
default $LIGHTNING_CL_DATA or ../shared/data.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _mnist import DEFAULT_DATA, mnist_tensors, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import from_tensors
from lightning_cl.core.data import InMemoryDataset, collate

BATCH, EVAL_BATCH, EXPERIENCES = 128, 1000, 5


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
    )


def split(y: torch.Tensor) -> list[torch.Tensor]:
    return [((y == 2 * k) | (y == 2 * k + 1)).nonzero().squeeze(1) for k in range(EXPERIENCES)]


def run_plain(data: tuple[torch.Tensor, ...]) -> float:
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(0)
    model = mlp()
    train_parts, test_parts = split(y_tr), split(y_te)
    accuracy = []
    for k in range(EXPERIENCES):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        index = train_parts[k][torch.randperm(len(train_parts[k]))]
        for batch in index.split(BATCH):
            loss = F.cross_entropy(model(x_tr[batch]), y_tr[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = [
                sum(int((model(x_te[b]).argmax(1) == y_te[b]).sum()) for b in part.split(EVAL_BATCH)) / len(part)
                for part in test_parts
            ]
    return sum(accuracy) / len(accuracy)


class BareModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.correct: dict[int, int] = {}
        self.total: dict[int, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        hits = (self(batch[0]).argmax(1) == batch[1]).sum()
        self.correct[dataloader_idx] = self.correct.get(dataloader_idx, 0) + hits
        self.total[dataloader_idx] = self.total.get(dataloader_idx, 0) + len(batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def run_bare_lightning(data: tuple[torch.Tensor, ...]) -> float:
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(0)
    model, t = BareModule(), quiet_trainer()
    train = [InMemoryDataset(x_tr, y_tr).subset(p) for p in split(y_tr)]
    test = [InMemoryDataset(x_te, y_te).subset(p) for p in split(y_te)]
    test_loaders = [DataLoader(d, EVAL_BATCH, sampler=SequentialSampler(d), collate_fn=collate) for d in test]
    for k in range(EXPERIENCES):
        t.fit_loop.max_epochs = t.current_epoch + 1  # a second fit trains nothing otherwise
        loader = DataLoader(train[k], BATCH, sampler=RandomSampler(train[k]), collate_fn=collate)
        t.fit(model, train_dataloaders=loader)
        model.correct, model.total = {}, {}
        t.test(model, dataloaders=test_loaders, verbose=False)
    return sum(float(model.correct[j]) / model.total[j] for j in range(EXPERIENCES)) / EXPERIENCES


class UserModule(BareModule):
    """The same module with no test_step: lightning_cl evaluates the stream."""

    test_step = None  # type: ignore[assignment]


def run_lightning_cl(data: tuple[torch.Tensor, ...]) -> float:
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(0)
    dm = from_tensors(
        x_tr,
        y_tr,
        x_te,
        y_te,
        num_experiences=EXPERIENCES,
        class_order=range(10),
        batch_size=BATCH,
        eval_batch_size=EVAL_BATCH,
    )
    model = ContinualModule(BareModule())
    return fit_stream(quiet_trainer(), model, dm, evaluate_initial=False).average_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    data = mnist_tensors(args.root)
    runners = {"plain PyTorch": run_plain, "bare Lightning": run_bare_lightning, "lightning_cl": run_lightning_cl}
    best = {name: float("inf") for name in runners}
    accuracy = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            accuracy[name] = run(data)
            best[name] = min(best[name], time.perf_counter() - start)
    threads = torch.get_num_threads()
    print(f"W1 SplitMNIST, best of {args.repeats} interleaved runs, torch {torch.__version__}, {threads} threads")
    for name in runners:
        print(f"  {name:<15} {best[name]:7.2f} s   final average accuracy {accuracy[name]:.4f}")
    plain, bare, ours = best["plain PyTorch"], best["bare Lightning"], best["lightning_cl"]
    print(f"lightning_cl / plain PyTorch  = {ours / plain:.3f}  (target <= 1.30)")
    print(f"bare Lightning / plain PyTorch = {bare / plain:.3f}")
    print(f"lightning_cl / bare Lightning = {ours / bare:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
