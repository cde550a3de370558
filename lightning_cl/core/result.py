"""StreamResult: what a run over a stream produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class StreamResult:
    """The accuracy matrix of a stream and the metrics derived from it.

    Attributes:
        accuracy_matrix: ``R``, shape ``[trained experiences, test experiences]``; ``R[i, j]`` is
            the accuracy on test experience ``j`` after training experience ``i``, in [0, 1].
        average_accuracy: mean of the last row of ``R``.
        forgetting: mean drop from the best earlier accuracy to the final one.
        backward_transfer: mean of ``R[T-1, j] - R[j, j]`` over earlier experiences.
        forward_transfer: mean of ``R[j-1, j] - b[j]``; None without an initial evaluation.
        initial_accuracy: ``b``, accuracy per test experience before training; None if not run.
        fit_seconds: wall time of the ``fit`` calls of each experience.
    """

    accuracy_matrix: Tensor
    average_accuracy: float
    forgetting: float
    backward_transfer: float
    forward_transfer: float | None
    initial_accuracy: Tensor | None
    fit_seconds: list[float] = field(default_factory=list)

    def table(self) -> str:
        """The accuracy matrix and the stream metrics as a plain-text table."""
        R = self.accuracy_matrix
        columns = R.shape[1]
        head = "after exp " + "".join(f"{'exp ' + str(j):>9}" for j in range(columns)) + f"{'fit s':>9}"
        lines = ["Accuracy matrix R[i, j] (rows: trained experience, columns: test experience)", head]
        if self.initial_accuracy is not None:
            lines.append(f"{'initial':<10}" + "".join(f"{v:9.4f}" for v in self.initial_accuracy.tolist()))
        for i, row in enumerate(R.tolist()):
            seconds = self.fit_seconds[i] if i < len(self.fit_seconds) else float("nan")
            lines.append(f"{i:<10}" + "".join(f"{v:9.4f}" for v in row) + f"{seconds:9.2f}")
        lines.append("")
        lines.append(f"average accuracy  {self.average_accuracy:.4f}")
        lines.append(f"forgetting        {self.forgetting:.4f}")
        lines.append(f"backward transfer {self.backward_transfer:+.4f}")
        if self.forward_transfer is not None:
            lines.append(f"forward transfer  {self.forward_transfer:+.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
