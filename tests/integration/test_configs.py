"""Every YAML piece of configs/ runs through the CLI: one batch per experience, data under tmp_path.

MNIST and Fashion-MNIST are the real files of ../shared/data (skipped without them); KMNIST (whose
train images are not there) and CIFAR-10/100 are small fakes in torchvision's on-disk formats.
No test may open a network connection.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml

from lightning_cl.cli import ContinualCLI, run_cli
from tests.conftest import REPO

CONFIGS = REPO / "configs"
# the composable pieces (the experiments of configs/reproduce/, if any, are tested with their script)
KINDS = ("data", "model", "method", "optimizer", "trainer")
PIECES = sorted(p.relative_to(CONFIGS).as_posix() for kind in KINDS for p in (CONFIGS / kind).glob("*.yaml"))
DIGITS = ["data/split_digits.yaml", "model/mlp_digits.yaml"]
SMOKE = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_checkpointing=false",
    "--evaluate_initial=false",
]

# piece -> (the pieces it runs with, the data it reads: None for the embedded digits)
RUNS: dict[str, tuple[list[str], str | None]] = {
    "data/split_digits.yaml": (["model/mlp_digits.yaml"], None),
    "data/split_mnist.yaml": (["model/mlp_mnist.yaml"], "mnist"),
    "data/split_mnist_task.yaml": (["model/mlp_mnist.yaml"], "mnist"),
    "data/permuted_mnist.yaml": (["model/mlp_mnist.yaml"], "mnist"),
    "data/rotated_mnist.yaml": (["model/mlp_mnist.yaml"], "mnist"),
    "data/online_split_mnist.yaml": (["model/mlp_mnist.yaml"], "mnist"),
    "data/split_fmnist.yaml": (["model/mlp_mnist.yaml"], "fmnist"),
    "data/split_kmnist.yaml": (["model/mlp_mnist.yaml"], "kmnist"),
    "data/split_cifar10.yaml": (["model/simple_cnn.yaml"], "cifar"),
    "data/split_cifar100.yaml": (["model/simple_cnn.yaml"], "cifar"),
    "model/mlp_digits.yaml": (["data/split_digits.yaml"], None),
    "model/mlp_mnist.yaml": (["data/split_kmnist.yaml"], "kmnist"),
    "model/simple_cnn.yaml": (["data/split_cifar10.yaml"], "cifar"),
    "model/slim_resnet18.yaml": (["data/split_cifar10.yaml"], "cifar"),
    "model/resnet32.yaml": (["data/split_cifar10.yaml"], "cifar"),
}
# the method, optimizer and trainer pieces run on the digits
RUNS.update({piece: (DIGITS, None) for piece in PIECES if piece.split("/")[0] in ("method", "optimizer", "trainer")})
METHODS = {
    "naive": [],
    "cumulative": ["Cumulative"],
    "from_scratch": ["FromScratch"],
    "ewc": ["EWC"],
    "si": ["SI"],
    "mas": ["MAS"],
    "rwalk": ["RWalk"],
    "lwf": ["LwF"],
    "lfl": ["LFL"],
    "replay": ["Replay"],
    "gdumb": ["GDumb"],
    "er_ace": ["ERACE"],
    "der": ["DER"],
    "icarl": ["ICaRL"],
    "gem": ["GEM"],
    "agem": ["AGEM"],
    "mir": ["MIR"],
}


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """Undo what a one-process ``strategy="ddp"`` run leaves in this process: its process group and
    environment variables (``LOCAL_RANK`` would make every later Trainer believe it was launched
    by a cluster); and a W&B run left active."""
    environ = dict(os.environ)
    yield
    if "wandb" in sys.modules:
        # a W&B run stays active in the process: the next WandbLogger would reuse it (and its folder)
        sys.modules["wandb"].finish()
        sys.modules["wandb"].teardown()  # and its process-wide settings (the run directory)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


LOCAL = ("127.0.0.1", "localhost", "::1")
REAL_CONNECT, REAL_GETADDRINFO = socket.socket.connect, socket.getaddrinfo


def local_connect(self: socket.socket, address: Any) -> None:
    # the W&B logger talks to its own service process through a local socket
    if self.family == getattr(socket, "AF_UNIX", None) or (isinstance(address, tuple) and address[0] in LOCAL):
        return REAL_CONNECT(self, address)
    raise AssertionError(f"a config test opened a network connection to {address}")


def local_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host in LOCAL:
        return REAL_GETADDRINFO(host, *args, **kwargs)
    raise AssertionError(f"a config test looked up {host}")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", local_connect)
    monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)


def write_idx(path: Path, data: torch.Tensor) -> None:
    """An IDX file (uint8), the format of the MNIST family: magic 0x08 + ndim, big-endian sizes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, data.dim()]) + b"".join(struct.pack(">I", n) for n in data.shape)
    path.write_bytes(header + data.to(torch.uint8).numpy().tobytes())


