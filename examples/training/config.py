"""Training settings: the config dataclass, presets and the command-line parser."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from examples.data import MODALITIES
from examples.models import ENDPOINTS

from ..mtut_model import FUSIONS
from .distributed import resolve_amp, resolve_device

AMP_MODES = ("auto", "off", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Every setting of a training run (defaults: the mmpose NVGesture MTUT recipe).

    Epochs are 1-based: ``ssa_start=61`` switches SSA on for epochs 61..75, and the LR
    drops by ``lr_gamma`` after epochs 30 and 50 (``lr_steps``). ``pair_cap=10`` is
    mmpose's cap on every ordered pair's SSA term (a capped term sends no gradient);
    ``None`` removes it.
    """

    data_root: str = ""
    out: str = "runs/nvgesture"
    modalities: tuple[str, ...] = ("rgb", "depth")
    # optimization
    epochs: int = 75
    batch_size: int = 6
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_steps: tuple[int, ...] = (30, 50)
    lr_gamma: float = 0.1
    # SSA
    ssa_start: int = 61
    beta: float = 2.0
    lambda_: float = 5e-3
    distance: str = "rms"
    pair_cap: float | None = 10.0
    ssa_endpoints: tuple[str, ...] = ("Mixed_5c",)
    algo: str = "auto"
    # model
    width: float = 1.0
    dropout: float = 0.0
    pretrained: tuple[str, ...] = ()
    stem: str = "mean"
    # data
    frames: int = 64
    test_frames: int | None = None
    size: int = 224
    resize: int | None = 256
    fps: float | None = None
    flip: bool = True
    hand_boxes: str | None = None
    val_subjects: int = 0
    cache: bool = False
    workers: int = 4
    # evaluation
    eval_every: int = 5
    fusion: str = "softmax"
    # runtime
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    threads: int | None = None
    progress: bool = True
    plots: bool = True
    preset: str = "full"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields that may differ between a run and its resumption (they do not change the trajectory).
RESUMABLE_CHANGES = frozenset({"epochs", "out", "workers", "eval_every", "progress", "plots", "threads", "data_root"})

