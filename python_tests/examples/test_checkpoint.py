"""Checkpoints load with torch.load(weights_only=True): unsafe or foreign files get a clear error."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    model_state_from,
    rng_state,
    save_atomic,
    set_rng_state,
)


class _Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _valid(**extra) -> dict:
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "epoch": 1,
        "model": {"w": torch.ones(2)},
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "rng": [rng_state()],
        "config": {"lr": 0.01},
        "history": [],
    }
    ckpt.update(extra)
    return ckpt


def test_a_valid_checkpoint_loads_with_weights_only(tmp_path):
    save_atomic(_valid(), tmp_path / "ok.pt")
    ckpt = load_checkpoint(tmp_path / "ok.pt")
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    weights, config = model_state_from(tmp_path / "ok.pt")
    assert config == {"lr": 0.01} and set(weights) == {"w"}


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save(_valid(history=[_Payload(marker)]), tmp_path / "evil.pt")
    for load in (load_checkpoint, model_state_from):
        with pytest.raises(CheckpointError, match="refused"):
            load(tmp_path / "evil.pt")
    assert not marker.exists()
    # the same file read without the guard would run the payload: the test's object bites
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_old_checkpoints_with_numpy_rng_states_are_refused(tmp_path):
    torch.save(_valid(rng=[{"numpy": np.random.get_state()}]), tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "old.pt")


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a checkpoint at all\n", "not a torch checkpoint"),
        ({"conv.weight": torch.zeros(1)}, "bare state dict"),
        ([1, 2, 3], "not a training checkpoint"),
        (
            {
                "format": "something-else",
                **{k: 0 for k in ("epoch", "model", "optimizer", "scheduler", "scaler", "rng", "config", "history")},
            },
            "checkpoint format",
        ),
    ],
)
def test_files_that_are_not_checkpoints_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip_through_a_safe_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    save_atomic({"rng": rng_state()}, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]
