"""An online stream: every sample is seen once, in mini-experiences of 10 samples (one step each).

    python examples/online_stream.py [--smoke]

``online`` keeps the experiences of a stream and trains each with ONE ``fit`` of a single pass;
callbacks that define ``on_mini_experience_start/end`` see the boundaries inside it.
"""

import os
import sys

import lightning as L

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitDigits, online
from lightning_cl.models import MLP, Classifier

SMOKE = "--smoke" in sys.argv or os.environ.get("LIGHTNING_CL_SMOKE") == "1"


class CountMiniExperiences(L.Callback):
    """Counts the mini-experience boundaries the online stream reports."""

    def __init__(self) -> None:
        self.ended = 0

    def on_mini_experience_end(self, trainer: L.Trainer, pl_module: L.LightningModule, mini_experience: object) -> None:
        self.ended += 1


def main() -> None:
    datamodule = online(SplitDigits(num_experiences=5, seed=0), experience_size=10)  # batch size 10: one step each
    counter = CountMiniExperiences()
    # max_epochs=1: a single pass (the online stream trains one epoch whatever it is set to, with a warning)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1 if SMOKE else None,
        limit_test_batches=1 if SMOKE else None,
        callbacks=[counter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(100,)), lr=0.05))
    result = fit_stream(trainer, model, datamodule)
    print(result.table())
    print(f"{trainer.global_step} optimizer steps, {counter.ended} mini-experiences")


if __name__ == "__main__":
    main()
