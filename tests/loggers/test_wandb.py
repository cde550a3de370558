"""StreamReport with WandbLogger in offline mode: the run folder read back."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.loggers import StreamReport
from lightning_cl.viz import accuracy_matrix_image
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer
from tests.loggers import DESIGN_KEYS

wandb = pytest.importorskip("wandb")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The history rows (one per ``wandb.log``) of an offline run, read from its ``.wandb`` file.

    The file is a LevelDB-style log (the W&B ``datastore``): a 7-byte header, then 32 KiB
    blocks of records, each with a 7-byte header (crc32, length, kind: 1 full, 2 first, 3 middle,
    4 last), holding ``wandb_internal_pb2.Record`` messages. wandb >= 0.2x writes no
    ``wandb-summary.json`` offline, so this is where the logged values are.
    """
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, position, block = [], b"", 7, 32768
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer: padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            *parents, leaf = list(item.nested_key) or [item.key]
            node = row
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = json.loads(item.value_json)
        rows.append(row)
    return rows


def test_wandb_offline_run_holds_metrics_images_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import WandbLogger
    from torchvision.io import decode_png

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home" / name.lower()))  # nothing lands in the user's home
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / "cache"))
    L.seed_everything(0, verbose=False)
    logger = WandbLogger(project="lightning_cl", save_dir=str(tmp_path), offline=True)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    steps: list[int] = []

    class Steps(L.Callback):
        def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            steps.append(trainer.global_step)

    trainer = quiet_trainer(logger=logger, callbacks=[StreamReport(summary=False), Steps()])
    try:
        result = fit_stream(trainer, model, make_tensor_stream(num_experiences=3))
        files = Path(logger.experiment.dir)
    finally:
        wandb.finish()
    run_dir = files.parent
    assert run_dir.name.startswith("offline-run-") and run_dir.parent == tmp_path / "wandb"
    (run_file,) = run_dir.glob("run-*.wandb")
    rows = wandb_history(run_file)

    logged = set().union(*rows)
    assert set(DESIGN_KEYS) <= logged
    global_steps = [row["trainer/global_step"] for row in rows]
    assert global_steps == sorted(global_steps)
    stream_rows = [row for row in rows if "stream/average_accuracy" in row]
    assert [row["trainer/global_step"] for row in stream_rows] == steps[1:]
    assert stream_rows[-1]["stream/average_accuracy"] == pytest.approx(result.average_accuracy, abs=1e-6)

    images = [row for row in rows if "stream/accuracy_matrix" in row]
    assert [row["trainer/global_step"] for row in images] == steps[1:]
    (filename,) = images[-1]["stream/accuracy_matrix"]["filenames"]
    picture = decode_png(torch.frombuffer(bytearray((files / filename).read_bytes()), dtype=torch.uint8))
    assert torch.equal(picture, accuracy_matrix_image(result.accuracy_matrix, result.initial_accuracy))
    assert sum("stream/accuracy_curves" in row for row in rows) == 3

    tables = [row["stream/accuracy_matrix_table"] for row in rows if "stream/accuracy_matrix_table" in row]
    assert len(tables) == 3 and tables[-1]["_type"] == "table-file"
    table = json.loads((files / tables[-1]["path"]).read_text())
    assert table["columns"] == ["after experience", "exp 0", "exp 1", "exp 2"]
    assert [row[0] for row in table["data"]] == ["initial", "0", "1", "2"]
    torch.testing.assert_close(
        torch.tensor([row[1:] for row in table["data"][1:]], dtype=torch.float64), result.accuracy_matrix
    )

    # the artefacts go to the run's files folder, which W&B uploads with the run
    data = json.loads((files / "results.json").read_text())
    torch.testing.assert_close(torch.tensor(data["accuracy_matrix"], dtype=torch.float64), result.accuracy_matrix)
    assert {"accuracy_matrix.png", "accuracy_curves.png", "accuracy_matrix.csv"} <= {p.name for p in files.iterdir()}
