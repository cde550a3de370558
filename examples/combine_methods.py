"""Two CL methods at once: list both callbacks, they combine (here Replay's memory + EWC's penalty).

    python examples/combine_methods.py [--smoke]

Replay adds a memory batch to every batch your training_step sees; EWC adds its loss term
(logged as ``train/ewc_loss``). The same works from the command line with
``-c configs/method/replay.yaml -c configs/method/ewc.yaml``.
"""

import os
import sys

import lightning as L
import torch

from lightning_cl import ContinualModule, StreamDataModule, fit_stream
from lightning_cl.benchmarks import Permute, SplitDigits, domain_incremental
from lightning_cl.callbacks import EWC, Replay
from lightning_cl.models import MLP, Classifier

SMOKE = "--smoke" in sys.argv or os.environ.get("LIGHTNING_CL_SMOKE") == "1"


def permuted_digits() -> StreamDataModule:
    """Domain-incremental digits: 4 experiences, each all 10 digits under its own pixel permutation."""
    train, test = SplitDigits().load_datasets()
    generator = torch.Generator().manual_seed(0)
    permutations = [Permute(torch.randperm(64, generator=generator)) for _ in range(4)]
    return domain_incremental(train, test, permutations, batch_size=32)


def run(callbacks: list[L.Callback]) -> float:
    L.seed_everything(0)  # the same initial weights for both runs
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(100,)), lr=0.1))
    trainer = L.Trainer(
        max_epochs=1 if SMOKE else 5,
        limit_train_batches=1 if SMOKE else None,
        limit_test_batches=1 if SMOKE else None,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    result = fit_stream(trainer, model, permuted_digits(), evaluate_initial=False)
    return result.average_accuracy


def main() -> None:
    naive = run([])
    # the order of the list is the order in which the methods act; each keeps its own state
    combined = run([Replay(memory_size=200), EWC(ewc_lambda=1.0)])
    print(f"average accuracy: naive fine-tuning {naive:.3f}, Replay + EWC {combined:.3f}")


if __name__ == "__main__":
    main()
