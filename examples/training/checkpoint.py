"""Checkpoints that survive interruption and load safely, and the RNG states an exact resume needs.

Every checkpoint is read with ``torch.load(weights_only=True)``: it may hold tensors,
numbers, strings, ``None``, lists, tuples and dicts, nothing else, so a file someone hands
you cannot run code when it is loaded. The RNG states are stored in that form.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; what this package writes gets the mode open() would give
# (0666 less the umask), read once here (reading the umask means setting it).
_FILE_MODE = 0o666 & ~_umask()


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it over
    ``path``: a crash leaves either the old file or the new one, never half of one. The
    file gets the permissions the umask gives a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
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
    """Every RNG a training step draws from (torch CPU and CUDA, numpy, Python), as
    tensors and plain numbers only, so a checkpoint holding it loads with
    ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(mt, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(ValueError):
    """A file that is not a checkpoint this package can use (or one that is unsafe to load)."""


# What a training checkpoint holds; see :meth:`examples.training.engine.Trainer._save`.
CHECKPOINT_KEYS = ("format", "epoch", "model", "optimizer", "scheduler", "scaler", "rng", "config", "history")
CHECKPOINT_FORMAT = "mtut-examples-train/2"


def read_safely(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a clear error for a file
    that needs more than tensors, numbers, strings, lists, tuples and dicts (e.g. an
    arbitrary pickled object: it is refused, never executed) or is not a torch file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch checkpoint file (torch.save writes a zip archive; this is not one)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else type(e).__name__)
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain Python data "
            f"({first}). Checkpoints are read with torch.load(weights_only=True) so that a file someone "
            "hands you cannot run code; a checkpoint written by an older version of this package (with numpy "
            "RNG states) or by another program is not loaded"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a torch checkpoint file ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint written by the trainer (``last.pt``, ``best.pt``), safely.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is unsafe (arbitrary pickled objects), not a torch file,
            or not a training checkpoint of this package (missing entries, other format).
    """
    ckpt = read_safely(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path}: not a training checkpoint (a {type(ckpt).__name__}, expected a dict with "
            f"{', '.join(CHECKPOINT_KEYS)})"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        hint = (
            " (it looks like a bare state dict: use it with --init-from or --pretrained)"
            if all(isinstance(v, torch.Tensor) for v in ckpt.values())
            else ""
        )
        raise CheckpointError(f"{path}: not a training checkpoint of this package: it lacks {', '.join(missing)}{hint}")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format']!r}, this version reads {CHECKPOINT_FORMAT!r}")
    return ckpt


def model_state_from(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The model weights in a training checkpoint or a bare state-dict file (safely), and
    the training config when the file is a checkpoint (else ``None``)."""
    obj = read_safely(path)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        ckpt = load_checkpoint(path)
        return ckpt["model"], ckpt["config"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    raise CheckpointError(f"{path}: neither a training checkpoint nor a state dict of tensors")
