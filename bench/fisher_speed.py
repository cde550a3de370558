"""Speed of EWC's Fisher estimate against one training epoch over the same samples.

Target (issue 5): the empirical Fisher diagonal over 12,000 MNIST training samples takes under
2x the time of one training epoch over them. Model MLP 784-400-400-10, batch 128 for both,
SGD(lr=0.01, momentum=0.9) for the epoch. Figures are the best of ``--repeats`` interleaved runs:

* ``epoch (plain PyTorch)``: one epoch of a bare training loop (the strictest reference);
* ``epoch (lightning_cl)``: one ``trainer.fit`` of a one-experience stream with ContinualModule;
* ``Fisher``: the function EWC calls at the end of an experience (per-sample gradients of the
  cross-entropy, squared and averaged, model in eval mode); ``nn.Linear`` layers take the exact
  outer-product shortcut;
* ``Fisher, torch.func only``: every parameter through ``vmap(grad(...))`` (the general path, for
  layers without a shortcut), timed on ``--vmap-samples`` samples and scaled to 12,000;
* ``EWC end-to-end``: a fit with EWC attached minus the same fit without it.

    python bench/fisher_speed.py [--root DIR] [--repeats 3] [--device cpu|cuda]
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
from _mnist import DEFAULT_DATA
from speed_splitmnist import BareModule, mlp, mnist_tensors
from torch.nn import functional as F

from lightning_cl import ContinualModule
from lightning_cl.benchmarks import from_tensors
from lightning_cl.callbacks._importance import per_sample_grad_stats
from lightning_cl.callbacks.ewc import EWC, sample_cross_entropy
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.datamodule import StreamDataModule

SAMPLES, BATCH = 12_000, 128


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_epoch(x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    torch.manual_seed(0)
    model = mlp().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = x.to(device), y.to(device)
    sync(device)
    start = time.perf_counter()
    for batch in torch.randperm(len(x), device=device).split(BATCH):
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def stream(x: torch.Tensor, y: torch.Tensor) -> StreamDataModule:
    # one experience holding all ten classes: the 12,000 samples, nothing else
    return from_tensors(x, y, x[:BATCH], y[:BATCH], num_experiences=1, class_order=range(10), batch_size=BATCH)


def trainer(device: str, callbacks: list[Any]) -> L.Trainer:
    return L.Trainer(
        accelerator=device,
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def lightning_fit(x: torch.Tensor, y: torch.Tensor, device: str, callbacks: list[Any]) -> tuple[float, L.Trainer, Any]:
    torch.manual_seed(0)
    model = ContinualModule(BareModule())
    t = trainer(device, callbacks)
    start = time.perf_counter()
    t.fit(model, datamodule=stream(x, y))
    sync(device)
    return time.perf_counter() - start, t, model


def fisher(x: torch.Tensor, y: torch.Tensor, device: str, factorize: bool) -> float:
    torch.manual_seed(0)
    model = mlp().to(device).eval()
    dataset = InMemoryDataset(x, y)
    sync(device)
    start = time.perf_counter()
    # what EWC.on_experience_end does on one process, with the path chosen explicitly
    batches = (
        [t.to(device) for t in dataset.__getitems__(range(i, min(i + BATCH, len(x)))).tensors]
        for i in range(0, len(x), BATCH)
    )
    sums, count = per_sample_grad_stats(model, batches, sample_cross_entropy, "square", factorize=factorize)
    _ = {name: s / count for name, s in sums.items()}
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vmap-samples", type=int, default=1280, help="samples timed on the torch.func-only path")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    x_train, y_train, _, _ = mnist_tensors(args.root)
    x, y = x_train[:SAMPLES], y_train[:SAMPLES]
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    # EWC's own Fisher pass inside a fit: its on_experience_end is timed through a subclass
    class TimedEWC(EWC):
        seconds = 0.0

        def on_experience_end(self, *args: Any) -> None:
            sync(args[0].strategy.root_device.type)
            start = time.perf_counter()
            super().on_experience_end(*args)
            sync(args[0].strategy.root_device.type)
            TimedEWC.seconds = time.perf_counter() - start

    lightning_fit(x, y, args.device, [])  # warm-up: first-call costs of Lightning and the kernels
    fisher(x[:BATCH], y[:BATCH], args.device, True)
    for _ in range(args.repeats):
        keep("epoch (plain PyTorch)", plain_epoch(x, y, args.device))
        keep("epoch (lightning_cl fit)", lightning_fit(x, y, args.device, [])[0])
        keep("Fisher (shortcut + torch.func)", fisher(x, y, args.device, True))
        n = args.vmap_samples
        keep("Fisher, torch.func only (scaled)", fisher(x[:n], y[:n], args.device, False) * SAMPLES / n)
        with_ewc = lightning_fit(x, y, args.device, [TimedEWC(ewc_lambda=100.0, batch_size=BATCH)])[0]
        keep("EWC.on_experience_end in a fit", TimedEWC.seconds)
        keep("fit with EWC", with_ewc)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"Fisher over {SAMPLES} MNIST samples, MLP 784-400-400-10, batch {BATCH}, best of {args.repeats}")
    print(f"torch {torch.__version__}, {device}")
    for name, seconds in best.items():
        print(f"  {name:<36} {seconds:7.3f} s")
    plain, ours = best["epoch (plain PyTorch)"], best["epoch (lightning_cl fit)"]
    in_fit = best["EWC.on_experience_end in a fit"]
    print(f"Fisher in EWC / plain PyTorch epoch   = {in_fit / plain:.2f}  (target < 2)")
    print(f"Fisher in EWC / lightning_cl epoch    = {in_fit / ours:.2f}  (target < 2)")
    print(f"torch.func-only Fisher / plain epoch  = {best['Fisher, torch.func only (scaled)'] / plain:.2f}")


if __name__ == "__main__":
    main()
