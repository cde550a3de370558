"""RankConsistency in one process: its checksum, its arguments, and its verdicts on a two-rank gather
played back in one process (the real two-process runs are in tests/integration/test_ddp_checks.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.callbacks.rank_consistency import RankConsistency, tensor_checksum
from lightning_cl.core.callback import ContinualCallback
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


class PlayedBack:
    """``all_gather`` of two processes in one: first ``record`` rank 1's tensors, then rank 0 gets both."""

    def __init__(self) -> None:
        self.recorded: list[Tensor] = []
        self.playing = False

    def all_gather(self, tensor: Tensor) -> Tensor:
        if not self.playing:
            self.recorded.append(tensor.clone())
            return torch.stack([tensor, tensor])
        return torch.stack([tensor, self.recorded.pop(0)])


class Memory(ContinualCallback):
    def __init__(self, values: list[float], extra: bool = False) -> None:
        self.values, self.extra = values, extra

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"buffer": {"logits": torch.tensor(self.values)}, "seen": 7, "mode": "joint"}
        if self.extra:
            state["more"] = torch.zeros(1)
        return state


def verdict(rank1: tuple[Any, list[Any]], rank0: tuple[Any, list[Any]], state: bool = True) -> str:
    """The error rank 0 raises for these (model, callbacks) of ranks 1 and 0 ("" when they agree)."""
    gather = PlayedBack()
    for (model, callbacks), playing in ((rank1, False), (rank0, True)):
        gather.playing = playing
        trainer = SimpleNamespace(world_size=2, global_rank=0, strategy=gather, callbacks=callbacks)
        try:
            RankConsistency().check(trainer, model, state=state, when="now")  # type: ignore[arg-type]
        except RuntimeError as error:
            assert playing, "rank 1's own pass compares it with itself"
            return str(error)
    return ""


def model(seed: int = 0) -> ContinualModule:
    torch.manual_seed(seed)
    return ContinualModule(TinyClassifier(in_features=8, num_classes=6))


def test_checksum_tells_values_order_non_finite_and_size_apart() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert tensor_checksum(t).tolist() == [10.0, 30.0, 0.0, 4.0]  # 1*1 + 2*2 + 3*3 + 4*4
    assert tensor_checksum(t.flip(0)).tolist() != tensor_checksum(t).tolist()
    assert tensor_checksum(torch.tensor([1.0, float("nan"), float("inf")])).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert tensor_checksum(torch.zeros(2)).tolist() != tensor_checksum(torch.zeros(3)).tolist()
    assert tensor_checksum(torch.tensor([True, False])).tolist() == [1.0, 1.0, 0.0, 2.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, r"`every_n_steps`: expected None or a positive integer, got 0"),
        ({"every_n_steps": True}, r"`every_n_steps`: expected None or a positive integer, got True"),
        ({"every_n_steps": 2.5}, r"`every_n_steps`: expected None or a positive integer, got 2.5"),
        ({"check_state": "yes"}, r"`check_state`: expected a bool, got str 'yes'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RankConsistency(**kwargs)


def test_one_process_is_a_no_op() -> None:
    checker = RankConsistency(every_n_steps=1)
    result = fit_stream(quiet_trainer(callbacks=[checker]), model(), make_tensor_stream(2), evaluate_initial=False)
    assert result.accuracy_matrix.shape == (2, 2)
    assert checker._last_checked_step == -1  # never compared anything


def test_identical_ranks_pass() -> None:
    assert verdict((model(), [Memory([1.0, float("nan")])]), (model(), [Memory([1.0, float("nan")])])) == ""


def test_a_differing_parameter_is_named_with_its_rank() -> None:
    perturbed = model()
    with torch.no_grad():
        perturbed.module.net[3].weight[2, 5] += 1e-6
    message = verdict((perturbed, []), (model(), []))
    assert message.startswith("RankConsistency: the processes disagree now: 1 of 4 entries differ from rank 0's:")
    assert "parameter `net.3.weight` on rank(s) [1]." in message


def test_differing_cl_state_is_named_and_only_checked_with_state() -> None:
    rank1, rank0 = (model(), [Memory([1.0, 2.0])]), (model(), [Memory([1.0, 2.5])])
    assert "1 of 7 entries differ from rank 0's: CL state `Memory/buffer/logits` on rank(s) [1]" in verdict(
        rank1, rank0
    )
    assert verdict(rank1, rank0, state=False) == ""


def test_other_entries_are_a_layout_error() -> None:
    message = verdict((model(), [Memory([1.0], extra=True)]), (model(), [Memory([1.0])]))
    assert "rank(s) [1] hold other parameters or CL state than rank 0 (entries: [7, 8] by rank)" in message


def test_many_differences_are_counted_not_listed() -> None:
    callbacks = [Memory([float(k)]) for k in range(12)]
    message = verdict((model(1), callbacks), (model(2), callbacks))
    assert "4 of 40 entries differ" in message  # the 4 parameters; the 12 memories (3 leaves each) agree
    message = verdict((model(), [Memory([float(k)]) for k in range(12)]), (model(), [Memory([-1.0])] * 12))
    assert "12 of 40 entries differ" in message and "; and 4 more." in message
