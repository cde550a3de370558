"""Streams: generators (one scenario kind per file) and the classic benchmarks."""

from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.benchmarks.digits import SplitDigits
from lightning_cl.benchmarks.domain_incremental import domain_incremental
from lightning_cl.benchmarks.fmnist import SplitFMNIST
from lightning_cl.benchmarks.joint import JointTraining
from lightning_cl.benchmarks.kmnist import SplitKMNIST
from lightning_cl.benchmarks.mnist import PermutedMNIST, SplitMNIST
from lightning_cl.benchmarks.rotated_mnist import RotatedMNIST
from lightning_cl.benchmarks.split import ClassSplit
from lightning_cl.benchmarks.task_incremental import task_incremental
from lightning_cl.benchmarks.tensors import from_tensors
from lightning_cl.benchmarks.transforms import Compose, Normalize, Permute, Rotate

__all__ = [
    "ClassSplit",
    "Compose",
    "JointTraining",
    "Normalize",
    "Permute",
    "PermutedMNIST",
    "Rotate",
    "RotatedMNIST",
    "SplitDigits",
    "SplitFMNIST",
    "SplitKMNIST",
    "SplitMNIST",
    "class_incremental",
    "domain_incremental",
    "from_tensors",
    "task_incremental",
]
