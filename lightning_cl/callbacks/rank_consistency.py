"""RankConsistency: a debug check that every process holds the same model and the same CL state."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_cl.core.callback import continual_callbacks

_SHOWN = 8  # differing entries named in the error; the rest are counted


def tensor_checksum(tensor: Tensor) -> Tensor:
    """Four float64 numbers that tell two tensors apart: the sum of the finite entries, their sum
    weighted by position (a permutation changes it), the number of non-finite entries (NaN and
    inf compare unequal to themselves, so they are counted, not summed) and the number of entries.

    Example:
        >>> tensor_checksum(torch.tensor([1.0, 2.0, float("nan")])).tolist()
        [3.0, 5.0, 1.0, 3.0]
        >>> tensor_checksum(torch.tensor([2.0, 1.0, float("nan")])).tolist()
        [3.0, 4.0, 1.0, 3.0]
    """
    values = tensor.detach().reshape(-1).double()
    finite = torch.isfinite(values)
    values = torch.where(finite, values, torch.zeros((), dtype=torch.float64, device=values.device))
    weights = torch.arange(1, len(values) + 1, dtype=torch.float64, device=values.device)
    count = torch.tensor(float(len(values)), dtype=torch.float64, device=values.device)
    return torch.stack([values.sum(), (values * weights).sum(), (~finite).sum().double(), count])


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` pairs of a nested ``state_dict`` (mappings and sequences walked in order)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{prefix}/{i}")
    elif value is not None:
        yield prefix, value


def _leaf_checksum(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return tensor_checksum(value)
    if isinstance(value, (bool, int, float)):
        return torch.tensor([float(value), 0.0, 0.0, 1.0], dtype=torch.float64)
    # strings and other primitives: a stable hash (Python's hash() differs between processes)
    return torch.tensor([float(zlib.crc32(repr(value).encode())), 0.0, 0.0, 1.0], dtype=torch.float64)


class RankConsistency(L.Callback):
    """Checks that all processes hold the same model and the same CL state (a debug mode).

    Under ``strategy="ddp"`` the processes stay identical only as long as each one makes the same
    change: DDP averages the gradients, but anything else a method does on a process's own data (a
    gradient edited with a rank's own batch, a memory filled from a rank's shard, a parameter set
    outside the optimizer, a generator seeded differently) makes the ranks drift apart silently.
    This callback compares cheap checksums (:func:`tensor_checksum`: four numbers per tensor,
    gathered in one collective) across the processes:

    * at the end of every ``fit``, after the CL methods consolidated the experience: every
      parameter and buffer of the model, and every tensor and number in the ``state_dict`` of
      every CL method (replay buffers, stored logits, importances, anchors, old models, class
      means);
    * with ``every_n_steps``, the parameters every ``n`` optimizer steps (buffers such as
      BatchNorm statistics are allowed to differ during an experience: DDP broadcasts them
      from rank 0 before each step).

    When a checksum differs it raises, on every process, a ``RuntimeError`` that names the
    parameters or state entries and the ranks that differ from rank 0. On one process it does
    nothing. The cost is a pass over the parameters (and the CL state) and two small collectives,
    so it can stay on while a new setup is tried; leave it out of production runs.

    Args:
        every_n_steps: also check the parameters every this many optimizer steps (``None``: only
            at the end of each fit).
        check_state: also compare the state of the CL methods (the trainer's
            :class:`~lightning_cl.core.callback.ContinualCallback`\\ s) at the end of each fit.

    Raises:
        ValueError: if ``every_n_steps`` is not ``None`` or a positive integer, or ``check_state``
            is not a bool.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[RankConsistency(every_n_steps=100)], logger=False)
    """

    def __init__(self, every_n_steps: int | None = None, check_state: bool = True) -> None:
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(f"`every_n_steps`: expected None or a positive integer, got {every_n_steps!r}.")
        if not isinstance(check_state, bool):
            raise ValueError(f"`check_state`: expected a bool, got {type(check_state).__name__} {check_state!r}.")
        self.every_n_steps = every_n_steps
        self.check_state = check_state
        self._last_checked_step = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or trainer.world_size == 1 or step == self._last_checked_step:
            return
        if step % self.every_n_steps == 0:  # every rank makes the same steps: the same decision
            self._last_checked_step = step
            self.check(trainer, pl_module, state=False, when=f"at global step {step}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        dm = getattr(trainer, "datamodule", None)
        done = getattr(dm, "completed_experiences", None)
        when = f"at the end of a fit (global step {trainer.global_step}"
        when += ")" if done is None else f", experiences trained: {done})"
        self.check(trainer, pl_module, state=self.check_state, when=when)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule, state: bool = True, when: str = "") -> None:
        """Compare the checksums across the processes now (a collective: every rank must call it).

        Raises:
            RuntimeError: if a process's parameters, buffers or (with ``state``) CL state differ
                from rank 0's.
        """
        if trainer.world_size == 1:
            return
        model: nn.Module = getattr(pl_module, "module", pl_module)
        names, sums = [], []
        for name, p in model.named_parameters():
            names.append(f"parameter `{name}`")
            sums.append(tensor_checksum(p).to(pl_module.device))
        if state:
            for name, b in model.named_buffers():
                names.append(f"buffer `{name}`")
                sums.append(tensor_checksum(b).to(pl_module.device))
            for callback in continual_callbacks(trainer):
                for path, leaf in _leaves(callback.state_dict(), type(callback).__name__):
                    names.append(f"CL state `{path}`")
                    sums.append(_leaf_checksum(leaf).to(pl_module.device))
        # first the layout (how many entries, under which names), so that the second gather has
        # equal shapes on every rank, as all_gather needs
        layout = torch.tensor(
            [len(names), zlib.crc32("\n".join(names).encode())], dtype=torch.float64, device=pl_module.device
        )
        layouts = trainer.strategy.all_gather(layout).reshape(trainer.world_size, 2)
        other = [r for r in range(trainer.world_size) if not torch.equal(layouts[r], layouts[0])]
        if other:
            raise RuntimeError(
                f"RankConsistency: the processes disagree {when}: rank(s) {other} hold other parameters or CL "
                f"state than rank 0 (entries: {layouts[:, 0].long().tolist()} by rank), e.g. a model that grew "
                "on some processes only, or a CL method whose state depends on the process."
            )
        local = torch.stack(sums) if sums else torch.zeros(0, 4, dtype=torch.float64, device=pl_module.device)
        gathered = trainer.strategy.all_gather(local).reshape(trainer.world_size, *local.shape)
        differing = []
        for k, name in enumerate(names):
            ranks = [r for r in range(1, trainer.world_size) if not torch.equal(gathered[r, k], gathered[0, k])]
            if ranks:
                differing.append(f"{name} on rank(s) {ranks}")
        if differing:
            shown = "; ".join(differing[:_SHOWN])
            more = f"; and {len(differing) - _SHOWN} more" if len(differing) > _SHOWN else ""
            raise RuntimeError(
                f"RankConsistency: the processes disagree {when}: {len(differing)} of {len(names)} entries differ "
                f"from rank 0's: {shown}{more}. Something changed the model or a CL method's state from one "
                "process's own data or random generator (not through the synced gradients): a hook or method "
                "that edits parameters or gradients per rank, a buffer filled from a rank's shard, or an unseeded "
                "random choice."
            )
