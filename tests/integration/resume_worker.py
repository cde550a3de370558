"""Runs, kills and resumes streams for tests/integration/test_resume.py, in processes of their own.

Two commands, each a fresh Python process (imports are the expensive part: one process serves
every case, and forks where a run must die or several processes are needed)::

    python -m tests.integration.resume_worker crash OUT CASE [CASE ...]
    python -m tests.integration.resume_worker resume OUT CASE:POINT [CASE:POINT ...]

``crash``: for each case of :data:`CASES`, a forked child runs the stream with ModelCheckpoint
(every epoch, all kept, ``save_last``) and a :class:`BoundarySaver` (a checkpoint after each
experience's test), and SIGKILLs itself at the start of batch :data:`KILL_BATCH` of global epoch
:data:`KILL_EPOCH` (the second epoch of experience 2, after the checkpoint of the first one).
Meanwhile the parent runs the same stream uninterrupted (the reference). ``resume``: for each
``CASE:POINT``, a new model with other initial weights resumes the case from the checkpoint
``POINT`` names (:func:`checkpoint_file`) with ``fit_stream(..., ckpt_path=...)``. The case
``ddp`` is a two-process run (``strategy="ddp"``, gloo) of :data:`DDP_METHODS`, killed and
resumed the same way.

Every run writes ``{"R", "initial", "fit_seconds", "state", "steps"}`` (loadable with
``weights_only=True``); a failure writes its traceback to a ``.err`` file next to it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitDigits
from lightning_cl.callbacks.agem import AGEM
from lightning_cl.callbacks.cope import CoPE
from lightning_cl.callbacks.cumulative import Cumulative
from lightning_cl.callbacks.der import DER
from lightning_cl.callbacks.er_ace import ERACE
from lightning_cl.callbacks.ewc import EWC
from lightning_cl.callbacks.from_scratch import FromScratch
from lightning_cl.callbacks.gdumb import GDumb
from lightning_cl.callbacks.gem import GEM
from lightning_cl.callbacks.generative_replay import GenerativeReplay
from lightning_cl.callbacks.gss import GSS
from lightning_cl.callbacks.icarl import ICaRL
from lightning_cl.callbacks.lfl import LFL
from lightning_cl.callbacks.lwf import LwF
from lightning_cl.callbacks.mas import MAS
from lightning_cl.callbacks.mir import MIR
from lightning_cl.callbacks.replay import Replay
from lightning_cl.callbacks.rwalk import RWalk
from lightning_cl.callbacks.si import SI
from lightning_cl.models import MLP, Classifier

NUM_EXPERIENCES = 5
EPOCHS = 2  # per experience: global epochs 2k and 2k + 1 train experience k
BATCH_SIZE = 64
# killed at the start of batch 2 of the second epoch of experience 2: the last checkpoint is
# then the end of its first epoch (global epoch 4), in the middle of the experience
KILL_EPOCH = 5
KILL_BATCH = 2
SEED = 0

# The CL methods of each case (new instances per run). Every method of lightning_cl.callbacks is
# here: each keeps state across experiences, and several build it when an experience starts,
# which a run resumed mid-experience does not repeat.
CASES: dict[str, Callable[[], list[L.Callback]]] = {
    "naive": lambda: [],
    "replay": lambda: [Replay(memory_size=60)],
    "ewc": lambda: [EWC(ewc_lambda=5.0)],
    "lwf": lambda: [LwF(alpha=1.0)],
    "der": lambda: [DER(memory_size=60, alpha=0.3, beta=0.5)],
    "icarl": lambda: [ICaRL(memory_size=60)],
    "gem": lambda: [GEM(patterns_per_experience=16)],
    "si": lambda: [SI(si_lambda=10.0)],
    "replay+ewc+lwf": lambda: [Replay(memory_size=60), EWC(ewc_lambda=5.0), LwF(alpha=0.5)],
    # the other methods, two by two where they combine
    "agem+mas": lambda: [AGEM(patterns_per_experience=16, sample_size=16), MAS(lambda_reg=1.0)],
    "erace+rwalk": lambda: [ERACE(memory_size=60), RWalk(ewc_lambda=1.0)],
    "mir+lfl": lambda: [MIR(memory_size=60, subsample=20, memory_batch_size=8), LFL(lambda_e=0.1)],
    "gdumb": lambda: [GDumb(memory_size=200)],  # 200: several batches per epoch, so it dies mid-epoch
    "cumulative+from_scratch": lambda: [Cumulative(), FromScratch()],
    "cope+gss": lambda: [CoPE(memory_size=60, num_classes=10, p_size=10), GSS(memory_size=60, mem_strength=2)],
    "generative_replay": lambda: [GenerativeReplay(replay_size=8, generator_epochs=1)],
    # no method: ContinualModule carries the optimizer state (momentum) across experiences
    "keep_optimizer_state": lambda: [],
    # no method: a budget of 8 steps per experience (5 batches per epoch: 2 epochs, the second cut short)
    "max_steps": lambda: [],
}
# ContinualModule and Trainer options of a case
MODULE_OPTIONS: dict[str, dict[str, Any]] = {"keep_optimizer_state": {"keep_optimizer_state": True}}
TRAINER_OPTIONS: dict[str, dict[str, Any]] = {"max_steps": {"max_epochs": None, "max_steps": 8}}

POINTS = ("mid", "last_epoch", "boundary")


def checkpoint_file(point: str, kill_epoch: int = KILL_EPOCH) -> str:
    """The checkpoint of a run killed in ``kill_epoch`` (the last epoch of experience ``k``) to resume from.

    * ``"mid"``: ``last.ckpt``, the end of the experience's first epoch: mid-experience;
    * ``"last_epoch"``: the end of the last epoch of experience ``k - 1``, written before that
      experience's consolidation (buffers, Fisher, ...), which the resumed run must then do;
    * ``"boundary"``: after experience ``k - 1`` and its test (:class:`BoundarySaver`): the
      resumed run starts experience ``k``.
    """
    experience = kill_epoch // EPOCHS
    files = {
        "mid": "last.ckpt",
        "last_epoch": f"epoch={experience * EPOCHS - 1}.ckpt",
        "boundary": f"boundary_exp{experience - 1}.ckpt",
    }
    return files[point]


class KillAt(L.Callback):
    """SIGKILLs its own process at the start of batch ``batch`` of global epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class BoundarySaver(L.Callback):
    """Writes ``boundary_exp{k}.ckpt`` after the test that follows experience ``k``."""

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = dirpath

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.datamodule.completed_experiences  # type: ignore[attr-defined]
        if done > 0:
            trainer.save_checkpoint(self.dirpath / f"boundary_exp{done - 1}.ckpt", weights_only=False)


