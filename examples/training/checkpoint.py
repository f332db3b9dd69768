"""Checkpoints that survive interruption, and the RNG states an exact resume needs."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it over
    ``path``: a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write a text file atomically (metrics files are rewritten every epoch)."""
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(obj: Any, path: str | Path) -> None:
    write_text_atomic(json.dumps(obj, indent=1) + "\n", path)


def rng_state() -> dict:
    """Every RNG a training step draws from: torch (CPU and CUDA), numpy, Python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint written by :func:`save_atomic` (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    # The checkpoint holds RNG states (numpy arrays, Python tuples), so not weights_only.
    return torch.load(path, map_location="cpu", weights_only=False)
