"""Regularization (EWC, SI, MAS) and distillation (LwF) on two processes against one process; MIR's ranks agree.

As ``test_ddp_methods``: one spawn runs every method on both ranks (with ``RankConsistency``),
and each is compared step for step with a one-process run of the same global batch.
EWC's Fisher and MAS's importance are computed on each rank's shard ``rank::2`` of the experience
and summed across ranks; SI's path integral reads the synced gradients; LwF's old model is a copy
of the synced parameters. Tolerances and their reasons: see ``test_ddp_methods`` (parameters
``atol=1e-4``, measured ~1e-7; R within one test sample per cell, measured identical); the
importance sums add two shards' float32 sums instead of one, another ~1e-7 relative.

MIR is checked for agreement only: each process scores its own memory subsample with its own
virtual step (its selection is per process by design, as its batch is), and DDP averages the
resulting gradients, so the ranks stay identical but the run is not the one-process run.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.ddp_method_helpers import assert_matches_one_process, assert_ranks_agree, spawn_runs

COMPARED = ["ewc", "si", "mas", "lwf"]
AGREEING = ["mir"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return spawn_runs(tmp_path_factory.mktemp("ddp_penalties"), COMPARED + AGREEING)


@pytest.mark.ddp
@pytest.mark.parametrize("name", COMPARED + AGREEING)
def test_ranks_agree_after_every_experience(records: dict[str, dict[str, Any]], name: str) -> None:
    assert_ranks_agree(records[name])


@pytest.mark.ddp
@pytest.mark.parametrize("method", COMPARED)
def test_two_processes_match_one(records: dict[str, dict[str, Any]], method: str) -> None:
    assert_matches_one_process(records[method], method)