def fake_kmnist(root: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 60), ("t10k", 30)):
        write_idx(
            root / "KMNIST" / "raw" / f"{split}-images-idx3-ubyte",
            torch.randint(0, 256, (n, 28, 28), generator=generator),
        )
        write_idx(root / "KMNIST" / "raw" / f"{split}-labels-idx1-ubyte", torch.arange(n) % 10)
    return root


def _pickle(path: Path, entry: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(n: int, seed: int) -> Any:
    return torch.randint(0, 256, (n, 3072), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy()


def fake_cifar(root: Path) -> dict[type, dict[str, Any]]:
    """CIFAR-10 (5 train batches of 10, a test batch of 20) and CIFAR-100 (200 / 100) in torchvision's
    pickle format, and the md5 lists that make torchvision accept them."""
    folder10, folder100 = (
        root / torchvision.datasets.CIFAR10.base_folder,
        root / torchvision.datasets.CIFAR100.base_folder,
    )
    train10 = [f"data_batch_{i}" for i in range(1, 6)]
    md5 = {
        name: _pickle(folder10 / name, {"data": _images(10, i), "labels": list(range(10))})
        for i, name in enumerate(train10)
    }
    md5["test_batch"] = _pickle(
        folder10 / "test_batch", {"data": _images(20, 9), "labels": [i % 10 for i in range(20)]}
    )
    meta10 = _pickle(folder10 / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    lists: dict[type, dict[str, Any]] = {
        torchvision.datasets.CIFAR10: {
            "train_list": [[name, md5[name]] for name in train10],
            "test_list": [["test_batch", md5["test_batch"]]],
            "meta": {"filename": "batches.meta", "key": "label_names", "md5": meta10},
        }
    }
    split100 = {}
    for name, n, seed in (("train", 200, 20), ("test", 100, 21)):
        fine = [i % 100 for i in range(n)]
        split100[name] = _pickle(
            folder100 / name, {"data": _images(n, seed), "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]}
        )
    meta100 = _pickle(folder100 / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    lists[torchvision.datasets.CIFAR100] = {
        "train_list": [["train", split100["train"]]],
        "test_list": [["test", split100["test"]]],
        "meta": {"filename": "meta", "key": "fine_label_names", "md5": meta100},
    }
    return lists


@pytest.fixture(scope="module")
def fashion_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    shutil.copytree(shared_data / "FashionMNIST" / "raw", root / "FashionMNIST" / "raw")
    for f in (root / "FashionMNIST" / "raw").iterdir():
        f.chmod(0o644)
    return root


def data_root(
    kind: str | None, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path | None:
    """The folder the data of ``kind`` is in (fixtures resolved only when needed, so a missing data set skips)."""
    if kind is None:
        return None
    if kind == "mnist":
        return Path(request.getfixturevalue("mnist_root"))
    if kind == "fmnist":
        return Path(request.getfixturevalue("fashion_root"))
    if kind == "kmnist":
        return fake_kmnist(tmp_path / "data")
    for cls, attributes in fake_cifar(tmp_path / "data").items():
        for name, value in attributes.items():
            monkeypatch.setattr(cls, name, value)
    return tmp_path / "data"


def command(pieces: list[str], root: Path | None, tmp_path: Path) -> list[str]:
    args = ["fit", "--config", str(CONFIGS / "trainer/smoke.yaml")]
    for piece in pieces:
        args += ["--config", str(CONFIGS / piece)]
    if root is not None:
        online = any(
            yaml.safe_load((CONFIGS / p).read_text()).get("data", {}).get("init_args", {}).get("datamodule")
            for p in pieces
        )
        args.append(f"--data{'.datamodule' if online else ''}.root={root}")
    return [*args, *SMOKE, f"--trainer.default_root_dir={tmp_path}"]


def test_every_piece_has_a_run() -> None:
    assert PIECES and set(PIECES) == set(RUNS), "a piece of configs/ without a smoke run (add it to RUNS)"
    assert {Path(p).stem for p in PIECES if p.startswith("method/")} == set(METHODS)


def test_pieces_are_documented() -> None:
    table = (CONFIGS / "README.md").read_text()
    assert [p for p in PIECES if f"`{p}`" not in table] == []


@pytest.mark.parametrize("piece", PIECES)
def test_piece_runs_a_stream(
    piece: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, name = piece.split("/")[0], Path(piece).stem
    if piece == "trainer/gpu.yaml" and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    if piece == "trainer/wandb.yaml":
        pytest.importorskip("wandb")
        request.getfixturevalue("restore_process_state")
    companions, data = RUNS[piece]
    root = data_root(data, request, tmp_path, monkeypatch)
    pieces = [*companions, piece] if kind != "data" else [piece, *companions]
    args = command(pieces, root, tmp_path)
    if kind == "trainer" and name in ("csv", "tensorboard", "wandb"):
        args.append(f"--trainer.logger.save_dir={tmp_path / 'logs'}")
    if name == "ddp":
        args += ["--trainer.devices=1", "--trainer.accelerator=cpu"]  # one gloo process: no relaunch of pytest
        request.getfixturevalue("restore_process_state")
    cli = run_cli(args)

    dm = cli.datamodule
    assert cli.result.accuracy_matrix.shape == (dm.num_experiences, len(dm.test_stream))
    logits = cli.model.predict_logits(next(iter(dm.test_dataloader()[0])))
    assert logits.shape[-1] == dm.num_classes  # the model's outputs follow the data (linked num_classes)
    if kind == "method":
        assert [
            type(c).__name__ for c in cli.trainer.callbacks if type(c).__module__.startswith("lightning_cl.callbacks")
        ] == METHODS[name]
    if kind == "optimizer":
        expected = yaml.safe_load((CONFIGS / piece).read_text())["optimizer"]["class_path"].rsplit(".", 1)[1]
        assert type(cli.trainer.optimizers[0]).__name__ == expected
    if kind == "trainer" and name in ("csv", "tensorboard", "wandb"):
        assert len(list((tmp_path / "logs").rglob("config.yaml"))) == 1  # saved next to the logs, once


def test_method_pieces_combine(tmp_path: Path) -> None:
    args = command([*DIGITS, "method/ewc.yaml", "method/lwf.yaml"], None, tmp_path)
    cli = ContinualCLI(args=[*args, "--trainer.callbacks.temperature=3.0"])
    methods = [c for c in cli.trainer.callbacks if type(c).__name__ in ("EWC", "LwF")]
    assert [type(c).__name__ for c in methods] == ["EWC", "LwF"]
    assert methods[1].temperature == 3.0  # a command-line override applies to the last callback
    assert cli.result.accuracy_matrix.shape == (5, 5)


def test_naive_piece_clears_earlier_methods(tmp_path: Path) -> None:
    cli = run_cli(command([*DIGITS, "method/ewc.yaml", "method/naive.yaml"], None, tmp_path))
    assert not [c for c in cli.trainer.callbacks if type(c).__name__ == "EWC"]
