"""The triton backend copies nothing from the host per call: its small index tables (channel
offsets, pairs, blocks, needs_grad) are built once per shape and device (mtut_ops.triton._common.index_table).
A ``torch.tensor(python_list, device=cuda)`` per call is a pageable host-to-device copy: the host
waits for the stream to reach it, and CUDA-graph capture raises.

No GPU here: the ops run on CPU under the triton interpreter (a subprocess, as in
test_triton.py), with torch.tensor / torch.as_tensor / torch.from_numpy counted during a second,
identical forward and backward of each algorithm; the first call may build the tables.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = r"""
import torch
import mtut_ops
from mtut_ops import functional as F

made = []
def counting(name, fn):
    def wrapper(*args, **kwargs):
        made.append(name)
        return fn(*args, **kwargs)
    return wrapper

torch.manual_seed(0)
feats = [torch.randn(2, c, 3, 4, dtype=torch.float32, requires_grad=True) for c in (3, 5, 2)]
ce = torch.rand(3, 2)
counts = {}
for algo in ("direct", "gram"):
    for call in range(2):
        if call == 1:
            made.clear()
            saved = torch.tensor, torch.as_tensor, torch.from_numpy
            torch.tensor = counting("torch.tensor", saved[0])
            torch.as_tensor = counting("torch.as_tensor", saved[1])
            torch.from_numpy = counting("torch.from_numpy", saved[2])
        try:
            loss = F.ssa_loss(feats, ce, algo=algo, backend="triton")
            loss.backward()
            F.pairwise_sqdist(feats, algo=algo, backend="triton")
        finally:
            if call == 1:
                torch.tensor, torch.as_tensor, torch.from_numpy = saved
    counts[algo] = list(made)
print("COUNTS", counts)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_second_call_builds_no_tensor_from_host_values():
    env = {k: v for k, v in os.environ.items() if k != "MTUT_REGISTER_TRITON"}
    env.update(TRITON_INTERPRET="1", OMP_WAIT_POLICY="passive")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("COUNTS ")][-1]
    assert line == "COUNTS {'direct': [], 'gram': []}", line
