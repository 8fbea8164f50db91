"""Run tracking through Lightning's loggers: a W&B offline run and an MLflow file store each record the whole
LightningCLI config (trainer, model, data, seed) as the run's parameters, and the run's metrics."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-m", "wcl", "fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--data.train_per_class", "2", "--data.val_per_class", "1",
        "--data.batch_size", "10", "--data.num_workers", "0", "--model.width", "4"]
# One key of each part of the config, as the command line names them, with the value this run gives it.
EXPECTED = {"model.width": 4, "model.class_path": "wcl.WCL", "trainer.max_epochs": 1, "data.batch_size": 10,
            "data.train_per_class": 2, "seed_everything": 0}


def _fit(tmp_path: Path, *logger: str, **env: str) -> None:
    proc = subprocess.run([sys.executable, *TINY, "--trainer.default_root_dir", str(tmp_path / "run"), *logger],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0, proc.stderr[-3000:]


def _wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then LevelDB-log framing (32 KiB blocks; each
    chunk: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if room >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += room
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


@pytest.mark.slow
def test_wandb_offline_run_records_the_cli_config(tmp_path):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    _fit(tmp_path, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.project", "wcl",
         "--trainer.logger.save_dir", str(tmp_path / "run"), WANDB_MODE="offline", WANDB_SILENT="true")
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    config, metrics = {}, {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        items = {"config": record.config.update, "run": record.run.config.update,
                 "history": record.history.item}.get(kind, [])
        for item in items:
            key = item.key or "/".join(item.nested_key)
            (metrics if kind == "history" else config)[key] = json.loads(item.value_json)
    assert {k: config.get(k) for k in EXPECTED} == EXPECTED
    assert config["trainer.logger.class_path"] == "lightning.pytorch.loggers.WandbLogger"
    assert config["width"] == 4  # the model's own arguments, as Lightning logs them, beside the config
    assert 0 <= metrics["val/knn_top1"] <= 1


@pytest.mark.slow
def test_mlflow_file_store_records_the_cli_config(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the [mlflow] extra is not installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.17 refuses a file store without it
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    _fit(tmp_path, "--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger", "--trainer.logger.tracking_uri",
         uri, "--trainer.logger.experiment_name", "wcl")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("wcl").experiment_id])
    assert {k: run.data.params.get(k) for k in EXPECTED} == {k: str(v) for k, v in EXPECTED.items()}
    assert run.data.params["width"] == "4"  # the model's own arguments, as Lightning logs them, beside the config
    assert "val/knn_top1" in run.data.metrics