def make_model(seed: int = SEED, **options: Any) -> ContinualModule:
    torch.manual_seed(seed)
    # dropout: the training draws from the global RNG, which a resumed run must continue exactly
    backbone = MLP(64, 10, hidden_sizes=(32,), dropout=0.1)
    return ContinualModule(Classifier(backbone, lr=0.05, momentum=0.9), **options)


def make_trainer(callbacks: list[L.Callback], ckpt_dir: Path | None, **kwargs: Any) -> L.Trainer:
    extra: list[L.Callback] = []
    if ckpt_dir is not None:
        saver = ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1, save_last=True)
        extra = [saver, BoundarySaver(ckpt_dir)]
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=ckpt_dir is not None,
        callbacks=[*callbacks, *extra],
    )
    options.update(kwargs)
    return L.Trainer(**options)


def run_stream(
    case: str,
    out: Path,
    *,
    ckpt_dir: Path | None = None,
    kill_epoch: int | None = None,
    ckpt_path: Path | None = None,
    num_experiences: int = NUM_EXPERIENCES,
    **trainer_kwargs: Any,
) -> None:
    """One run of ``case``: uninterrupted, killed in ``kill_epoch`` or resumed from ``ckpt_path``; writes ``out``."""
    L.seed_everything(SEED, verbose=False)
    # a resumed run starts from other weights: everything must come from the checkpoint
    model = make_model(SEED if ckpt_path is None else SEED + 1, **MODULE_OPTIONS.get(case, {}))
    callbacks = CASES[case]()
    if kill_epoch is not None:
        callbacks.append(KillAt(kill_epoch, KILL_BATCH))
    trainer = make_trainer(callbacks, ckpt_dir, **{**TRAINER_OPTIONS.get(case, {}), **trainer_kwargs})
    dm = SplitDigits(num_experiences=num_experiences, batch_size=BATCH_SIZE)
    result = fit_stream(trainer, model, dm, ckpt_path=ckpt_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "R": result.accuracy_matrix,
            "initial": result.initial_accuracy,
            "fit_seconds": torch.tensor(result.fit_seconds),
            "state": model.state_dict(),
            "steps": trainer.global_step,
        },
        out,
    )


