"""How big a resumable checkpoint of a Replay(5000) SplitMNIST run is, and what takes the room.

SplitMNIST (5 experiences), MLP 784-400-400-10 trained by SGD with momentum (so the optimizer
state is one more copy of the weights), ``Replay(memory_size=5000)``, one epoch per experience,
``ModelCheckpoint(save_last=True)`` every epoch. Prints the size of ``last.ckpt`` after the last
experience and the serialised size of each of its parts, next to what the buffer would take if
it held the images instead of ``(experience, position)`` slots; checks that the file loads with
``torch.load(weights_only=True)``.

    python bench/checkpoint_size.py [--limit-train-batches N]

(``--limit-train-batches`` only makes it faster: the size does not depend on how long it trains.)
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from _mnist import quiet_trainer, stage_mnist
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitMNIST
from lightning_cl.callbacks import Replay
from lightning_cl.models import MLP, Classifier


def serialized_bytes(value: Any) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.tell()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root, ckpts = stage_mnist(), Path(tempfile.mkdtemp(prefix="lightning_cl_ckpt_"))
    try:
        dm = SplitMNIST(root=root, num_experiences=5, class_order=list(range(10)), batch_size=128, download=False)
        model = ContinualModule(Classifier(MLP(784, 10, hidden_sizes=(400, 400)), lr=0.01, momentum=0.9))
        replay = Replay(memory_size=5000)
        saver = ModelCheckpoint(dirpath=ckpts, save_last=True, every_n_epochs=1)
        trainer = quiet_trainer(
            callbacks=[replay, saver], enable_checkpointing=True, limit_train_batches=args.limit_train_batches
        )
        result = fit_stream(trainer, model, dm, evaluate_initial=False)
        path = ckpts / "last.ckpt"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # no pickled Python objects
        parts = {
            "model weights (state_dict)": checkpoint["state_dict"],
            "optimizer state (SGD momentum)": checkpoint["optimizer_states"],
            "Replay(5000) buffer": checkpoint["callbacks"][replay.state_key],
            "lightning_cl (rows of R, methods, RNG states)": checkpoint["lightning_cl"],
            "stream position (SplitMNIST)": checkpoint["SplitMNIST"],
            "loops, other callbacks, hyperparameters": {
                k: v
                for k, v in checkpoint.items()
                if k not in ("state_dict", "optimizer_states", "lightning_cl", "SplitMNIST") and k != "callbacks"
            }
            | {"callbacks": {k: v for k, v in checkpoint["callbacks"].items() if k != replay.state_key}},
        }
        size = path.stat().st_size
        print(
            f"SplitMNIST, MLP 784-400-400-10, SGD(momentum=0.9), Replay(5000): final average accuracy "
            f"{result.average_accuracy:.3f}"
        )
        print(f"last.ckpt after the 5th experience: {size / 1e6:.2f} MB ({size:,} bytes), loads with weights_only=True")
        for name, part in parts.items():
            print(f"  {name:48s} {serialized_bytes(part) / 1e6:8.3f} MB")
        images = len(replay.buffer) * 28 * 28
        print(
            f"The buffer holds {len(replay.buffer)} slots; as images it would add {images / 1e6:.1f} MB (uint8) "
            f"or {4 * images / 1e6:.1f} MB (float32)."
        )
    finally:
        shutil.rmtree(root)
        shutil.rmtree(ckpts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
