"""Training helpers behind ``python -m examples.train_nvgesture``.

from examples.training import TrainConfig, train
cfg = TrainConfig(data_root="runs/demo/data", out="runs/x", modalities=("rgb", "depth"), **PRESETS["cpu-small"])
final = train(cfg)            # final["splits"]["test"]["top1"] == {"rgb": ..., "depth": ..., "fused": ...}
"""

from .config import PRESETS, TrainConfig, build_parser, config_from_args
from .engine import Trainer, build_model, train

__all__ = ["PRESETS", "TrainConfig", "Trainer", "build_model", "build_parser", "config_from_args", "train"]
