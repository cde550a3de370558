"""StreamReport over real streams: CSV and TensorBoard read back, artefacts, summary, errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader
from torchvision.io import decode_png

from lightning_cl import ContinualModule, StreamResult, fit_stream
from lightning_cl.loggers import StreamReport, TextLogger, result_to_dict, stream_metrics
from lightning_cl.viz import accuracy_curves_image, accuracy_matrix_image
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer
from tests.loggers import DESIGN_KEYS

# torchvision's decoder is the independent reference for the PNG files
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def run(loggers: Any, report: StreamReport, seed: int = 7, **trainer_kwargs: Any) -> tuple[L.Trainer, StreamResult]:
    L.seed_everything(seed, verbose=False)
    dm = make_tensor_stream(num_experiences=3, seed=11)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer = quiet_trainer(logger=loggers, callbacks=[report], **trainer_kwargs)
    return trainer, fit_stream(trainer, model, dm)


def read_png(path: Path) -> torch.Tensor:
    return decode_png(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))


def close(got: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(close, got, expected))
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-12)
    return got == expected


def assert_matches(data: dict[str, Any], result: StreamResult) -> None:
    """``results.json`` equals ``result``, field by field (floats within tolerance, NaN as null)."""
    for field in dataclasses.fields(result):
        assert close(data[field.name], result_to_dict(result)[field.name]), field.name
    torch.testing.assert_close(torch.tensor(data["accuracy_matrix"], dtype=torch.float64), result.accuracy_matrix)


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One stream of 3 experiences with CSV, TensorBoard and text loggers and a StreamReport."""
    root = tmp_path_factory.mktemp("report")
    loggers = [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tb"), TextLogger(root)]
    steps: list[int] = []

    class Steps(L.Callback):
        def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            steps.append(trainer.global_step)

    L.seed_everything(7, verbose=False)
    dm = make_tensor_stream(num_experiences=3, seed=11)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer = quiet_trainer(logger=loggers, callbacks=[StreamReport(summary=False), Steps()])
    result = fit_stream(trainer, model, dm)
    return {"loggers": loggers, "result": result, "steps": steps, "trainer": trainer}


def test_csv_logger_has_the_design_keys_at_monotonic_steps(stream_run: dict[str, Any]) -> None:
    csv_logger = stream_run["loggers"][0]
    with open(Path(csv_logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(DESIGN_KEYS) <= set(rows[0])
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    stream_rows = [r for r in rows if r["stream/average_accuracy"]]
    assert [int(r["step"]) for r in stream_rows] == stream_run["steps"][1:] == [3, 6, 9]
    result = stream_run["result"]
    assert float(stream_rows[-1]["stream/forgetting"]) == pytest.approx(result.forgetting, abs=1e-6)
    assert float(stream_rows[-1]["test/acc_exp1"]) == pytest.approx(float(result.accuracy_matrix[-1, 1]), abs=1e-6)


def test_csv_logger_folder_gets_the_accuracy_matrix_table(stream_run: dict[str, Any]) -> None:
    result = stream_run["result"]
    with open(Path(stream_run["loggers"][0].log_dir) / "accuracy_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["after_experience", "exp_0", "exp_1", "exp_2"]
    assert [r[0] for r in rows[1:]] == ["initial", "0", "1", "2"]
    table = torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]], dtype=torch.float64)
    torch.testing.assert_close(table[0], result.initial_accuracy.double())
    torch.testing.assert_close(table[1:], result.accuracy_matrix)


def test_tensorboard_events_hold_scalars_images_and_the_table(stream_run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(stream_run["loggers"][1].log_dir, size_guidance={IMAGES: 0, SCALARS: 0, TENSORS: 0})
    events.Reload()
    tags = events.Tags()
    assert set(DESIGN_KEYS) <= set(tags["scalars"])
    eval_steps = stream_run["steps"][1:]
    assert [e.step for e in events.Scalars("stream/average_accuracy")] == eval_steps
    result = stream_run["result"]
    assert events.Scalars("stream/average_accuracy")[-1].value == pytest.approx(result.average_accuracy, abs=1e-6)
    assert set(tags["images"]) == {"stream/accuracy_matrix", "stream/accuracy_curves"}
    images = events.Images("stream/accuracy_matrix")
    assert [e.step for e in images] == eval_steps
    picture = decode_png(torch.frombuffer(bytearray(images[-1].encoded_image_string), dtype=torch.uint8))
    assert torch.equal(picture, accuracy_matrix_image(result.accuracy_matrix, result.initial_accuracy))
    texts = events.Tensors("stream/accuracy_matrix_table/text_summary")
    assert [e.step for e in texts] == eval_steps
    table = tensor_util.make_ndarray(texts[-1].tensor_proto).item().decode()
    assert table.startswith("| after experience | exp 0 | exp 1 | exp 2 |\n|---|---|---|---|\n| initial |")
    last_row = "| 2 | " + " | ".join(f"{v:.4f}" for v in result.accuracy_matrix[-1].tolist()) + " |"
    assert last_row in table
    assert f"| average_accuracy | {result.average_accuracy:.4f} |" in table


def test_text_logger_gets_the_table_after_each_evaluation(stream_run: dict[str, Any]) -> None:
    text = Path(stream_run["loggers"][2].log_file).read_text()
    headers = [f"-- stream/accuracy_matrix_table (step {s}) --" for s in stream_run["steps"][1:]]
    assert all(text.count(h) == 1 for h in headers)
    assert stream_run["result"].table().splitlines()[1] in text.expandtabs(1).replace("\n ", "\n")


def test_artefacts_in_the_first_loggers_folder(stream_run: dict[str, Any]) -> None:
    folder, result = Path(stream_run["loggers"][0].log_dir), stream_run["result"]
    matrix, curves = read_png(folder / "accuracy_matrix.png"), read_png(folder / "accuracy_curves.png")
    assert torch.equal(matrix, accuracy_matrix_image(result.accuracy_matrix, result.initial_accuracy))
    assert torch.equal(curves, accuracy_curves_image(result.accuracy_matrix, result.initial_accuracy))
    assert not list(folder.glob("*.partial"))
    assert not (Path(stream_run["loggers"][1].log_dir) / "results.json").exists()


def test_results_json_matches_the_stream_result(stream_run: dict[str, Any]) -> None:
    result, trainer = stream_run["result"], stream_run["trainer"]
    data = json.loads((Path(stream_run["loggers"][0].log_dir) / "results.json").read_text())
    assert_matches(data, result)
    assert data["forward_transfer"] == pytest.approx(result.forward_transfer)
    assert len(data["fit_seconds"]) == 3 and all(s > 0 for s in data["fit_seconds"])
    assert (data["experiences_trained"], data["num_experiences"], data["finished"]) == (3, 3, True)
    assert data["global_step"] == trainer.global_step
    assert data["seeds"] == {"seed": 11, "shuffle_seed": 7, "pl_global_seed": 7}
    assert set(data["versions"]) == {"lightning_cl", "torch", "lightning", "torchmetrics", "torchvision", "python"}
    assert data["versions"]["torch"] == torch.__version__
    config = data["config"]
    assert config["module"] == {
        "class": "tests.conftest.TinyClassifier",
        "hparams": {"in_features": 8, "num_classes": 6, "lr": 0.1, "hidden": 32},
    }
    assert config["datamodule"]["num_experiences"] == 3 and config["datamodule"]["batch_size"] == 16
    assert config["trainer"]["max_epochs_per_experience"] == 1
    assert {"class": "lightning_cl.loggers.report.StreamReport", "directory": None, "images": True,
            "tables": True, "summary": False} in config["callbacks"]  # fmt: skip


def test_results_after_each_evaluation_describe_the_stream_so_far(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    dm = make_tensor_stream(num_experiences=3)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer = quiet_trainer(callbacks=[StreamReport(directory=tmp_path, summary=False)])
    trainer.test(model, datamodule=dm, verbose=False)
    assert list(tmp_path.iterdir()) == []  # the initial evaluation has no row of R yet
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert (data["experiences_trained"], data["finished"]) == (1, False)
    assert_matches(data, model.stream_result)
    assert len(data["accuracy_matrix"]) == 1
    assert read_png(tmp_path / "accuracy_matrix.png").shape[0] == 3


def test_nan_rows_become_null() -> None:
    R = torch.tensor([[float("nan"), float("nan")], [0.5, 0.75]])
    data = result_to_dict(StreamResult(R, 0.625, 0.0, 0.0, None, torch.tensor([0.5, 0.5]), [0.0, 1.0]))
    assert data["accuracy_matrix"] == [[None, None], [0.5, 0.75]]
    assert data["forward_transfer"] is None and data["initial_accuracy"] == [0.5, 0.5]
    json.dumps(data, allow_nan=False)


def test_stream_metrics_are_the_scalar_fields() -> None:
    result = StreamResult(torch.eye(2), 1.0, 0.0, 0.0, 0.5, torch.zeros(2), [1.0, 2.0])
    assert stream_metrics(result) == {
        "average_accuracy": 1.0,
        "forgetting": 0.0,
        "backward_transfer": 0.0,
        "forward_transfer": 0.5,
    }


@pytest.mark.parametrize(("images", "tables"), [(False, True), (True, False), (False, False)])
def test_images_and_tables_can_be_turned_off(tmp_path: Path, images: bool, tables: bool) -> None:
    run(CSVLogger(tmp_path, name="csv"), StreamReport(images=images, tables=tables, summary=False))
    files = {p.name for p in (tmp_path / "csv" / "version_0").iterdir()}
    expected = {"metrics.csv", "results.json"}
    expected |= {"accuracy_matrix.png", "accuracy_curves.png"} if images else set()
    expected |= {"accuracy_matrix.csv"} if tables else set()
    assert files == expected


def test_directory_without_a_logger(tmp_path: Path) -> None:
    _, result = run(False, StreamReport(directory=str(tmp_path / "out"), summary=False))
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"accuracy_matrix.png", "accuracy_curves.png", "accuracy_matrix.csv", "results.json"}
    assert_matches(json.loads((tmp_path / "out" / "results.json").read_text()), result)


def test_no_logger_and_no_directory_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="`directory` is required when the Trainer has no logger"):
        run(False, StreamReport())


def test_a_plain_module_is_refused() -> None:
    trainer = quiet_trainer(callbacks=[StreamReport(directory=".")])
    loader = DataLoader(make_tensor_stream().train_stream[0].dataset, batch_size=8)
    with pytest.raises(TypeError, match=r"model to be a lightning_cl\.ContinualModule, got TinyClassifier"):
        trainer.fit(TinyClassifier(in_features=8, num_classes=6), train_dataloaders=loader)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"directory": 3}, TypeError, "`directory`: expected a str, a Path or None, got int"),
        ({"images": "yes"}, TypeError, "`images`: expected a bool, got str"),
        ({"tables": 1}, TypeError, "`tables`: expected a bool, got int"),
        ({"summary": None}, TypeError, "`summary`: expected a bool, got NoneType"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        StreamReport(**kwargs)


def test_summary_is_printed_once_at_the_end_with_rich(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich", reason="rich is optional: without it the plain summary is tested below")
    _, result = run(False, StreamReport(directory=tmp_path))
    out = capsys.readouterr().out
    assert out.count("Accuracy matrix R[i, j]") == 1 and out.count("Stream metrics") == 1
    assert "┃ after exp ┃" in out  # a rich table
    for v in result.accuracy_matrix[-1].tolist():
        assert f"{v:.4f}" in out
    assert f"{result.average_accuracy:.4f}" in out and f"{result.backward_transfer:+.4f}" in out


def test_summary_falls_back_to_plain_text_without_rich(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # `import rich.console` now fails
    _, result = run(False, StreamReport(directory=tmp_path))
    out = capsys.readouterr().out
    assert out.count(result.table()) == 1


def test_no_summary_when_turned_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(False, StreamReport(directory=tmp_path, summary=False))
    assert "Accuracy matrix" not in capsys.readouterr().out


def test_other_ranks_write_and_print_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    L.seed_everything(0, verbose=False)
    dm = make_tensor_stream(num_experiences=2)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    report = StreamReport(directory=tmp_path)
    trainer = quiet_trainer(callbacks=[report])
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
    for path in tmp_path.iterdir():
        path.unlink()
    capsys.readouterr()

    class Rank1:  # what the hooks read of a trainer on rank 1
        is_global_zero = False

    report.on_test_end(Rank1(), model)  # type: ignore[arg-type]
    report.teardown(Rank1(), model, "test")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""
    assert not math.isnan(model.stream_result.average_accuracy)


def test_results_json_carries_the_selected_metrics(tmp_path: Path) -> None:
    from lightning_cl.metrics.callback import ContinualMetrics

    metrics = ContinualMetrics(
        metrics=["experience_accuracy", "stream_accuracy", "seen_classes_accuracy", "flip_rates"]
    )
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer = quiet_trainer(callbacks=[StreamReport(directory=tmp_path, summary=False), metrics])
    fit_stream(trainer, model, make_tensor_stream(3))
    report = json.loads((tmp_path / "results.json").read_text())
    stream = report["metrics"]["stream"]
    assert len(stream) == 4  # the initial evaluation and one per experience
    assert stream[-1]["stream/seen_classes_accuracy"] == pytest.approx(
        metrics.results[-1]["stream/seen_classes_accuracy"]
    )
    assert len(report["metrics"]["experiences"]) == 3
