"""Samples per second of the training data path: lightning_cl's batched loaders against torchvision's.

For SplitMNIST, PermutedMNIST (real MNIST, staged as in ``_mnist.stage_mnist``) and SplitCIFAR10
(a synthetic CIFAR-10-format folder of 50,000 random train images in a temp dir: no real pickles
are needed), one epoch of ``dm.train_dataloader()`` for the first experience is timed, then the
same samples through torchvision's per-sample path: ``torchvision.datasets.MNIST`` / ``CIFAR10``
with ``ToTensor() + Normalize`` (+ a ``Lambda`` pixel permutation for PermutedMNIST) in a
``DataLoader`` with the same batch size, shuffled, ``num_workers=0`` on both sides. Each figure
is the best of ``--repeats`` runs.

    python bench/data_throughput.py [--root DIR] [--batch-size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torchvision
from _cifar import write_fake_cifar10
from _mnist import DEFAULT_DATA, stage_mnist
from torch.utils.data import DataLoader, RandomSampler, Subset
from torchvision import transforms

from lightning_cl.benchmarks.cifar import SplitCIFAR10
from lightning_cl.benchmarks.mnist import MNIST_MEAN, MNIST_STD, PermutedMNIST, SplitMNIST

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def epoch_rate(loader: Iterable[Any], repeats: int) -> tuple[float, int]:
    """Best samples/s over ``repeats`` full passes of ``loader``, and the sample count."""
    best, count = 0.0, 0
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        for batch in loader:
            count += len(batch[0])
        best = max(best, count / (time.perf_counter() - start))
    return best, count


def torchvision_loader(dataset: Any, indices: list[int], batch_size: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    subset = Subset(dataset, indices)
    return DataLoader(subset, batch_size=batch_size, sampler=RandomSampler(subset, generator=generator))


def first_experience_indices(targets: Any, classes: Iterable[int]) -> list[int]:
    wanted = torch.tensor(sorted(classes))
    return torch.isin(torch.as_tensor(targets), wanted).nonzero().flatten().tolist()


def report(name: str, ours: tuple[float, int], theirs: tuple[float, int]) -> None:
    print(
        f"{name:14s} samples={ours[1]:6d}  lightning_cl {ours[0]:12,.0f}/s  "
        f"torchvision {theirs[0]:10,.0f}/s  ratio {ours[0] / theirs[0]:6.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bs, repeats = args.batch_size, args.repeats
    torch.manual_seed(0)
    # one thread, as in a loader worker: two threads on two shared cores measure contention
    torch.set_num_threads(1)

    mnist_root = stage_mnist(args.root)
    mnist_norm = transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))
    try:
        split = SplitMNIST(mnist_root, num_experiences=5, batch_size=bs, download=False)
        classes = split.train_stream[0].classes_in_this_experience
        tv = torchvision.datasets.MNIST(
            str(mnist_root), train=True, transform=transforms.Compose([transforms.ToTensor(), mnist_norm])
        )
        indices = first_experience_indices(tv.targets, classes)
        report(
            "SplitMNIST",
            epoch_rate(split.train_dataloader(), repeats),
            epoch_rate(torchvision_loader(tv, indices, bs), repeats),
        )

        permuted = PermutedMNIST(mnist_root, num_experiences=2, batch_size=bs, download=False)
        perm = permuted.permutations()[0]
        tv_perm = torchvision.datasets.MNIST(
            str(mnist_root),
            train=True,
            transform=transforms.Compose(
                [transforms.ToTensor(), mnist_norm, transforms.Lambda(lambda x: x.view(-1)[perm].view(1, 28, 28))]
            ),
        )
        report(
            "PermutedMNIST",
            epoch_rate(permuted.train_dataloader(), repeats),
            epoch_rate(torchvision_loader(tv_perm, list(range(len(tv_perm))), bs), repeats),
        )
    finally:
        shutil.rmtree(mnist_root)

    cifar_root = Path(tempfile.mkdtemp(prefix="lightning_cl_cifar_"))
    try:
        write_fake_cifar10(cifar_root)
        cifar = SplitCIFAR10(cifar_root, num_experiences=5, batch_size=bs, download=False)
        classes = cifar.train_stream[0].classes_in_this_experience
        tv_cifar = torchvision.datasets.CIFAR10(
            str(cifar_root),
            train=True,
            transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]),
        )
        indices = first_experience_indices(tv_cifar.targets, classes)
        report(
            "SplitCIFAR10",
            epoch_rate(cifar.train_dataloader(), repeats),
            epoch_rate(torchvision_loader(tv_cifar, indices, bs), repeats),
        )
    finally:
        shutil.rmtree(cifar_root)


if __name__ == "__main__":
    main()
