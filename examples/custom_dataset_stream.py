"""Your own data set as a stream: any map-style Dataset with integer targets, split by class.

``class_incremental`` (and ``task_incremental``, ``domain_incremental``, ``from_tensors``) turn
datasets into a StreamDataModule. For full control, subclass ``lightning_cl.StreamDataModule``
and return your own ``Experience`` lists from ``build_streams()``.

    python examples/custom_dataset_stream.py [--smoke]
"""

import math
import os
import sys

import lightning as L
import torch
from torch.utils.data import Dataset

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import class_incremental
from lightning_cl.models import MLP, Classifier

SMOKE = "--smoke" in sys.argv or os.environ.get("LIGHTNING_CL_SMOKE") == "1"


class Waveforms(Dataset):
    """Your data: 6 kinds of noisy waveforms (class = frequency), 32 samples each.

    ``targets`` lets the stream split the classes without reading every item; without it,
    each item's label is read once.
    """

    def __init__(self, per_class: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)  # explicit seeds: the same data on every run
        self.targets = torch.arange(6).repeat_interleave(per_class)
        time = torch.linspace(0, 2 * math.pi, 32)
        phase = torch.rand(len(self.targets), 1, generator=generator) * 2 * math.pi
        clean = torch.sin((self.targets[:, None] + 1) * time + phase)
        self.signals = clean + 0.3 * torch.randn(clean.shape, generator=generator)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.signals[index], int(self.targets[index])


def main() -> None:
    # 3 experiences of 2 classes each, in a seeded class order; batches are (x, y)
    datamodule = class_incremental(
        Waveforms(per_class=100, seed=0), Waveforms(per_class=30, seed=1), num_experiences=3, seed=0, batch_size=32
    )
    print("classes per experience:", [e.classes_in_this_experience for e in datamodule.train_stream])
    model = ContinualModule(Classifier(MLP(32, num_classes=datamodule.num_classes, hidden_sizes=(64,)), lr=0.1))
    trainer = L.Trainer(
        max_epochs=1 if SMOKE else 10,
        limit_train_batches=1 if SMOKE else None,
        limit_test_batches=1 if SMOKE else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    print(fit_stream(trainer, model, datamodule).table())


if __name__ == "__main__":
    main()