def _status(status: int) -> int:
    """A child's end: the signal that killed it, or minus its exit code."""
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def _fork(errors: Path, fn: Callable[..., None], *args: Any, **kwargs: Any) -> int:
    """Run ``fn(*args, **kwargs)`` in a forked child (no imports again); a traceback goes to ``errors``."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args, **kwargs)
            code = 0
        except BaseException:
            errors.parent.mkdir(parents=True, exist_ok=True)
            errors.write_text(traceback.format_exc())
        finally:
            os._exit(code)
    return pid


def crash(out: Path, cases: list[str]) -> None:
    """Per case: a forked child killed mid-experience, and the uninterrupted reference in this process.

    The case ``"ddp"`` is the two-process run (:func:`ddp_crash`).
    """
    report: dict[str, Any] = {}
    for case in cases:
        if case == "ddp":
            report[case] = _two_ranks(ddp_crash, out)
            continue
        folder = out / case
        pid = _fork(
            folder / "killed.err",
            run_stream,
            case,
            folder / "never.pt",
            ckpt_dir=folder / "ckpts",
            kill_epoch=KILL_EPOCH,
        )
        run_stream(case, folder / "reference.pt", ckpt_dir=folder / "reference_ckpts")
        report[case] = _status(os.waitpid(pid, 0)[1])
    (out / "crash.json").write_text(json.dumps(report))


def resume(out: Path, items: list[str]) -> None:
    """Per ``CASE:POINT``: resume the killed run of ``CASE`` from the checkpoint ``POINT`` names.

    A resume that fails writes its traceback to ``resumed_POINT.err`` and the others go on.
    """
    for item in items:
        case, point = item.split(":")
        if case == "ddp":
            _two_ranks(ddp_resume, out, point)
            continue
        folder = out / case
        try:
            run_stream(
                case,
                folder / f"resumed_{point}.pt",
                ckpt_dir=folder / f"resumed_{point}_ckpts",
                ckpt_path=folder / "ckpts" / checkpoint_file(point),
            )
        except Exception:
            (folder / f"resumed_{point}.err").write_text(traceback.format_exc())


# The two-process run (strategy="ddp", gloo): two experiences, killed in the second epoch of the
# second one. The ranks are forked from this process, with the environment variables that make
# Lightning join them (as tests/conftest.py's run_two_processes, without importing everything again).
DDP: dict[str, Any] = dict(devices=2, strategy="ddp", num_experiences=2)
DDP_METHODS = "replay+ewc+lwf"
DDP_KILL_EPOCH = 3


def ddp_crash(rank: int, out: Path) -> None:
    """A rank of a two-process run: the uninterrupted reference, then the same run killed mid-experience."""
    folder = out / "ddp"
    run_stream(DDP_METHODS, folder / f"reference_rank{rank}.pt", ckpt_dir=folder / "reference_ckpts", **DDP)
    run_stream(DDP_METHODS, folder / "never.pt", ckpt_dir=folder / "ckpts", kill_epoch=DDP_KILL_EPOCH, **DDP)


def ddp_resume(rank: int, out: Path, point: str) -> None:
    """A rank of a new two-process run that resumes the killed one from ``point``."""
    folder = out / "ddp"
    run_stream(
        DDP_METHODS,
        folder / f"resumed_{point}_rank{rank}.pt",
        ckpt_dir=folder / f"resumed_{point}_ckpts",
        ckpt_path=folder / "ckpts" / checkpoint_file(point, DDP_KILL_EPOCH),
        **DDP,
    )


def _two_ranks(fn: Callable[..., None], out: Path, *args: Any) -> list[int]:
    """Run ``fn(rank, out, *args)`` in two forked ranks of a gloo group; their ends (see :func:`_status`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def rank_main(rank: int) -> None:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            NODE_RANK="0",
        )
        fn(rank, out, *args)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    name = fn.__name__
    pids = {_fork(out / "ddp" / f"{name}_rank{rank}.err", rank_main, rank): rank for rank in range(2)}
    ends = [0, 0]
    while pids:
        pid, status = os.wait()
        ends[pids.pop(pid)] = _status(status)
        if ends != [0, 0] and pids and _status(status) != signal.SIGKILL:
            # a rank failed: the other would wait for it in a collective forever
            for other in pids:
                os.kill(other, signal.SIGKILL)
    return ends


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)  # as the test process: the same kernels, bit for bit
    command, out, *items = argv
    {"crash": crash, "resume": resume}[command](Path(out), items)


if __name__ == "__main__":
    main(sys.argv[1:])
