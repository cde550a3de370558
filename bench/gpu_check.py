"""GPU check: SplitMNIST and a CIFAR-sized stream on CUDA with bf16-mixed, for Replay, EWC, DER, A-GEM.

For each (stream, method) it prints the training throughput (samples of the current experience
per second over the whole stream, all processes together, test passes excluded), the average
accuracy of the final row of the accuracy matrix R, and that row. Run it on a CUDA machine;
``--device cpu --precision 32-true --smoke`` checks the script itself on a CPU (2 batches per
experience; a few minutes on two cores, most of it the ResNet on the CIFAR-sized stream).

    python bench/gpu_check.py                                  # one GPU, bf16-mixed
    python bench/gpu_check.py --devices 4 --strategy ddp       # four GPUs (DDP): one line per run, from rank 0
    python bench/gpu_check.py --device cpu --precision 32-true --smoke

SplitMNIST reads the MNIST files from ``--data`` (default: LIGHTNING_CL_DATA or ../shared/data;
on a machine that only has this repository, copy ``MNIST/raw`` into an ignored folder of it and
pass that folder). The CIFAR-sized stream is SplitCIFAR10-shaped synthetic data (3x32x32, 10
classes with class-dependent colour means, 5,000 training images per class as CIFAR-10) trained
with SlimResNet18, so it needs no files.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _mnist import DEFAULT_DATA, stage_mnist
from lightning.pytorch.utilities import rank_zero_only

from lightning_cl import ContinualModule, StreamDataModule, fit_stream
from lightning_cl.benchmarks import SplitMNIST, from_tensors
from lightning_cl.callbacks import AGEM, DER, EWC, Replay
from lightning_cl.models import MLP, Classifier, SlimResNet18

METHODS: dict[str, Callable[[], list[L.Callback]]] = {
    "naive": lambda: [],
    "replay": lambda: [Replay(memory_size=500)],
    "ewc": lambda: [EWC(ewc_lambda=100)],
    "der": lambda: [DER(memory_size=500, alpha=0.1, beta=0.5)],
    "agem": lambda: [AGEM(patterns_per_experience=256)],
}


def cifar_sized(per_class: int, seed: int = 0) -> StreamDataModule:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(10, 3, 1, 1, generator=g)
    y = torch.arange(10).repeat_interleave(per_class)
    x = means[y] + 0.5 * torch.randn(len(y), 3, 32, 32, generator=g)
    test_y = torch.arange(10).repeat_interleave(max(per_class // 5, 1))
    test_x = means[test_y] + 0.5 * torch.randn(len(test_y), 3, 32, 32, generator=g)
    return from_tensors(x, y, test_x, test_y, num_experiences=5, class_order=list(range(10)), batch_size=128)


class Throughput(L.Callback):
    """Samples and seconds of the training batches only."""

    def __init__(self) -> None:
        self.samples, self.seconds, self._start = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        current = batch["current"] if isinstance(batch, dict) else batch
        self.samples += len(current[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._start


def run(stream: str, method: str, args: argparse.Namespace, mnist_root: Path | None) -> tuple[float, Any, int]:
    L.seed_everything(0, verbose=False)
    if stream == "splitmnist":
        dm: StreamDataModule = SplitMNIST(
            root=mnist_root, num_experiences=5, class_order=list(range(10)), batch_size=128, download=False
        )
        user = Classifier(MLP(784, 10, hidden_sizes=(400, 400)), lr=0.01, momentum=0.9)
    else:
        dm = cifar_sized(per_class=50 if args.smoke else 5000)
        user = Classifier(SlimResNet18(10), lr=0.05, momentum=0.9)
    meter = Throughput()
    trainer = L.Trainer(
        accelerator=args.device,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=1,
        limit_train_batches=2 if args.smoke else None,
        limit_test_batches=2 if args.smoke else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*METHODS[method](), meter],
    )
    result = fit_stream(trainer, ContinualModule(user), dm, evaluate_initial=False)
    # each process counts its own shard: the stream's throughput is the sum over processes
    throughput = meter.samples * trainer.world_size / max(meter.seconds, 1e-9)
    return throughput, result, trainer.global_rank


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--devices", type=int, default=1, help="processes (GPUs); more than 1 needs --strategy ddp")
    parser.add_argument("--strategy", default="auto", help="'ddp' for several devices (not ddp_spawn)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--smoke", action="store_true", help="2 batches per experience: checks the script only")
    parser.add_argument("--streams", nargs="*", default=["splitmnist", "cifar-sized"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --precision 32-true --smoke to check the script")
        return 2
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    # under DDP Lightning re-runs this script in the other processes: only the first one prints
    leader = rank_zero_only.rank == 0
    if leader:
        print(f"device {device} x {args.devices}, precision {args.precision}, torch {torch.__version__}")
    root = stage_mnist(args.data) if "splitmnist" in args.streams else None
    failed = 0
    try:
        if leader:
            print(f"{'stream':<14}{'method':<8}{'samples/s':>12}{'avg acc':>9}  final row of R")
        for stream in args.streams:
            for method in args.methods:
                try:
                    throughput, result, rank = run(stream, method, args, root)
                except Exception as error:  # a check: report every method, then fail
                    failed += 1
                    print(f"{stream:<14}{method:<8} failed: {type(error).__name__}: {error}", flush=True)
                    continue
                row = " ".join(f"{a:.3f}" for a in result.accuracy_matrix[-1].tolist())
                if rank == 0:
                    print(f"{stream:<14}{method:<8}{throughput:12.0f}{result.average_accuracy:9.4f}  {row}", flush=True)
    finally:
        if root is not None:
            shutil.rmtree(root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
