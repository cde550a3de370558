"""Streams: generators (one scenario kind per file) and the classic benchmarks."""

from lightning_cl.benchmarks.blurry import blurry
from lightning_cl.benchmarks.cifar import SplitCIFAR10, SplitCIFAR100, SplitCIFAR110
from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.benchmarks.core50 import CORe50
from lightning_cl.benchmarks.dataset_incremental import dataset_incremental
from lightning_cl.benchmarks.digits import SplitDigits
from lightning_cl.benchmarks.domain_incremental import domain_incremental
from lightning_cl.benchmarks.fmnist import SplitFMNIST
from lightning_cl.benchmarks.folders import SplitCUB200, SplitImageNet, SplitTinyImageNet
from lightning_cl.benchmarks.image_folder import ImageFiles, file_list, image_folder
from lightning_cl.benchmarks.instance_incremental import instance_incremental
from lightning_cl.benchmarks.joint import JointTraining
from lightning_cl.benchmarks.kmnist import SplitKMNIST
from lightning_cl.benchmarks.mnist import PermutedMNIST, SplitMNIST
from lightning_cl.benchmarks.omniglot import SplitOmniglot
from lightning_cl.benchmarks.online import MiniExperienceBoundaries, OnlineStreamDataModule, online
from lightning_cl.benchmarks.rotated_mnist import RotatedMNIST
from lightning_cl.benchmarks.split import ClassSplit
from lightning_cl.benchmarks.subsample import SubsampledStream
from lightning_cl.benchmarks.task_incremental import task_incremental
from lightning_cl.benchmarks.tensors import from_tensors
from lightning_cl.benchmarks.transforms import (
    Compose,
    Normalize,
    Permute,
    PerSample,
    RandomCrop,
    RandomHorizontalFlip,
    Rotate,
)
from lightning_cl.benchmarks.with_validation_stream import ValidationStreamDataModule, with_validation_stream

__all__ = [
    "CORe50",
    "ClassSplit",
    "Compose",
    "ImageFiles",
    "JointTraining",
    "MiniExperienceBoundaries",
    "Normalize",
    "OnlineStreamDataModule",
    "PerSample",
    "Permute",
    "PermutedMNIST",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Rotate",
    "RotatedMNIST",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitCIFAR110",
    "SplitCUB200",
    "SplitDigits",
    "SplitFMNIST",
    "SplitImageNet",
    "SplitKMNIST",
    "SplitMNIST",
    "SplitOmniglot",
    "SplitTinyImageNet",
    "SubsampledStream",
    "ValidationStreamDataModule",
    "blurry",
    "class_incremental",
    "dataset_incremental",
    "domain_incremental",
    "file_list",
    "from_tensors",
    "image_folder",
    "instance_incremental",
    "online",
    "task_incremental",
    "with_validation_stream",
]
