"""Replay-family methods on real MNIST streams, against Avalanche 0.6 on the same workloads.

Workloads (issue 4): MLP 784-400-400-10, SGD(lr=0.01, momentum=0.9), batch 128, 1 epoch per
experience, memory 500, 5 experiences.
  w1-*      SplitMNIST class-incremental, classes in order 0..9 (workload W1).
  pmnist-*  PermutedMNIST (domain-incremental), one 10-way classifier.
  gdumb     GDumb in its published setting (continual-learning-baselines): SplitMNIST, memory 4400,
            SGD lr 0.1, batch 16, 10 epochs on the buffer.
The bar is the reference figure minus 0.02.

    python bench/replay.py --list
    python bench/replay.py w1-replay w1-der     # or: all
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
from _mnist import quiet_trainer, stage_mnist

from lightning_cl import ContinualCallback, ContinualModule, StreamDataModule, fit_stream
from lightning_cl.benchmarks import PermutedMNIST, SplitMNIST
from lightning_cl.callbacks.agem import AGEM
from lightning_cl.callbacks.der import DER
from lightning_cl.callbacks.er_ace import ERACE
from lightning_cl.callbacks.gdumb import GDumb
from lightning_cl.callbacks.gem import GEM
from lightning_cl.callbacks.icarl import ICaRL
from lightning_cl.callbacks.mir import MIR
from lightning_cl.callbacks.replay import Replay
from lightning_cl.models import MLP, Classifier

# None: no published or Avalanche figure on this workload; the bar is then naive + 0.5
REFERENCE: dict[str, float | None] = {
    "w1-naive": 0.19,
    "w1-replay": 0.877,
    "w1-replay-concat": 0.877,
    "w1-der": 0.913,
    "w1-erace": 0.855,
    "gdumb": 0.97,
    "w1-icarl": None,
    "w1-mir": None,
    "pmnist-naive": 0.851,
    "pmnist-replay": 0.929,
    "pmnist-gem": 0.938,
    "pmnist-agem": 0.931,
}
METHODS: dict[str, Callable[[], list[ContinualCallback]]] = {
    "naive": lambda: [],
    "replay": lambda: [Replay(memory_size=500)],
    "replay-concat": lambda: [Replay(memory_size=500, batch_mode="concat")],
    "der": lambda: [DER(memory_size=500, alpha=0.1, beta=0.5)],
    "erace": lambda: [ERACE(memory_size=500)],
    "gdumb": lambda: [GDumb(memory_size=4400)],
    "gem": lambda: [GEM(patterns_per_experience=256, memory_strength=0.5)],
    "agem": lambda: [AGEM(patterns_per_experience=256)],
    "icarl": lambda: [ICaRL(memory_size=500)],
    "mir": lambda: [MIR(memory_size=500, subsample=50, memory_batch_size=10)],
}


def workload(name: str, root: Any) -> tuple[StreamDataModule, L.LightningModule, dict[str, Any]]:
    if name == "gdumb":
        dm = SplitMNIST(root=root, num_experiences=5, class_order=list(range(10)), batch_size=16, download=False)
        return dm, Classifier(MLP(784, 10, hidden_sizes=(400, 400)), lr=0.1), {"max_epochs": 10}
    model = Classifier(MLP(784, 10, hidden_sizes=(400, 400)), lr=0.01, momentum=0.9)
    if name.startswith("pmnist"):
        return PermutedMNIST(root=root, num_experiences=5, seed=0, batch_size=128, download=False), model, {}
    dm = SplitMNIST(root=root, num_experiences=5, class_order=list(range(10)), batch_size=128, download=False)
    return dm, model, {}


def run(name: str, root: Any) -> tuple[float, float]:
    L.seed_everything(0, verbose=False)
    dm, user, trainer_args = workload(name, root)
    method = name.split("-", 1)[1] if "-" in name else name
    trainer = quiet_trainer(callbacks=METHODS[method](), **trainer_args)
    start = time.perf_counter()
    result = fit_stream(trainer, ContinualModule(user), dm, evaluate_initial=False)
    return result.average_accuracy, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(REFERENCE))
        return 0
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = stage_mnist()
    failed = False
    try:
        names = list(REFERENCE) if args.names in ([], ["all"]) else args.names
        print(f"{'experiment':<20}{'ours':>8}{'reference':>11}{'bar':>7}{'seconds':>9}")
        for name in names:
            ours, seconds = run(name, root)
            reference = REFERENCE[name]
            bar = reference - 0.02 if reference is not None else REFERENCE["w1-naive"] + 0.5  # type: ignore[operator]
            below = ours < bar and not name.endswith("naive")
            failed |= below
            shown = f"{reference:11.3f}" if reference is not None else f"{'-':>11}"
            print(f"{name:<20}{ours:8.4f}{shown}{bar:7.3f}{seconds:9.1f}{'  BELOW' if below else ''}")
    finally:
        shutil.rmtree(root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
