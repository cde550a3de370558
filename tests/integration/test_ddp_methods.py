"""Memory-based methods on two processes (gloo, CPU) against the same stream on one process.

Replay (joint and concat batches), DER, iCaRL, GEM and A-GEM. One spawn runs them all, one after
the other, on both ranks, each with a ``RankConsistency`` check every 2 steps and after every
experience; each test then compares a method's two-process run with a one-process run of the
same global batch, step for step (see ``ddp_method_helpers``: the training order is sharded as
``order[rank::2]``). The two runs compute the same numbers up to the order of floating-point
additions (two half-batch means averaged by DDP against one mean of the batch).

Tolerances. Parameters: ``atol=1e-4`` after every experience. Float32 rounding differences of
~1e-7 per step, carried through 45 SGD steps (lr 0.2) of a 2-layer MLP, stay near 1e-7 (measured:
at most 2e-7 here); a synchronisation fault moves them by 1e-2 or more (a memory or a gradient edit
that differs by rank, a sample counted twice, a memory batch drawn per rank). R: equal up to one
test sample per cell (``1 / n_j``): parameters this close change a prediction only for a sample
whose two largest logits are within ~1e-6, which 90 test samples per experience make unlikely
(measured: R identical). Which samples the memories hold (fingerprints) must be identical, and
every test sample is counted exactly once. The methods' state (memories, stored logits, old
models, importances and anchors): ``rtol=1e-3, atol=1e-5`` against one process (measured: at most
3e-4 relative, in SI's importances, which divide by squared parameter moves), exactly equal across
ranks. The state matters on its own: an EWC Fisher left unreduced on each rank trains the same
parameters (DDP averages the two penalty gradients, and the mean of two half-data Fishers is the
whole-data one) but checkpoints rank 0's half-data Fisher; only the state comparisons (and
``RankConsistency``) catch it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.conftest import quiet_trainer
from tests.integration.ddp_method_helpers import (
    BATCH,
    EXPERIENCES,
    assert_matches_one_process,
    assert_ranks_agree,
    digits_stream,
    make_model,
    spawn_runs,
)

COMPARED = ["replay_joint", "replay_concat", "der", "icarl", "gem", "agem"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return spawn_runs(tmp_path_factory.mktemp("ddp_methods"), COMPARED)


@pytest.mark.ddp
@pytest.mark.parametrize("name", COMPARED)
def test_ranks_agree_after_every_experience(records: dict[str, dict[str, Any]], name: str) -> None:
    assert_ranks_agree(records[name])


@pytest.mark.ddp
@pytest.mark.parametrize("method", COMPARED)
def test_two_processes_match_one(records: dict[str, dict[str, Any]], method: str) -> None:
    assert_matches_one_process(records[method], method)


@pytest.mark.ddp
@pytest.mark.parametrize("method", COMPARED)
def test_memories_fill_up(records: dict[str, dict[str, Any]], method: str) -> None:
    # the fingerprints compared above change as the memories fill: equal constants would prove nothing
    prints = {tuple(f[0].tolist()) for f in records[method]["fingerprints"]}
    assert len(prints) == EXPERIENCES


@pytest.mark.ddp
@pytest.mark.parametrize("method", ["replay_joint", "agem"])
def test_rank_zero_weights_evaluate_like_the_stream(records: dict[str, dict[str, Any]], method: str) -> None:
    """The final weights of the two-process run, tested in one process, give exactly its last row of R."""
    model = make_model()
    model.load_state_dict(records[method]["state"])
    dm = digits_stream(BATCH)
    dm._next = EXPERIENCES  # the evaluation after the last experience: row T-1
    quiet_trainer().test(model, datamodule=dm, verbose=False)
    torch.testing.assert_close(model.accuracy_matrix[-1], records[method]["R"][-1], rtol=0, atol=0)
