"""Online SplitMNIST: ONE fit per experience (lightning_cl's online) vs one fit per mini-experience.

The stream: SplitMNIST, 5 experiences (classes 0..9 in order), gone through online in
mini-experiences of ``--experience-size`` samples (10 by default: 6,000 mini-experiences), one
SGD step per mini-experience (batch = mini-experience), MLP 784-400-400-10, naive fine-tuning,
no evaluation. Both runners train the same mini-experiences in the same order with one Trainer:

* ``online``: ``online(stream, experience_size)``: 5 ``trainer.fit`` calls, the boundaries are
  marks inside one training loop;
* ``fit per mini-experience``: a stream whose experiences ARE the mini-experiences, one
  ``trainer.fit`` each (what Avalanche's online scenario does with ``strategy.train``).

The second runner is timed over its first ``--baseline-limit`` mini-experiences (all with 0) and
extrapolated linearly to the whole stream; both figures are printed. By default both Trainers are
quiet (no logger, checkpoint, progress bar or summary: only the loop is timed); with
``--lightning-defaults`` they keep Lightning's default logger and ModelCheckpoint (progress bar and
model summary off), as a user's Trainer would: every ``fit`` then also writes a checkpoint.

    python bench/online_speed.py [--root DIR] [--experience-size 10] [--baseline-limit 600]
                                 [--synthetic] [--lightning-defaults]

``--root`` holds ``MNIST/raw`` (by default $LIGHTNING_CL_DATA or ../shared/data); ``--synthetic``
uses random tensors of MNIST's shapes instead.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _mnist import DEFAULT_DATA, quiet_trainer
from _mnist import mnist_tensors as real_mnist_tensors
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule
from lightning_cl.benchmarks import from_tensors
from lightning_cl.benchmarks.online import OnlineStreamDataModule, online
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience

EXPERIENCES = 5


def mnist_tensors(root: Path, synthetic: bool) -> tuple[torch.Tensor, ...]:
    if synthetic:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(60_000, 1, 28, 28, generator=g), torch.randint(0, 10, (60_000,), generator=g)) * 2
    return real_mnist_tensors(root)


class MLP(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def online_stream(data: tuple[torch.Tensor, ...], experience_size: int) -> OnlineStreamDataModule:
    stream = from_tensors(*data, num_experiences=EXPERIENCES, class_order=range(10), eval_batch_size=1000)
    return online(stream, experience_size, shuffle=True, seed=0)


def make_trainer(defaults: bool, folder: str) -> L.Trainer:
    if defaults:
        return L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=folder,
        )
    return quiet_trainer()


def run_online(data: tuple[torch.Tensor, ...], experience_size: int, trainer: L.Trainer) -> tuple[float, int]:
    torch.manual_seed(0)
    dm, model = online_stream(data, experience_size), ContinualModule(MLP())
    start = time.perf_counter()
    for _ in range(dm.num_experiences):
        trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start, trainer.global_step


def run_fit_per_mini(
    data: tuple[torch.Tensor, ...], experience_size: int, limit: int, trainer: L.Trainer
) -> tuple[float, int, int]:
    source = online_stream(data, experience_size)
    minis = [m for k in range(source.num_experiences) for m in source.mini_experiences(k)]
    total = len(minis)
    minis = minis[:limit] if limit else minis
    train = [Experience(i, m.dataset, m.classes_in_this_experience) for i, m in enumerate(minis)]
    dm = StreamDataModule(train, source.test_stream, batch_size=experience_size, eval_batch_size=1000)
    torch.manual_seed(0)
    model = ContinualModule(MLP())
    start = time.perf_counter()
    for _ in range(len(train)):
        trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start, len(train), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--experience-size", type=int, default=10)
    parser.add_argument("--baseline-limit", type=int, default=600)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--lightning-defaults", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    data = mnist_tensors(args.root, args.synthetic)

    folder = tempfile.mkdtemp(prefix="lightning_cl_online_")
    trainers = [make_trainer(args.lightning_defaults, f"{folder}/{name}") for name in ("online", "per_mini")]
    ours, steps = run_online(data, args.experience_size, trainers[0])
    theirs, timed, total = run_fit_per_mini(data, args.experience_size, args.baseline_limit, trainers[1])
    shutil.rmtree(folder)
    whole = theirs * total / timed
    source = "synthetic tensors" if args.synthetic else "MNIST"
    kind = "Lightning's default" if args.lightning_defaults else "quiet"
    print(
        f"online SplitMNIST ({source}), {total} mini-experiences of {args.experience_size} samples, {kind} "
        f"Trainer, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"  online (1 fit per experience)           {ours:8.2f} s   {steps} steps, {EXPERIENCES} fits")
    if timed < total:
        print(f"  1 fit per mini-experience, measured     {theirs:8.2f} s   first {timed} of {total} fits")
        print(f"  1 fit per mini-experience, extrapolated {whole:8.2f} s   all {total} fits")
    else:
        print(f"  1 fit per mini-experience               {whole:8.2f} s   {total} fits")
    print(f"fit per mini-experience / online = {whole / ours:.1f}x")


if __name__ == "__main__":
    main()
