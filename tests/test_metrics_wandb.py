"""W&B logging beside TensorBoard, offline (no network): same scalar names in both sinks."""

import struct
from pathlib import Path

import pytest

from cpt_jax.train.metrics import MetricsWriter

pytest.importorskip("wandb", reason="wandb is an optional extra: pip install -e '.[wandb]'")

ROWS = [{"kind": "train", "step": 1, "phase": 0, "phase_step": 1, "loss": 2.5, "lr": 1e-3},
        {"kind": "eval", "step": 1, "phase": 0, "source": "prose", "loss": 3.0, "ppl": 20.1},
        {"kind": "task", "step": 2, "phase": 0, "phase_name": "p", "task": "mc", "acc": 0.5, "acc_norm": 0.25}]
TAGS = {"train/loss", "train/lr", "eval/prose/loss", "eval/prose/ppl", "task/mc/acc", "task/mc/acc_norm"}


def tensorboard_tags(folder: Path) -> set[str]:
    """Scalar tags of TensorBoard event files (TFRecord framing: length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + length + 4
    return tags


def test_wandb_offline_logs_the_tensorboard_names(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    writer = MetricsWriter(run_dir, enabled=True, tensorboard=True, resume_point=None, wandb_project="cpt-test",
                           wandb_config={"seed": 0})
    for row in ROWS:
        writer.write(row)
    writer.close()
    assert tensorboard_tags(run_dir / "tensorboard") == TAGS
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))  # offline: files only, under the run dir
    [history] = list(offline.glob("run-*.wandb"))
    data = history.read_bytes()
    for tag in TAGS:
        assert tag.encode() in data, tag


def test_wandb_off_writes_nothing(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False, resume_point=None)
    writer.write(ROWS[0])
    writer.close()
    assert not (tmp_path / "wandb").exists()
