"""A stream on several devices with strategy="ddp": one process per device, the same code.

    python examples/multi_gpu_ddp.py                   # every visible GPU
    python examples/multi_gpu_ddp.py --cpu --devices 2 # two CPU processes (gloo): try it without a GPU
    python examples/multi_gpu_ddp.py --smoke           # one process, one batch per experience

Lightning starts the other processes by running this script again, so everything runs under
``if __name__ == "__main__"``. Every rank builds the same stream; each trains on its shard of
every batch, and the stream evaluation counts every test sample once. Use "ddp", not
"ddp_spawn": a spawned worker cannot ``fit`` twice, and a stream is one ``fit`` per experience.
"""

import argparse
import os

import lightning as L
import torch

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitDigits
from lightning_cl.callbacks import EWC
from lightning_cl.models import MLP, Classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None, help="processes (default: all GPUs, or 2 on CPU)")
    parser.add_argument("--cpu", action="store_true", help="CPU processes with the gloo backend")
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("LIGHTNING_CL_SMOKE") == "1")
    args = parser.parse_args()

    cpu = args.cpu or not torch.cuda.is_available()
    devices = 1 if args.smoke else args.devices or (2 if cpu else torch.cuda.device_count())

    L.seed_everything(0)  # the same initial weights on every rank
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu" if cpu else "gpu",
        devices=devices,
        max_epochs=1 if args.smoke else 5,
        limit_train_batches=1 if args.smoke else None,
        limit_test_batches=1 if args.smoke else None,
        callbacks=[EWC(ewc_lambda=1.0)],  # its Fisher is summed over the ranks' shards
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # batch_size is per process: 2 processes x 32 = the 64 samples per step of one process with 64
    datamodule = SplitDigits(num_experiences=5, seed=0, batch_size=32)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(100,)), lr=0.1))
    result = fit_stream(trainer, model, datamodule)
    if trainer.is_global_zero:  # every rank holds the same result; print it once
        print(f"{trainer.world_size} process(es)")
        print(result.table())


if __name__ == "__main__":
    main()
