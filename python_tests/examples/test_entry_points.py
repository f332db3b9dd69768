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
def test_study_commands(command, capsys):
    """Every study command's parser, in this process (a subprocess each took ~5 s)."""
    from examples.study.__main__ import main as study_main

    with pytest.raises(SystemExit) as done:
        study_main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "usage:" in out and f"examples.study {command}" in out


@pytest.mark.parametrize("form", ["module", "path"])
def test_study_runs_as_module_and_by_path(form):
    """The study's entry point starts both ways the docs write it (one command: they share it)."""
    args = ["-m", "examples.study"] if form == "module" else ["examples/study/__main__.py"]
    proc = _run([*args, "pair", "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and "examples.study pair" in proc.stdout
