"""Every command runs by path from the repository root, as the docs write it, and as a module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [
    "examples/train_nvgesture.py",
    "examples/demo.py",
    "examples/evaluate_nvgesture.py",
    "examples/export_nvgesture.py",
    "examples/infer_nvgesture.py",
]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no help from pytest's path
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_by_path(script):
    proc = _run([script, "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and "ModuleNotFoundError" not in proc.stderr


@pytest.mark.parametrize("script", SCRIPTS[:2])
def test_as_module(script):
    proc = _run(["-m", script.removesuffix(".py").replace("/", "."), "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("command", ["pretext", "pair", "aggregate", "recheck"])
def test_study_commands(command):
    for args in (["-m", "examples.study", command, "--help"], ["examples/study/__main__.py", command, "--help"]):
        proc = _run(args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "usage:" in proc.stdout and f"examples.study {command}" in proc.stdout
