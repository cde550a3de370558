"""Continual learning for the LightningModule you already have: wrap it, nothing else changes.

python examples/wrap_existing_module.py            # 5 experiences of the embedded 8x8 digits
python examples/wrap_existing_module.py --smoke    # one batch per experience (also LIGHTNING_CL_SMOKE=1)
"""

import os
import sys

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitDigits

SMOKE = "--smoke" in sys.argv or os.environ.get("LIGHTNING_CL_SMOKE") == "1"


class DigitClassifier(L.LightningModule):
    """An ordinary LightningModule: nothing in it knows about continual learning."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # logits: the stream evaluation calls forward

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("my_loss", loss)  # your own logging keeps working
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # called again at every experience: each experience gets a fresh optimizer
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def main() -> None:
    datamodule = SplitDigits(num_experiences=5, seed=0)  # 10 digit classes, 2 new ones per experience
    model = ContinualModule(DigitClassifier())
    # ONE Trainer for the whole stream; max_epochs is the budget of EACH experience
    trainer = L.Trainer(
        max_epochs=1 if SMOKE else 5,
        limit_train_batches=1 if SMOKE else None,
        limit_test_batches=1 if SMOKE else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    result = fit_stream(trainer, model, datamodule)  # fit + test per experience
    print(result.table())

    # ContinualModule's state_dict is the wrapped module's, key for key: use it without lightning_cl
    bare = DigitClassifier()
    bare.load_state_dict(model.state_dict())
    print(f"average accuracy {result.average_accuracy:.3f}; weights loaded into a bare {type(bare).__name__}")


if __name__ == "__main__":
    main()
