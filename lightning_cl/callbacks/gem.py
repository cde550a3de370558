"""GEM: keep the loss of every past experience's memory from increasing (a quadratic program)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_cl.callbacks._common import check_number
from lightning_cl.callbacks._replay import PatternMemory, flat_grad, memory_gradient, trainable, write_projection
from lightning_cl.core.callback import ContinualCallback
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


def solve_nonnegative_qp(
    P: Tensor, c: Tensor, lower: float, tolerance: float = 1e-10, max_iterations: int | None = None
) -> Tensor:
    """``argmin_v 0.5 v'Pv + c'v`` subject to ``v >= lower``, for a small positive definite ``P``.

    Lawson & Hanson's active-set method (their NNLS algorithm, written for the quadratic
    program): the free variables solve their linear system exactly, so the answer is exact up
    to a linear solve in a finite number of steps, however ill-conditioned ``P`` is (memory
    gradients of similar experiences are nearly parallel, where coordinate descent would need
    millions of sweeps). GEM's problems have one variable per past experience: a few linear
    solves of that size per step.

    Args:
        P: ``[t, t]`` symmetric positive definite matrix.
        c: ``[t]`` linear term.
        lower: the bound of every variable.
        tolerance: a variable at its bound is optimal when the objective's slope pushing it
            up is at most ``tolerance`` times the largest entry of the problem's linear term.
        max_iterations: at most this many variables freed (default ``3 * t + 10``).

    Example:
        >>> P = torch.eye(2, dtype=torch.float64)
        >>> solve_nonnegative_qp(P, torch.tensor([-1.0, 2.0], dtype=torch.float64), 0.0).tolist()
        [1.0, 0.0]
    """
    P = P.double()
    t = len(c)
    # shift to u = v - lower >= 0: minimise 0.5 u'Pu + q'u
    q = c.double() + P @ torch.full((t,), float(lower), dtype=torch.float64, device=P.device)
    threshold = tolerance * max(float(q.abs().max()) if t else 0.0, 1e-300)
    u = torch.zeros(t, dtype=torch.float64, device=P.device)
    free = torch.zeros(t, dtype=torch.bool, device=P.device)
    for _ in range(3 * t + 10 if max_iterations is None else max_iterations):
        slope = -(q + P @ u)  # minus the gradient: > 0 where raising a bound variable lowers the objective
        slope[free] = -torch.inf
        while True:
            j = int(torch.argmax(slope)) if t else 0
            if not t or float(slope[j]) <= threshold:
                return u + lower  # KKT: every bound variable's slope points into its bound
            trial = free.clone()
            trial[j] = True
            s = _solve_free(P, q, trial)
            if float(s[j]) > 0:
                break
            slope[j] = -torch.inf  # rounding: j cannot rise from its bound, try the next one
        free = trial
        while True:
            blocked = free & (s <= 0)
            if not bool(blocked.any()):
                u = s
                break
            # walk from u towards s until the first free variable reaches its bound, then fix it there
            alpha = float((u[blocked] / (u[blocked] - s[blocked])).min())
            u = u + alpha * (s - u)
            free &= u > 0
            u[~free] = 0.0
            s = _solve_free(P, q, free)
    return u + lower


def _solve_free(P: Tensor, q: Tensor, free: Tensor) -> Tensor:
    """The unconstrained minimiser over the ``free`` variables, the others at 0."""
    s = torch.zeros_like(q)
    index = free.nonzero().squeeze(1)
    if len(index):
        s[index] = torch.linalg.solve(P[index][:, index], -q[index])
    return s


def gem_projection(gradient: Tensor, memories: Tensor, margin: float = 0.0, eps: float = 1e-3) -> Tensor:
    """The gradient closest to ``gradient`` that does not conflict with any row of ``memories``.

    Lopez-Paz & Ranzato (2017), eq. 13: solve the dual ``min_v 0.5 v'GG'v + g'G'v, v >= margin``
    (``eps`` on the diagonal as in the reference code) and return ``G'v + g``. Unchanged when no
    memory gradient conflicts (``G g >= 0``).

    Example:
        >>> g = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> gem_projection(g, torch.tensor([[0.0, 1.0]], dtype=torch.float64), eps=0.0).tolist()
        [1.0, 0.0]
    """
    G = memories.double()
    g = gradient.double()
    if bool((G @ g >= 0).all()):
        return gradient
    P = G @ G.T
    P = 0.5 * (P + P.T) + eps * torch.eye(len(G), dtype=torch.float64, device=G.device)
    v = solve_nonnegative_qp(P.cpu(), (G @ g).cpu(), margin).to(G.device)
    return G.T @ v + g


class GEM(ContinualCallback):
    """Gradient Episodic Memory: one gradient constraint per past experience.

    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017. After
    each experience ``patterns_per_experience`` random samples of it are stored. At every step,
    in ``on_before_optimizer_step`` (gradients final, synced and unscaled), the gradient of the
    loss on each past experience's memory is computed; when the step's gradient conflicts with
    any of them it is replaced by the closest gradient that conflicts with none, found by a
    quadratic program whose dual has one variable per past experience (:func:`gem_projection`).
    ``memory_strength`` is the margin of the dual (larger: more conservative), as in the
    reference code. No external QP solver is needed. Only the parameters that the step's loss
    reaches get the projected gradient; the others (another task's head) keep ``grad=None`` and
    are left alone by the optimizer, as in Avalanche.

    Args:
        patterns_per_experience: samples stored per experience.
        memory_strength: the dual's margin, >= 0.
        seed: seed of the stored patterns.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[GEM(patterns_per_experience=256)], logger=False)
    """

    def __init__(self, patterns_per_experience: int, memory_strength: float = 0.5, seed: int = 0) -> None:
        self.memory_strength = check_number(memory_strength, "memory_strength")
        self.memory = PatternMemory(patterns_per_experience, seed, "GEM")
        self.patterns_per_experience = patterns_per_experience

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            patterns_per_experience=self.patterns_per_experience, memory_strength=self.memory_strength
        )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        if not len(self.memory) or not isinstance(pl_module, ContinualModule):
            return
        model = pl_module.module
        params = trainable(model)
        stream = pl_module.datamodule.train_stream
        device = params[0].device
        memories = torch.stack(
            [memory_gradient(model, params, self.memory.batch(stream, e, device)) for e in self.memory.experiences()]
        )
        gradient = flat_grad(params)
        projected = gem_projection(gradient, memories, self.memory_strength)
        if projected is not gradient:
            write_projection(params, projected)

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        self.memory.add(experience)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.memory.load_state_dict(state_dict.get("memory", {}))
