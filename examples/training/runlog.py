"""A run's bookkeeping: the output folder's checks, its text log and environment record,
and the errors a training run stops with (divergence, interruption)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


class DivergenceError(RuntimeError):
    """The training loss became inf or NaN: the run stops before the step that would
    write non-finite weights, and ``last.pt`` stays the last good epoch's."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which epoch is saved and how to resume."""


def check_writable(folder: str | Path, flag: str = "--out") -> Path:
    """Create ``folder`` and write (then remove) a file in it, so that a read-only or full
    output folder fails before any work rather than after the first epoch."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"{flag} {folder}: cannot write there ({e.strerror or e}); choose another folder") from None
    return folder


def git_commit(repo: Path = REPO) -> str | None:
    """The repository's commit (``+dirty`` with uncommitted changes), or ``None`` outside git."""
    try:
        run = dict(cwd=repo, capture_output=True, text=True, timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment(device: torch.device, world: int) -> dict:
    """What a run ran on: versions, device, commit (written as ``environment.json``)."""
    import mtut_ops

    env = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "mtut_ops": getattr(mtut_ops, "__version__", None),
        "git_commit": git_commit(),
        "device": str(device),
        "processes": world,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


class TextLog:
    """Prints a line and appends it, time-stamped, to the run's ``train.log``."""

    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, message: str, error: bool = False) -> None:
        print(message, file=sys.stderr if error else sys.stdout, flush=True)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                f.writelines(f"{stamp} {line}\n" for line in message.splitlines())
