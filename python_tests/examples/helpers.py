"""Shared helpers of the training tests: a tiny dataset and a seconds-long config."""

from __future__ import annotations

from pathlib import Path

from examples.data import SyntheticConfig
from examples.training import TrainConfig

# 3 classes x 4 clips (4 subjects, 1 held out for test): 9 train / 3 test clips.
TINY_RUN_DATA = SyntheticConfig(
    classes=(1, 2, 11), clips_per_class=4, subjects=4, test_subjects=1, frames=8, width=64, height=48
)

# The same network and clips as tiny_config, on the command line.
TINY_MODEL_ARGS = ["--width", "0.125", "--frames", "8", "--test-frames", "8", "--size", "48", "--resize", "52"]


def tiny_config(data_root: Path, out: Path, **kw) -> TrainConfig:
    """Two epochs of an eighth-width I3D on 8 frames at 48x48 (seconds on a CPU)."""
    base = dict(
        data_root=str(data_root),
        out=str(out),
        modalities=("rgb", "depth"),
        epochs=2,
        batch_size=4,
        lr=1e-2,
        lr_steps=(1,),
        ssa_start=2,
        width=0.125,
        frames=8,
        test_frames=8,
        size=48,
        resize=52,
        fps=None,
        cache=True,
        workers=0,
        eval_every=1,
        device="cpu",
        progress=False,
        plots=False,
        preset="test",
    )
    base.update(kw)
    return TrainConfig(**base)
