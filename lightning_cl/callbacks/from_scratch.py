"""FromScratch: retrain the model from its initial weights at every experience."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_cl.core.callback import ContinualCallback
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


class FromScratch(ContinualCallback):
    """Resets the model to its initial weights before each experience.

    The lower-bound reference of "no transfer at all" (Avalanche's ``FromScratchTraining``): each
    experience is learned by a model that has seen nothing before. Paired with
    :class:`~lightning_cl.callbacks.Cumulative` it retrains on all data so far from scratch.
    The optimizer is new at every experience anyway (Lightning re-creates it per ``fit``).

    The initial weights are those of the model when the first experience starts; they are part
    of the callback's state, so a resumed run resets to the same weights. A parameter whose shape
    changed since (a grown head) is re-drawn with its layer's ``reset_parameters``.
    """

    def __init__(self) -> None:
        self._initial: dict[str, Tensor] | None = None

    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        model = pl_module.module
        if self._initial is None:
            self._initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return
        current = model.state_dict()
        same = {k: v for k, v in self._initial.items() if k in current and current[k].shape == v.shape}
        changed = {k.rsplit(".", 1)[0] for k in current if k not in same}
        for name, submodule in model.named_modules():
            if name in changed and hasattr(submodule, "reset_parameters"):
                submodule.reset_parameters()
        model.load_state_dict(same, strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {} if self._initial is None else {"initial": dict(self._initial)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        initial = state_dict.get("initial")
        self._initial = None if initial is None else {k: torch.as_tensor(v) for k, v in initial.items()}
