"""Shared by the two-process method tests: a small digits stream, the methods, a probe, and one run.

The same run is made on two processes (``strategy="ddp"``, ``BATCH // 2`` per process) and on one
(``BATCH``), so that both take the same optimizer steps on the same samples: under DDP the
stream's training loaders read ``order[rank::2]`` of the one seeded order (``ShardedOrder``, not
Lightning's reshuffling ``DistributedSamplerWrapper``), so a step of the two processes draws
exactly the samples of the single process's step, and DDP's average of two half-batch mean
gradients is the whole batch's mean. Every experience has an even number of training samples (no
padding duplicate on the last step); the test sets keep their odd sizes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import from_tensors
from lightning_cl.benchmarks.digits import DIGITS_TEST_FRACTION, load_digits, stratified_split
from lightning_cl.callbacks.agem import AGEM
from lightning_cl.callbacks.der import DER
from lightning_cl.callbacks.ewc import EWC
from lightning_cl.callbacks.gem import GEM
from lightning_cl.callbacks.icarl import ICaRL
from lightning_cl.callbacks.lwf import LwF
from lightning_cl.callbacks.mas import MAS
from lightning_cl.callbacks.mir import MIR
from lightning_cl.callbacks.rank_consistency import RankConsistency
from lightning_cl.callbacks.replay import Replay
from lightning_cl.callbacks.si import SI
from lightning_cl.core.callback import continual_callbacks
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.models import MLP, Classifier
from tests.conftest import quiet_trainer, run_two_processes

BATCH = 16  # the global batch: 16 on one process, 8 on each of two
CLASSES = 6
PER_CLASS = 40  # training samples per class (even): 80 per experience, 5 steps of 16
EXPERIENCES = 3
EPOCHS = 3  # per experience: 15 steps

# per-process sizes are half the single-process ones (Lightning's batch sizes are per process);
# sample_size and patterns_per_experience are not: GEM / A-GEM use the whole draw on every rank
METHODS: dict[str, Callable[[int], list[L.Callback]]] = {
    "replay_joint": lambda world: [Replay(memory_size=40, batch_mode="joint", memory_batch_size=8 // world)],
    "replay_concat": lambda world: [Replay(memory_size=40, batch_mode="concat")],
    "der": lambda world: [DER(memory_size=40, alpha=0.5, beta=0.5, memory_batch_size=8 // world)],
    "ewc": lambda world: [EWC(ewc_lambda=10.0)],
    "si": lambda world: [SI(si_lambda=1000.0)],
    "lwf": lambda world: [LwF(alpha=1.0, temperature=2.0)],
    "gem": lambda world: [GEM(patterns_per_experience=20, memory_strength=0.5)],
    "agem": lambda world: [AGEM(patterns_per_experience=20, sample_size=16)],
    "icarl": lambda world: [ICaRL(memory_size=40)],
    # checked for agreement across ranks only (MIR's selection is per process by design)
    "mir": lambda world: [MIR(memory_size=40, subsample=12, memory_batch_size=4)],
    "mas": lambda world: [MAS(lambda_reg=0.3)],
}


def digits_stream(batch_size: int) -> StreamDataModule:
    """Digits 0-5 as 3 experiences of 2 classes: 80 training samples each (even), the full test split."""
    images, targets = load_digits()
    train, test = stratified_split(targets, DIGITS_TEST_FRACTION, seed=0)
    keep = torch.cat([train[targets[train] == c][:PER_CLASS] for c in range(CLASSES)]).sort().values
    test = test[targets[test] < CLASSES]
    x = images.float() / 16
    dm = from_tensors(
        x[keep],
        targets[keep],
        x[test],
        targets[test],
        num_experiences=EXPERIENCES,
        class_order=list(range(CLASSES)),
        batch_size=batch_size,
        eval_batch_size=32,
    )
    # shuffle_seed: not PL_GLOBAL_SEED, which another test of the session may have set
    return StreamDataModule(dm.train_stream, dm.test_stream, batch_size=batch_size, eval_batch_size=32, shuffle_seed=0)


def sizes_of_test_stream() -> list[int]:
    return [len(e) for e in digits_stream(BATCH).test_stream]


def make_model() -> ContinualModule:
    torch.manual_seed(0)
    return ContinualModule(Classifier(MLP(64, CLASSES, hidden_sizes=(32,)), lr=0.2))


def flat_parameters(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def memory_fingerprints(trainer: L.Trainer) -> list[int]:
    """The fingerprint of every replay buffer or pattern memory of the trainer's callbacks."""
    prints = []
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        buffer = getattr(callback, "buffer", None)
        if buffer is not None:
            prints.append(buffer.fingerprint())
        memory = getattr(callback, "memory", None)
        if memory is not None:
            prints.append(zlib.crc32(torch.stack([memory.experience, memory.position]).numpy().tobytes()))
    return prints