PRESETS: dict[str, dict] = {
    # mmpose's recipe (I3D at 64x224x224, batch 6 per GPU, 75 epochs, SSA from 61).
    "full": {},
    # Minutes on a 2-core CPU: a quarter-width I3D on 16 frames at 15 fps and 64x64,
    # decoded clips cached in memory, 14 epochs with SSA in the second half. SSA aligns
    # Mixed_4f: there (d = 4x4x4, C = 208) the channels-per-position ratio C/d, which
    # sets the size of the "rms" distance, is close to the full network's Mixed_5c
    # (1024 / 392), the scale mmpose's lambda was tuned for; this small network's
    # Mixed_5c (d = 2x2x2, C = 256) has a ~12x larger distance.
    "cpu-small": dict(
        epochs=14, batch_size=8, lr=1e-2, lr_steps=(10,), ssa_start=8, ssa_endpoints=("Mixed_4f",), width=0.25,
        frames=16, test_frames=16, size=64, resize=72, fps=15.0, cache=True, workers=0, eval_every=0,
        device="cpu",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m examples.train_nvgesture`` argument parser.

    Every option defaults to ``None`` so that :func:`config_from_args` can tell what was
    given on the command line (it overrides the preset) from what was not.
    """
    p = argparse.ArgumentParser(
        prog="python -m examples.train_nvgesture",
        description="Train one I3D per modality on NVGesture (real or synthetic) with the MTUT SSA loss; "
                    "one modality trains the unimodal baseline.",
    )
    a = p.add_argument
    a("--data-root", required=True, help="dataset root (NVGesture layout: Video_data/ and the two list files)")
    a("--out", help="run folder: checkpoints, metrics, plots (default runs/nvgesture)")
    a("--preset", choices=sorted(PRESETS), default="full",
      help="settings to start from: 'full' (mmpose recipe, GPU) or 'cpu-small' (minutes on a CPU)")
    a("--modalities", nargs="+", metavar="M", help=f"modalities, one I3D each ({', '.join(MODALITIES)}); "
      "one modality = unimodal baseline (default rgb depth)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="clips per process (per GPU)")
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--lr-steps", type=int, nargs="*", metavar="EPOCH", help="divide the LR by 10 after these epochs")
    g.add_argument("--lr-gamma", type=float)
    g = p.add_argument_group("SSA loss")
    g.add_argument("--ssa-start", type=int, metavar="EPOCH", help="first (1-based) epoch with the SSA loss")
    g.add_argument("--beta", type=float, help="focal regularization parameter (default 2)")
    g.add_argument("--lambda", dest="lambda_", type=float, help="SSA weight (default 5e-3, tuned for 'rms')")
    g.add_argument("--distance", choices=("rms", "fro2"))
    g.add_argument("--pair-cap", type=float,
                   help="cap every ordered pair's term, as mmpose does (default 10; 0 = no cap)")
    g.add_argument("--ssa-endpoints", nargs="+", metavar="ENDPOINT", help="I3D endpoints to align (default Mixed_5c)")
    g.add_argument("--algo", choices=("auto", "direct", "gram"))
    g = p.add_argument_group("model")
    g.add_argument("--width", type=float, help="I3D width multiplier (1.0 = original)")
    g.add_argument("--dropout", type=float)
    g.add_argument("--pretrained", nargs="+", metavar="[MODALITY=]PATH",
                   help="converted Kinetics I3D checkpoint(s), local files; a bare PATH serves every modality")
    g.add_argument("--stem", choices=("mean", "sum"), help="adapting the RGB stem to 1/2 channels")
    g = p.add_argument_group("data")
    g.add_argument("--frames", type=int, help="training clip length T")
    g.add_argument("--test-frames", type=int, help="evaluation clip length (0 = whole clip, batch 1)")
    g.add_argument("--size", type=int, help="square crop side")
    g.add_argument("--resize", type=int, help="short edge before cropping")
    g.add_argument("--fps", type=float, help="temporal sampling rate (0 = every frame)")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no random horizontal flips")
    g.add_argument("--hand-boxes", metavar="JSON", help="hand-box file: crop every clip to the hand first")
    g.add_argument("--val-subjects", type=int, metavar="K",
                   help="hold out the last K training subjects as a validation split (for tuning)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="decode every clip once and keep it in memory (small datasets)")
    g.add_argument("--workers", type=int, help="DataLoader worker processes")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, metavar="E", help="evaluate every E epochs (0 = only at the end)")
    g.add_argument("--fusion", choices=FUSIONS, help="fused score: mean of softmaxes (default) or of logits")
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--amp", choices=AMP_MODES, help="mixed precision (auto: bf16/fp16 on GPU, off on CPU)")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    g.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="no PNG plots at the end")
    g.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset's config with every option given on the command line applied, validated."""
    cfg = TrainConfig(preset=args.preset, **PRESETS[args.preset])
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is None or f.name == "preset":
            continue
        if isinstance(value, list):
            value = tuple(value)
        setattr(cfg, f.name, value)
    if args.test_frames == 0:
        cfg.test_frames = None
    if args.fps == 0:
        cfg.fps = None
    if args.pair_cap == 0:
        cfg.pair_cap = None
    validate(cfg)
    return cfg


def parse_pretrained(items: tuple[str, ...], modalities: tuple[str, ...]) -> dict[str, str]:
    """``("rgb=a.pth", "depth=b.pth")`` or ``("a.pth",)`` (every modality) -> {modality: path}."""
    paths: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name in MODALITIES:
            paths[name] = path
        elif sep and name and "/" not in name:
            raise ValueError(f"--pretrained: unknown modality {name!r} in {item!r}")
        else:
            paths.update({m: item for m in modalities})
    return paths


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the option for any setting out of range."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    need(bool(cfg.data_root), "--data-root is required")
    need(Path(cfg.data_root).is_dir(), f"--data-root {cfg.data_root!r} is not a folder (make a synthetic dataset "
                                       "with `python -m examples.data make-synthetic --out DIR`)")
    unknown = [m for m in cfg.modalities if m not in MODALITIES]
    need(not unknown, f"--modalities: unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}" if unknown else "")
    need(len(cfg.modalities) >= 1, "--modalities needs at least one modality")
    need(len(set(cfg.modalities)) == len(cfg.modalities), f"--modalities has repeats: {list(cfg.modalities)}")
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    need(all(s >= 1 for s in cfg.lr_steps), f"--lr-steps must be epochs >= 1, got {list(cfg.lr_steps)}")
    need(0 < cfg.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {cfg.lr_gamma}")
    need(cfg.ssa_start >= 1, f"--ssa-start must be a 1-based epoch, got {cfg.ssa_start}")
    need(cfg.beta >= 0 and cfg.lambda_ >= 0, "--beta and --lambda must be >= 0")
    need(cfg.pair_cap is None or cfg.pair_cap > 0, f"--pair-cap must be >= 0 (0 = no cap), got {cfg.pair_cap}")
    bad = [e for e in cfg.ssa_endpoints if e not in ENDPOINTS]
    need(not bad and bool(cfg.ssa_endpoints), f"--ssa-endpoints: {bad} not I3D endpoints; known: {', '.join(ENDPOINTS)}")
    need(cfg.width > 0, f"--width must be > 0, got {cfg.width}")
    need(0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}")
    for m, path in parse_pretrained(cfg.pretrained, cfg.modalities).items():
        need(m in cfg.modalities, f"--pretrained: modality {m!r} is not trained (--modalities {' '.join(cfg.modalities)})")
        need(Path(path).is_file(), f"--pretrained: {path!r} is not a file (weights are never downloaded)")
    need(cfg.frames >= 1, f"--frames must be >= 1, got {cfg.frames}")
    need(cfg.test_frames is None or cfg.test_frames >= 1, f"--test-frames must be >= 0, got {cfg.test_frames}")
    need(cfg.size >= 1, f"--size must be >= 1, got {cfg.size}")
    need(cfg.resize is None or cfg.resize >= cfg.size, f"--resize ({cfg.resize}) must be >= --size ({cfg.size})")
    need(cfg.fps is None or cfg.fps > 0, f"--fps must be > 0, got {cfg.fps}")
    need(cfg.hand_boxes is None or Path(cfg.hand_boxes).is_file(), f"--hand-boxes {cfg.hand_boxes!r} is not a file")
    need(cfg.val_subjects >= 0, f"--val-subjects must be >= 0, got {cfg.val_subjects}")
    need(cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
    need(cfg.eval_every >= 0, f"--eval-every must be >= 0, got {cfg.eval_every}")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.fusion in FUSIONS, f"--fusion must be one of {FUSIONS}, got {cfg.fusion!r}")
    need(cfg.distance in ("rms", "fro2"), f"--distance must be 'rms' or 'fro2', got {cfg.distance!r}")
    need(cfg.algo in ("auto", "direct", "gram"), f"--algo must be auto, direct or gram, got {cfg.algo!r}")
    need(cfg.stem in ("mean", "sum"), f"--stem must be 'mean' or 'sum', got {cfg.stem!r}")
    need(cfg.amp in AMP_MODES, f"--amp must be one of {AMP_MODES}, got {cfg.amp!r}")
    resolve_amp(cfg.amp, resolve_device(cfg.device))  # raises for CUDA or mixed precision without a GPU


@dataclass
class Paths:
    """Files of a run folder."""

    root: Path
    checkpoint: Path = field(init=False)
    metrics_json: Path = field(init=False)
    metrics_csv: Path = field(init=False)
    final: Path = field(init=False)

    def __post_init__(self) -> None:
        self.checkpoint = self.root / "last.pt"
        self.metrics_json = self.root / "metrics.json"
        self.metrics_csv = self.root / "metrics.csv"
        self.final = self.root / "final_eval.json"
