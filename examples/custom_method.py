"""Your own CL method, as a callback: here "L2": stay close to the weights the last experience reached.

python examples/custom_method.py [--smoke]
"""

import os
import sys

import lightning as L
import torch

from lightning_cl import ContinualCallback, ContinualModule, Experience, fit_stream
from lightning_cl.benchmarks import SplitDigits
from lightning_cl.core.callback import TrainingStep
from lightning_cl.models import MLP, Classifier

SMOKE = "--smoke" in sys.argv or os.environ.get("LIGHTNING_CL_SMOKE") == "1"


class L2Anchor(ContinualCallback):
    """Adds ``strength * sum((theta - theta_prev) ** 2)``, ``theta_prev`` the weights after the last experience."""

    def __init__(self, strength: float = 0.1) -> None:
        if strength < 0:
            raise ValueError(f"`strength`: expected a number >= 0, got {strength!r}.")
        self.strength = strength
        self.anchor: dict[str, torch.Tensor] = {}  # by parameter name, as checkpoints need

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        self.anchor = {name: p.detach().clone() for name, p in pl_module.module.named_parameters()}

    def loss_terms(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        if not self.anchor:
            return {}  # first experience: nothing to remember yet
        params = dict(step.module.module.named_parameters())
        squares = []
        for name, anchor in self.anchor.items():
            p = params[name]
            anchor = self.anchor[name] = anchor.to(p.device)  # the model sat on the CPU between fits
            region = tuple(slice(0, n) for n in anchor.shape)  # a grown layer: only its old entries
            squares.append(((p[region] - anchor) ** 2).sum())
        return {"anchor": self.strength * torch.stack(squares).sum()}  # added to the loss, logged as train/anchor_loss

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:  # saved in every Lightning checkpoint
        return {"anchor": {name: t.cpu() for name, t in self.anchor.items()}}

    def load_state_dict(self, state_dict: dict[str, dict[str, torch.Tensor]]) -> None:
        self.anchor = dict(state_dict.get("anchor", {}))


def main() -> None:
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(100,)), lr=0.1))
    method = L2Anchor(strength=0.1)
    trainer = L.Trainer(
        max_epochs=1 if SMOKE else 5,
        limit_train_batches=1 if SMOKE else None,
        limit_test_batches=1 if SMOKE else None,
        callbacks=[method],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    print(fit_stream(trainer, model, SplitDigits(num_experiences=5, seed=0)).table())
    print(f"anchored tensors (saved in checkpoints): {len(method.state_dict()['anchor'])}")


if __name__ == "__main__":
    main()
