"""What replay costs on W1 (SplitMNIST, 5 experiences, MLP 784-400-400-10, 1 epoch, batch 128).

Prints (1) the wall time of naive training and of Replay(500) in concat mode, medians of
``--repeats`` runs each, and their ratio (target: at most 1.30); (2) the Python-side memory of a
ReservoirBuffer holding 5,000 MNIST samples (target: under 1 MB), measured with tracemalloc
around the buffer's updates, next to what the same samples would take as images.

    python bench/replay_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
import tracemalloc
import warnings

import lightning as L
import torch
from _mnist import quiet_trainer, stage_mnist

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitMNIST
from lightning_cl.buffers import Candidates, ReservoirBuffer
from lightning_cl.callbacks import Replay
from lightning_cl.models import MLP, Classifier


def w1_seconds(root: object, callbacks: list[L.Callback]) -> tuple[float, float]:
    L.seed_everything(0, verbose=False)
    dm = SplitMNIST(root=root, num_experiences=5, class_order=list(range(10)), batch_size=128, download=False)
    model = ContinualModule(Classifier(MLP(784, 10, hidden_sizes=(400, 400)), lr=0.01, momentum=0.9))
    dm.train_stream  # noqa: B018  # load the files before the clock starts
    start = time.perf_counter()
    result = fit_stream(quiet_trainer(callbacks=callbacks), model, dm, evaluate_initial=False)
    return time.perf_counter() - start, result.average_accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = stage_mnist()
    try:
        w1_seconds(root, [])  # warm-up: imports, allocator
        naive, replay = [], []
        for _ in range(args.repeats):
            naive.append(w1_seconds(root, [])[0])
            replay.append(w1_seconds(root, [Replay(memory_size=500, batch_mode="concat")])[0])
        ratio = statistics.median(replay) / statistics.median(naive)
        print(
            f"W1 wall time, median of {args.repeats}: naive {statistics.median(naive):.2f} s, "
            f"Replay(500, concat) {statistics.median(replay):.2f} s, ratio {ratio:.3f} (target <= 1.30)"
        )

        dm = SplitMNIST(root=root, num_experiences=5, class_order=list(range(10)), download=False)
        stream = dm.train_stream
        tracemalloc.start()
        buffer = ReservoirBuffer(5000)
        for experience in stream:
            buffer.update(Candidates.of_experience(experience))
        data = buffer.dataset(stream)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        state = buffer.state_dict()
        tensors = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
        images = len(data) * data[0][0].numel() * data[0][0].element_size()
        print(
            f"ReservoirBuffer(5000) on MNIST: {len(buffer)} samples, Python-side memory held {current / 1e6:.3f} MB "
            f"(peak during updates {peak / 1e6:.3f} MB), state tensors {tensors / 1e6:.3f} MB; "
            f"the same samples as float images: {images / 1e6:.1f} MB (target < 1 MB held)"
        )
        failed = ratio > 1.30 or current >= 1e6
    finally:
        shutil.rmtree(root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