def _leaves(value: Any) -> list[Tensor]:
    """Every tensor and number of a nested state_dict, as float64 vectors (NaN, which stored logits hold, as -7)."""
    if isinstance(value, dict):
        return [t for key in value for t in _leaves(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _leaves(item)]
    if isinstance(value, Tensor):
        return [torch.nan_to_num(value.detach().cpu().double().reshape(-1), nan=-7.0)]
    if isinstance(value, (bool, int, float)):
        return [torch.tensor([float(value)], dtype=torch.float64)]
    return []


def method_state(trainer: L.Trainer) -> Tensor:
    """The state of every CL method of the trainer (importances, anchors, old models, memories) as one vector."""
    parts = [t for c in continual_callbacks(trainer) for t in _leaves(c.state_dict())]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


class Probe(L.Callback):
    """After each fit (the experience consolidated): the parameters and memory fingerprints of every
    rank, gathered with ``all_gather``; per test pass: the samples each test loader gave this rank."""

    def __init__(self) -> None:
        self.parameters: list[Tensor] = []  # [world, P] per experience
        self.fingerprints: list[Tensor] = []  # [world, F] per experience
        self.states: list[Tensor] = []  # [world, S] per experience: the CL methods' state
        self.test_counts: list[list[int]] = []  # per test pass, samples per test experience, summed over ranks
        self._counts: dict[int, int] = {}

    def _gather(self, trainer: L.Trainer, tensor: Tensor) -> Tensor:
        if trainer.world_size == 1:
            return tensor.unsqueeze(0)
        return trainer.strategy.all_gather(tensor).reshape(trainer.world_size, *tensor.shape)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = pl_module.module  # type: ignore[union-attr]
        self.parameters.append(self._gather(trainer, flat_parameters(module)).cpu())
        prints = torch.tensor(memory_fingerprints(trainer), dtype=torch.float64)
        self.fingerprints.append(self._gather(trainer, prints).cpu())
        self.states.append(self._gather(trainer, method_state(trainer).to(pl_module.device)).cpu())

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts = {}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._counts[dataloader_idx] = self._counts.get(dataloader_idx, 0) + len(batch[1])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = torch.tensor([self._counts.get(j, 0) for j in range(EXPERIENCES)], dtype=torch.float64)
        self.test_counts.append(self._gather(trainer, counts).sum(0).long().tolist())


def run(method: str, world: int, check_ranks: bool = False) -> dict[str, Any]:
    """One stream with ``method`` on ``world`` processes (the caller's process group), global batch ``BATCH``."""
    probe = Probe()
    callbacks = [*METHODS[method](world), probe]
    if check_ranks:
        callbacks.append(RankConsistency(every_n_steps=2))
    ddp: dict[str, Any] = dict(devices=2, strategy="ddp") if world == 2 else {}
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=EPOCHS, **ddp)
    model = make_model()
    result = fit_stream(trainer, model, digits_stream(BATCH // world))
    record = {
        "R": result.accuracy_matrix,
        "initial": result.initial_accuracy,
        "parameters": probe.parameters,
        "fingerprints": probe.fingerprints,
        "states": probe.states,
        "test_counts": probe.test_counts,
        "steps": trainer.global_step,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }
    return record


def ranks_worker(rank: int, out: str, runs: list[str]) -> None:
    """Run the methods ``runs`` one after the other on this rank (one spawn for all), saving rank 0's records."""
    for method in runs:
        record = run(method, world=2, check_ranks=True)
        if rank == 0:
            torch.save(record, Path(out) / f"{method}.pt")


def spawn_runs(out: Path, runs: list[str]) -> dict[str, dict[str, Any]]:
    """Two processes run ``runs``; their rank-0 records by file stem."""
    run_two_processes(ranks_worker, str(out), runs)
    return {p.stem: torch.load(p, weights_only=True) for p in sorted(out.glob("*.pt"))}


def assert_ranks_agree(record: dict[str, Any]) -> None:
    """Both ranks hold the same parameters and memories after every experience; every test sample counts once."""
    sizes = sizes_of_test_stream()
    assert len(record["parameters"]) == EXPERIENCES
    for parameters, fingerprints, state in zip(record["parameters"], record["fingerprints"], record["states"]):
        assert parameters.shape[0] == 2
        torch.testing.assert_close(parameters[0], parameters[1], rtol=0, atol=0)
        assert torch.equal(fingerprints[0], fingerprints[1])
        torch.testing.assert_close(state[0], state[1], rtol=0, atol=0)
    # every test pass (the initial one and one per experience) saw each test sample exactly once
    assert record["test_counts"] == [sizes] * (EXPERIENCES + 1)
    # accuracies are counts over the exact test-set sizes: R * n is an integer
    correct = record["R"] * torch.tensor(sizes, dtype=torch.float64)
    torch.testing.assert_close(correct, correct.round(), rtol=0, atol=1e-9)


def assert_matches_one_process(record: dict[str, Any], method: str) -> None:
    """The two-process record against a one-process run of the same global batch (tolerances: see the test modules)."""
    single = run(method, world=1)
    assert record["steps"] == single["steps"]  # the same optimizer steps
    for i in range(EXPERIENCES):
        torch.testing.assert_close(record["parameters"][i][0], single["parameters"][i][0], rtol=0, atol=1e-4)
        assert torch.equal(record["fingerprints"][i][0], single["fingerprints"][i][0])  # the same samples kept
        # importances, anchors, old models, stored logits: one half-data sum more or less is ~10% off
        torch.testing.assert_close(record["states"][i][0], single["states"][i][0], rtol=1e-3, atol=1e-5)
    sizes = torch.tensor(sizes_of_test_stream(), dtype=torch.float64)
    assert (record["R"] - single["R"]).abs().le(1 / sizes + 1e-9).all(), (record["R"], single["R"])
    assert record["test_counts"] == single["test_counts"]
