"""Kill and resume: a run SIGKILLed mid-experience and resumed in a fresh process ends as if never stopped.

The runs happen in processes of their own (tests/integration/resume_worker.py): one process
forks, per case, a child that trains SplitDigits (5 experiences, 2 epochs each, an MLP with
dropout, SGD with momentum, ``deterministic=True``) with ModelCheckpoint every epoch and kills
itself with SIGKILL in the middle of experience 2, while the parent runs the same stream
uninterrupted; a second, fresh process resumes every killed run with
``fit_stream(..., ckpt_path=...)`` from a model with other initial weights. The final accuracy
matrix (all its rows, including those evaluated before the crash) and the final weights must
equal the uninterrupted run's, from the middle of an experience, from the end of its last epoch
and from between two experiences; also for a two-process ``ddp`` run. The checkpoints those runs
wrote also serve the checks of the state format (every method's state is tensors and primitives)
and of the refusals.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_cl.callbacks
from lightning_cl import fit_stream
from lightning_cl.benchmarks import SplitDigits
from lightning_cl.callbacks.ewc import EWC
from lightning_cl.callbacks.lwf import LwF
from lightning_cl.callbacks.replay import Replay
from lightning_cl.callbacks.si import SI
from lightning_cl.core.callback import ContinualCallback
from tests.conftest import REPO
from tests.integration import resume_worker as worker

CASES = list(worker.CASES)
# the methods whose state is built when an experience starts or consolidated when it ends
# (teachers, buffers, logits, exemplar means, initial weights) resume from both sides of a boundary too
AT_BOUNDARIES = [
    *("naive", "replay+ewc+lwf", "der", "icarl", "si", "erace+rwalk", "mir+lfl", "gdumb"),
    *("keep_optimizer_state", "max_steps"),
]
RESUMES = [(case, "mid") for case in CASES] + [(case, point) for case in AT_BOUNDARIES for point in worker.POINTS[1:]]
DDP_POINTS = list(worker.POINTS)
KILLED_IN = worker.KILL_EPOCH // worker.EPOCHS  # the experience the runs die in


def _run_worker(*args: Any) -> None:
    command = [sys.executable, "-m", "tests.integration.resume_worker", *map(str, args)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command[2:4])} failed ({done.returncode}):\n{done.stderr[-6000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume")
    _run_worker("crash", out, *CASES, "ddp")
    _run_worker("resume", out, *[f"{case}:{point}" for case, point in RESUMES], *[f"ddp:{p}" for p in DDP_POINTS])
    return out


def _load(path: Path) -> dict[str, Any]:
    error = path.with_suffix(".err")
    if error.exists():
        pytest.fail(f"the resumed run failed:\n{error.read_text()}")
    return torch.load(path, weights_only=True)


def _assert_same_run(resumed: dict[str, Any], reference: dict[str, Any], rows: int) -> None:
    R = reference["R"]
    assert R.shape == (rows, rows) and not bool(R.isnan().any())
    assert all(bool(torch.isfinite(v).all()) for v in reference["state"].values())  # a meaningful reference
    # all rows, those evaluated before the crash included, and the initial evaluation
    torch.testing.assert_close(resumed["R"], R, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed["initial"], reference["initial"], rtol=0, atol=1e-6)
    assert resumed["steps"] == reference["steps"]
    assert len(resumed["fit_seconds"]) == rows
    for name, value in reference["state"].items():
        torch.testing.assert_close(resumed["state"][name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", CASES)
def test_the_run_died_by_sigkill_mid_experience(runs: Path, case: str) -> None:
    assert json.loads((runs / "crash.json").read_text())[case] == signal.SIGKILL
    folder = runs / case / "ckpts"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == worker.KILL_EPOCH - 1  # the first of the experience's two epochs
    position = last["SplitDigits"]
    assert position["next"] == KILLED_IN and position["active"]
    assert not (folder / f"epoch={worker.KILL_EPOCH}.ckpt").exists()
    assert not (runs / case / "never.pt").exists()


@pytest.mark.parametrize(("case", "point"), [pytest.param(c, p, id=f"{c}-{p}") for c, p in RESUMES])
def test_the_resumed_run_ends_as_the_uninterrupted_one(runs: Path, case: str, point: str) -> None:
    reference = torch.load(runs / case / "reference.pt", weights_only=True)
    _assert_same_run(_load(runs / case / f"resumed_{point}.pt"), reference, worker.NUM_EXPERIENCES)


def _assert_plain(value: Any, where: str) -> None:
    """``value`` holds tensors and primitives only, in dicts, lists and tuples."""
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert value is None or isinstance(value, (torch.Tensor, bool, int, float, str)), f"{where}: {type(value)}"


@pytest.mark.parametrize("name", lightning_cl.callbacks.__all__)
def test_every_method_state_is_tensors_and_primitives(runs: Path, name: str) -> None:
    cls = getattr(lightning_cl.callbacks, name)
    if not issubclass(cls, ContinualCallback):  # a helper such as RankConsistency, not a CL method
        _assert_plain(cls().state_dict(), name)
        return
    case = next((c for c, make in worker.CASES.items() if any(type(m) is cls for m in make())), None)
    assert case is not None, f"{name} is in no kill-and-resume case of resume_worker.CASES"
    checkpoint = torch.load(runs / case / "ckpts" / "last.ckpt", weights_only=True)
    method = next(m for m in worker.CASES[case]() if type(m) is cls)
    assert method.state_key in checkpoint["lightning_cl"]["methods"]
    state = checkpoint["callbacks"].get(method.state_key, {})  # Lightning leaves an empty state out
    assert bool(state) == (cls is not lightning_cl.callbacks.Cumulative)
    _assert_plain(state, name)
    _assert_plain(checkpoint["lightning_cl"], "lightning_cl")


# ------------------------------------------------------------------------------ several processes
def _rank_errors(folder: Path) -> str:
    return "\n".join(f.read_text() for f in sorted(folder.glob("*.err")))


@pytest.mark.ddp
def test_a_two_process_run_was_killed_mid_experience(runs: Path) -> None:
    folder = runs / "ddp"
    assert json.loads((runs / "crash.json").read_text())["ddp"] == [signal.SIGKILL] * 2, _rank_errors(folder)
    last = torch.load(folder / "ckpts" / "last.ckpt", weights_only=True)
    assert last["epoch"] == worker.DDP_KILL_EPOCH - 1 and last["SplitDigits"]["active"]


@pytest.mark.ddp
@pytest.mark.parametrize("point", DDP_POINTS)
def test_a_two_process_run_resumes_exactly(runs: Path, point: str) -> None:
    folder = runs / "ddp"
    for rank in range(2):
        reference = torch.load(folder / f"reference_rank{rank}.pt", weights_only=True)
        resumed = folder / f"resumed_{point}_rank{rank}.pt"
        assert resumed.exists(), _rank_errors(folder)
        _assert_same_run(torch.load(resumed, weights_only=True), reference, worker.DDP["num_experiences"])


# ------------------------------------------------------------------------------------- refusals
def _resume(ckpt: Path, callbacks: list[L.Callback] | None = None, **stream: Any) -> None:
    trainer = worker.make_trainer(callbacks or [], None)
    dm = SplitDigits(**{"num_experiences": worker.NUM_EXPERIENCES, "batch_size": worker.BATCH_SIZE, **stream})
    fit_stream(trainer, worker.make_model(), dm, ckpt_path=ckpt)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ({"num_experiences": 2}, r"another stream: its `num_experiences` is 5, this SplitDigits has 2"),
        ({"seed": 1}, r"another stream: its `train_classes` is \[\["),
    ],
    ids=["number-of-experiences", "class-order"],
)
def test_a_checkpoint_of_another_stream_is_refused(runs: Path, stream: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _resume(runs / "naive" / "ckpts" / "last.ckpt", **stream)


@pytest.mark.parametrize(
    ("methods", "missing", "extra"),
    [
        (lambda: [Replay(memory_size=60), EWC(ewc_lambda=5.0)], [LwF(alpha=0.5)], []),
        (lambda: [Replay(memory_size=60), EWC(ewc_lambda=5.0), LwF(alpha=0.5), SI(1.0)], [], [SI(1.0)]),
        (lambda: [Replay(memory_size=60), EWC(ewc_lambda=1.0), LwF(alpha=0.5)], [EWC(5.0)], [EWC(1.0)]),
        (lambda: [], [Replay(memory_size=60), EWC(5.0), LwF(alpha=0.5)], []),
    ],
    ids=["a-method-less", "a-method-more", "other-arguments", "none"],
)
def test_a_checkpoint_of_other_methods_is_refused(
    runs: Path, methods: Any, missing: list[L.Callback], extra: list[L.Callback]
) -> None:
    parts = []
    if missing:
        parts.append(f"in the checkpoint, not in the trainer: {[m.state_key for m in missing]}")
    if extra:
        parts.append(f"in the trainer, not in the checkpoint: {[m.state_key for m in extra]}")
    message = re.escape(f"was written by a run with other CL methods ({'; '.join(parts)}).")
    with pytest.raises(ValueError, match=message):
        _resume(runs / "replay+ewc+lwf" / "ckpts" / "last.ckpt", methods())


def test_the_same_methods_in_another_order_are_refused(runs: Path) -> None:
    ckpt = runs / "replay+ewc+lwf" / "ckpts" / "last.ckpt"
    with pytest.raises(ValueError, match="the same methods in another order"):
        _resume(ckpt, [EWC(ewc_lambda=5.0), Replay(memory_size=60), LwF(alpha=0.5)])


def test_a_method_added_to_a_naive_run_is_refused(runs: Path) -> None:
    with pytest.raises(ValueError, match=r"in the trainer, not in the checkpoint: \[\"Replay\{'memory_size': 60"):
        _resume(runs / "naive" / "ckpts" / "last.ckpt", [Replay(memory_size=60)])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_or_truncated_file_is_refused_with_its_name(runs: Path, tmp_path: Path, damage: str) -> None:
    data = (runs / "naive" / "ckpts" / "last.ckpt").read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 99, "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match=re.escape(f"`ckpt_path`: '{bad}' is not a readable checkpoint")):
        _resume(bad)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file at .*nothing\.ckpt"):
        _resume(tmp_path / "nothing.ckpt")


def test_a_weights_only_checkpoint_is_refused_saying_what_it_lacks(tmp_path: Path) -> None:
    saver = ModelCheckpoint(dirpath=tmp_path, filename="weights", save_weights_only=True)
    trainer = worker.make_trainer([saver], None, enable_checkpointing=True, limit_train_batches=1)
    trainer.fit(worker.make_model(), datamodule=SplitDigits(num_experiences=5, batch_size=worker.BATCH_SIZE))
    with pytest.raises(ValueError, match="has no optimizer_states and no callbacks: it was saved weights-only"):
        _resume(tmp_path / "weights.ckpt")


def test_a_checkpoint_without_cl_state_is_refused(runs: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(runs / "naive" / "ckpts" / "last.ckpt", weights_only=True)
    without = tmp_path / "without.ckpt"
    torch.save({k: v for k, v in checkpoint.items() if k != "lightning_cl"}, without)
    with pytest.raises(ValueError, match=r"holds no 'lightning_cl' state .* not written by a ContinualModule"):
        _resume(without)
    torch.save({k: v for k, v in checkpoint.items() if k != "SplitDigits"}, without)
    with pytest.raises(ValueError, match=r"holds no stream position \(SplitDigits state\)"):
        _resume(without)


def test_a_checkpoint_holding_a_python_object_is_refused_naming_it(runs: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(runs / "naive" / "ckpts" / "last.ckpt", weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["root"] = PurePosixPath("/data")  # pickled as an object
    pickled = tmp_path / "pickled.ckpt"
    torch.save(checkpoint, pickled)
    with pytest.raises(ValueError, match=r"holds a Python object \(pathlib\.PurePosixPath\) that a weights-only"):
        _resume(pickled)


def test_a_path_among_the_hyperparameters_is_saved_as_a_string(tmp_path: Path) -> None:
    # a datamodule's `root` is often a Path: pickled, it would make the checkpoint impossible to resume from
    dm = SplitDigits(num_experiences=5, batch_size=worker.BATCH_SIZE)
    dm.hparams["root"] = Path("/data") / "digits"
    dm.hparams["roots"] = [Path("/a"), ("b", Path("/c"))]
    trainer = worker.make_trainer([], None, limit_train_batches=1)
    trainer.fit(worker.make_model(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "paths.ckpt", weights_only=False)
    checkpoint = torch.load(tmp_path / "paths.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["root"] == "/data/digits"
    assert checkpoint["datamodule_hyper_parameters"]["roots"] == ["/a", ("b", "/c")]
    assert dm.hparams["root"] == Path("/data/digits")  # the datamodule itself is left as it is
