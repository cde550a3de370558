"""Logging a stream to TensorBoard or Weights & Biases (offline): metrics, the accuracy matrix, a report.

    python examples/log_to_tensorboard_or_wandb.py --logger tensorboard   # then: tensorboard --logdir logs
    python examples/log_to_tensorboard_or_wandb.py --logger wandb         # offline; wandb sync logs/wandb/offline-run-*
    python examples/log_to_tensorboard_or_wandb.py --smoke --save_dir /tmp/logs

Any Lightning logger gets ``train/loss`` (and ``train/<method>_loss``), ``test/acc_exp{j}`` and
``stream/*`` at ``trainer.global_step``; ``StreamReport`` adds the accuracy matrix as an image
and a table, and writes ``results.json`` and PNGs into the logger's folder.
"""

import argparse
import os

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitDigits
from lightning_cl.callbacks import LwF
from lightning_cl.loggers import StreamReport
from lightning_cl.models import MLP, Classifier


def make_logger(kind: str, save_dir: str) -> Logger:
    if kind == "wandb":
        return WandbLogger(project="lightning-cl-examples", save_dir=save_dir, offline=True)
    return TensorBoardLogger(save_dir=save_dir, name="lightning_cl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logger", choices=["tensorboard", "wandb"], default="tensorboard")
    parser.add_argument("--save_dir", default="logs")
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("LIGHTNING_CL_SMOKE") == "1")
    args = parser.parse_args()

    logger = make_logger(args.logger, args.save_dir)
    trainer = L.Trainer(
        max_epochs=1 if args.smoke else 5,
        limit_train_batches=1 if args.smoke else None,
        limit_test_batches=1 if args.smoke else None,
        logger=logger,
        callbacks=[LwF(alpha=1.0), StreamReport(summary=False)],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(100,)), lr=0.1))
    result = fit_stream(trainer, model, SplitDigits(num_experiences=5, seed=0))
    print(result.table())
    print(f"logged to {logger.log_dir if isinstance(logger, TensorBoardLogger) else logger.save_dir}")
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()  # flush the offline run


if __name__ == "__main__":
    main()
