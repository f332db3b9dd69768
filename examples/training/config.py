"""Training settings: the config dataclass, presets and the command-line parser."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from examples.data import MODALITIES
from examples.models import ENDPOINTS

from ..mtut_model import FOCAL_MODES, FUSIONS
from .distributed import resolve_amp, resolve_device

AMP_MODES = ("auto", "off", "fp16", "bf16")


def default_workers() -> int:
    """DataLoader workers: 4, or fewer on a machine with fewer cores (one left to the
    training process; more workers than cores only makes torch warn and compete)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


@dataclass
class TrainConfig:
    """Every setting of a training run (defaults: the mmpose NVGesture MTUT recipe).

    Epochs are 1-based: ``ssa_start=61`` switches SSA on for epochs 61..75, and the LR
    drops by ``lr_gamma`` after epochs 30 and 50 (``lr_steps``). ``pair_cap=10`` is
    mmpose's cap on every ordered pair's SSA term (a capped term sends no gradient);
    ``None`` removes it. ``ssa=False`` never switches SSA on (the SSA-off arm of a
    paired study; the networks then train independently). ``focal`` is the focal weight
    ``rho``: ``"exp"`` (the paper's, ``exp(beta * max(0, l_m - l_n)) - 1``), ``"constant"``
    (1 for every ordered pair: no focal weighting, both networks pulled toward each
    other) or ``"indicator"`` (1 where the other network's CE is lower, else 0: the
    direction without the magnitude). ``ssa_shuffle`` names modalities whose SSA features
    are permuted within the batch before the loss (a control: the alignment target is
    another clip's).
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
    ssa: bool = True
    ssa_start: int = 61
    beta: float = 2.0
    lambda_: float = 5e-3
    distance: str = "rms"
    pair_cap: float | None = 10.0
    ssa_endpoints: tuple[str, ...] = ("Mixed_5c",)
    algo: str = "auto"
    ssa_backend: str | None = None
    ssa_fp32: bool = True
    focal: str = "exp"
    ssa_shuffle: tuple[str, ...] = ()
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
    box_pipeline: str = "margin"
    box_scale: tuple[float, float] = (0.8, 1.25)
    box_ratio: tuple[float, float] = (0.75, 1.33)
    box_shift: float = 0.3
    color_jitter: tuple[float, float] | None = None
    val_subjects: int = 0
    skip_bad: bool = False
    cache: bool = False
    workers: int = field(default_factory=default_workers)
    # evaluation (the test split is evaluated after the last epoch only, unless watch_test)
    eval_every: int = 5
    fusion: str = "softmax"
    best_metric: str = "auto"
    watch_test: bool = False
    eval_test: bool = True
    save_logits: bool = True
    init_from: str | None = None
    keep_every: int = 0
    # logging and LR scaling
    tensorboard: bool = True
    log_every: int = 1
    lr_scaling: str = "none"
    lr_reference_batch: int = 6
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
# skip_bad may be switched on to get past a clip found bad after the run started.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "out",
        "workers",
        "eval_every",
        "progress",
        "plots",
        "threads",
        "data_root",
        "watch_test",
        "eval_test",
        "save_logits",
        "tensorboard",
        "log_every",
        "skip_bad",
        "keep_every",
    }
)
# Fields that may differ between a run and a branch started from one of its checkpoints
# (``Trainer(cfg, branch_from=...)``): the SSA settings, which play no part while SSA is
# off; a branch point must lie before SSA starts in both runs.
BRANCH_CHANGES = RESUMABLE_CHANGES | frozenset(
    {
        "ssa",
        "ssa_start",
        "beta",
        "lambda_",
        "distance",
        "pair_cap",
        "ssa_endpoints",
        "algo",
        "ssa_backend",
        "ssa_fp32",
        "focal",
        "ssa_shuffle",
    }
)

# mmpose 0.x's NVGesture MTUT configs (configs/hand/gesture_sview_rgbd_vid/mtut/nvgesture/),
# read from the OpenMMLab mmpose repository. Values they share: SGD momentum 0.9, no weight
# decay (optimizer = dict(type='SGD', lr=..., momentum=0.9)), batch 6 per GPU
# (samples_per_gpu=6), beta 2, modalities rgb + depth, both networks from the Kinetics RGB
# I3D (pretrained=model_rgb.pth for both), flips with the label swaps of flip_pairs
# (configs/_base_/datasets/nvgesture.py), ImageNet mean/std for RGB, whole clips at test
# (TemporalPooling length=-1), an evaluation every 5 epochs (evaluation interval=5; mmpose
# evaluates and keeps its best checkpoint on the *test* list, save_best='AP_rgb'; here
# training only ever evaluates the validation split, see docs/training.md), and the per-pair
# cap of 10 on the SSA term (mmpose/models/heads/mtut_head.py, (ssa.mean() * lambda_).clamp(max=10)).
# Not reproduced: the 112 recipe's head pools (1, 2, 2) windows (avg_pool_kernel) where this
# I3D averages the whole 4x4 map; mmpose's head averages per-time-step logits after a
# (1, 7, 7) pool, this I3D after the original's (2, 7, 7) pool (a 2-step window in time).
_MMPOSE_COMMON = dict(
    batch_size=6,
    momentum=0.9,
    weight_decay=0.0,
    beta=2.0,
    distance="rms",
    pair_cap=10.0,
    ssa_endpoints=("Mixed_5c",),
    flip=True,
    test_frames=None,
    eval_every=5,
    modalities=("rgb", "depth"),
)
MMPOSE_224 = dict(  # i3d_nvgesture_224x224_fps30.py: reported RGB 0.739 / depth 0.809 (i3d_nvgesture.md)
    **_MMPOSE_COMMON,
    lr=1e-2,
    lr_steps=(30, 50),
    lr_gamma=0.1,
    epochs=75,
    ssa_start=61,
    lambda_=5e-3,
    frames=64,
    fps=30.0,
    size=224,
    resize=256,
    box_pipeline="margin",
    hand_boxes=None,
    color_jitter=None,
)
MMPOSE_224_BOX = dict(  # i3d_nvgesture_bbox_224x224_fps30.py: reported RGB 0.782 / depth 0.811
    **_MMPOSE_COMMON,
    lr=1e-2,
    lr_steps=(30, 50),
    lr_gamma=0.1,
    epochs=75,
    ssa_start=61,
    lambda_=5e-3,
    frames=64,
    fps=30.0,
    size=224,
    resize=None,
    box_pipeline="mmpose",
    box_scale=(0.8, 1.25),
    box_ratio=(0.75, 1.33),
    box_shift=0.3,
    color_jitter=None,
)
MMPOSE_112_BOX_FPS15 = dict(  # i3d_nvgesture_bbox_112x112_fps15.py: reported RGB 0.725 / depth 0.730
    **_MMPOSE_COMMON,
    lr=1e-1,
    lr_steps=(30, 60, 90, 110),
    lr_gamma=0.1,
    epochs=130,
    ssa_start=111,
    lambda_=1e-3,
    frames=16,
    fps=15.0,
    size=112,
    resize=None,
    box_pipeline="mmpose",
    box_scale=(0.8, 1.25),
    box_ratio=(0.75, 1.33),
    box_shift=0.3,
    color_jitter=(0.4, 0.3),
)

# The recipe's schedule (mmpose's 224x224 NVGesture MTUT config): 75 epochs, the LR divided
# by 10 after epochs 30 and 50, SSA from epoch 61, i.e. after 40%, 67% and 80% of the run.
RECIPE_EPOCHS, RECIPE_LR_STEPS, RECIPE_SSA_START = 75, (30, 50), 61


def recipe_schedule(epochs: int) -> dict:
    """The recipe's fit-then-align schedule scaled to ``epochs``: ``{"epochs",
    "lr_steps", "ssa_start"}`` with the LR steps and the SSA start (after 80% of the run,
    once both networks fit their training clips at the lowest LR) at the recipe's
    proportions, rounded to whole epochs. ``recipe_schedule(75)`` is the recipe;
    ``recipe_schedule(15)`` is (6, 10) and SSA from epoch 13."""
    if epochs < 5:
        raise ValueError(f"the recipe's schedule needs >= 5 epochs (two LR steps and an SSA phase), got {epochs}")
    steps = tuple(max(1, round(s * epochs / RECIPE_EPOCHS)) for s in RECIPE_LR_STEPS)
    ssa_start = round((RECIPE_SSA_START - 1) * epochs / RECIPE_EPOCHS) + 1
    return {"epochs": epochs, "lr_steps": steps, "ssa_start": ssa_start}


PRESETS: dict[str, dict] = {
    # the TrainConfig defaults: mmpose's 224x224 recipe without hand boxes
    "full": {},
    "mmpose-224": MMPOSE_224,
    "mmpose-224-box": MMPOSE_224_BOX,
    "mmpose-112-box-fps15": MMPOSE_112_BOX_FPS15,
    # Minutes on a 2-core CPU: a quarter-width I3D on 16 frames at 15 fps and 64x64,
    # decoded clips cached in memory, 14 epochs with SSA in the second half. SSA aligns
    # Mixed_4f: there (d = 4x4x4, C = 208) the channels-per-position ratio C/d, which
    # sets the size of the "rms" distance, is close to the full network's Mixed_5c
    # (1024 / 392), the scale mmpose's lambda was tuned for; this small network's
    # Mixed_5c (d = 2x2x2, C = 256) has a ~12x larger distance.
    "cpu-small": dict(
        epochs=14,
        batch_size=8,
        lr=1e-2,
        lr_steps=(10,),
        ssa_start=8,
        ssa_endpoints=("Mixed_4f",),
        width=0.25,
        frames=16,
        test_frames=16,
        size=64,
        resize=72,
        fps=15.0,
        cache=True,
        workers=0,
        eval_every=0,
        device="cpu",
    ),
    # The paired study's regime in miniature on a 2-core CPU (docs/study/design.md): the
    # cpu-small network and clips without hand boxes, the recipe's fit-then-align
    # schedule in 15 epochs (lr 1e-2, 1e-3 after epoch 6, 1e-4 after epoch 10, SSA from
    # epoch 13 of 15), SSA at Mixed_3c (8x8x8 positions at 64x64: spatial extent to align)
    # with lambda 5e-2, the recipe's 5e-3 rescaled by the channels per position C/d that
    # set the "rms" distance's size (recipe Mixed_5c 1024/392, here 120/512), an
    # evaluation every epoch. Start both networks from a pretext network (``python -m
    # examples.study pretext``, then --pretrained PRETEXT/pretext_rgb.pth); lambda, the
    # SSA endpoint and the branch epoch are chosen on validation (docs/study/design.md).
    "cpu-study": dict(
        **recipe_schedule(15),
        batch_size=8,
        lr=1e-2,
        lambda_=5e-2,
        ssa_endpoints=("Mixed_3c",),
        width=0.25,
        frames=16,
        test_frames=16,
        size=64,
        resize=72,
        fps=15.0,
        cache=True,
        workers=0,
        eval_every=1,
        device="cpu",
    ),
    # The pretext network of the study (a stand-in for the recipe's Kinetics weights): the
    # cpu-study network, RGB alone, trained on other classes and subjects than the
    # target's (examples/study/pretext.py), with the recipe's LR steps in 10 epochs.
    "cpu-pretext": dict(
        epochs=10,
        lr_steps=recipe_schedule(10)["lr_steps"],
        batch_size=8,
        lr=1e-2,
        modalities=("rgb",),
        ssa=False,
        width=0.25,
        frames=16,
        test_frames=16,
        size=64,
        resize=72,
        fps=15.0,
        cache=True,
        workers=0,
        eval_every=0,
        device="cpu",
    ),
}
# Where the box presets look for mmpose's per-frame hand boxes when --hand-boxes is not given.
FRAME_BOX_CANDIDATES = ("bboxes.json", "annotations/bboxes.json")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m examples.train_nvgesture`` argument parser.

    Every option defaults to ``None`` so that :func:`config_from_args` can tell what was
    given on the command line (it overrides the preset) from what was not.
    """
    p = argparse.ArgumentParser(
        prog="python examples/train_nvgesture.py",
        description="Train one I3D per modality on NVGesture (real or synthetic) with the MTUT SSA loss; "
        "one modality trains the unimodal baseline.",
        epilog="Defaults in [brackets] are the 'full' preset's (mmpose's 224x224 recipe without hand boxes). "
        "Settings come from the preset, then the --config file, then the options given here (each "
        "overrides the one before); --print-config shows the result.",
    )
    a = p.add_argument
    a("--data-root", help="dataset root (NVGesture layout: Video_data/ and the two list files); required")
    a(
        "--config",
        metavar="FILE",
        help="settings file (JSON, or YAML with PyYAML installed): TrainConfig field "
        'names, e.g. {"lr": 0.01, "lr_steps": [30, 50]}; --print-config writes one',
    )
    a("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    a("--out", help="run folder: checkpoints, metrics, plots")
    a(
        "--preset",
        choices=list(PRESETS),
        help="settings to start from: 'full' = 'mmpose-224' (mmpose's 224x224 recipe without boxes), "
        "'mmpose-224-box', 'mmpose-112-box-fps15' (mmpose's hand-box recipes; GPU), 'cpu-small' "
        "(minutes on a CPU), 'cpu-study' (the paired study's fit-then-align regime on a CPU) or 'cpu-pretext' "
        "(its pretext network)",
    )
    a(
        "--modalities",
        nargs="+",
        metavar="M",
        help=f"modalities, one I3D each ({', '.join(MODALITIES)}); one modality = unimodal baseline",
    )
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="clips per process (per GPU)")
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument(
        "--lr-steps",
        type=int,
        nargs="*",
        metavar="EPOCH",
        help="multiply the LR by LR_GAMMA after these epochs (none: a constant LR)",
    )
    g.add_argument("--lr-gamma", type=float)
    g.add_argument(
        "--lr-scaling",
        choices=("none", "linear"),
        help="linear: multiply --lr by the total batch (--batch-size x processes) / --lr-reference-batch",
    )
    g.add_argument(
        "--lr-reference-batch",
        type=int,
        metavar="B",
        help="the total batch --lr was tuned for (mmpose: 6 per GPU; its GPU count is not published)",
    )
    g = p.add_argument_group("SSA loss")
    g.add_argument(
        "--ssa",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--no-ssa never switches SSA on (the SSA-off arm of a paired study)",
    )
    g.add_argument("--ssa-start", type=int, metavar="EPOCH", help="first (1-based) epoch with the SSA loss")
    g.add_argument(
        "--beta",
        type=float,
        help="focal regularization parameter (0 is refused while SSA runs with --focal exp: "
        "it makes rho = 0 for every sample, i.e. no SSA at all; use --focal constant)",
    )
    g.add_argument(
        "--focal",
        choices=FOCAL_MODES,
        help="focal weight rho: exp (the paper's), constant (rho = 1 on every ordered pair: focal "
        "weighting off) or indicator (rho = 1 where the other network's CE is lower, else 0)",
    )
    g.add_argument(
        "--ssa-shuffle",
        nargs="*",
        metavar="MODALITY",
        help="control: permute these modalities' SSA features within the batch (a derangement from its "
        "own seeded generator; the focal weights stay each clip's own), e.g. --ssa-shuffle depth",
    )
    g.add_argument("--lambda", dest="lambda_", type=float, metavar="LAMBDA", help="SSA weight (tuned for 'rms')")
    g.add_argument("--distance", choices=("rms", "fro2"))
    g.add_argument("--pair-cap", type=float, help="cap every ordered pair's term, as mmpose does (0 = no cap)")
    g.add_argument("--ssa-endpoints", nargs="+", metavar="ENDPOINT", help="I3D endpoints to align")
    g.add_argument("--algo", choices=("auto", "direct", "gram"))
    g.add_argument(
        "--ssa-backend",
        choices=("auto", "cpu", "cuda", "triton", "reference"),
        help="mtut_ops backend of the SSA op (auto = the device's default: cuda, then triton, on GPUs; "
        "reference builds the d x d matrices, as mmpose does)",
    )
    g.add_argument(
        "--ssa-fp32",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cast the features to float32 before the SSA op (the op's bf16/fp16 path has "
        "not been checked on a GPU yet)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--width", type=float, help="I3D width multiplier (1.0 = original)")
    g.add_argument("--dropout", type=float)
    g.add_argument(
        "--pretrained",
        nargs="+",
        metavar="[MODALITY=]PATH",
        help="converted Kinetics I3D checkpoint(s), local files; a bare PATH serves every modality",
    )
    g.add_argument("--stem", choices=("mean", "sum"), help="adapting the RGB stem to 1/2 channels")
    g = p.add_argument_group("data")
    g.add_argument("--frames", type=int, help="training clip length T")
    g.add_argument("--test-frames", type=int, help="evaluation clip length (0 = whole clip, batch 1)")
    g.add_argument("--size", type=int, help="square crop side")
    g.add_argument("--resize", type=int, help="short edge before cropping")
    g.add_argument("--fps", type=float, help="temporal sampling rate (0 = every frame)")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no random horizontal flips")
    g.add_argument(
        "--hand-boxes",
        metavar="JSON",
        help="hand boxes: hand_boxes.json (one box per clip; --box-pipeline margin) or mmpose's "
        "bboxes.json (per-frame detections; --box-pipeline mmpose; the box presets look for "
        "DATA_ROOT/bboxes.json and DATA_ROOT/annotations/bboxes.json)",
    )
    g.add_argument(
        "--box-pipeline",
        choices=("margin", "mmpose"),
        help="margin: crop to the clip's box plus a margin, resize, crop; mmpose: merge the sampled "
        "frames' boxes, jittered crop (--box-scale/--box-ratio/--box-shift) resized to --size",
    )
    g.add_argument("--box-scale", type=float, nargs=2, metavar=("LO", "HI"), help="mmpose box crop: random scale")
    g.add_argument("--box-ratio", type=float, nargs=2, metavar=("LO", "HI"), help="mmpose box crop: random aspect")
    g.add_argument("--box-shift", type=float, help="mmpose box crop: random shift, fraction of the crop side")
    g.add_argument(
        "--color-jitter",
        type=float,
        nargs=2,
        metavar=("BRIGHTNESS", "CONTRAST"),
        help="RGB colour jitter (mmpose's 112 recipe: 0.4 0.3; 0 0 = none)",
    )
    g.add_argument(
        "--val-subjects",
        type=int,
        metavar="K",
        help="hold out the last K training subjects as a validation split (for tuning)",
    )
    g.add_argument(
        "--skip-bad",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pass over bad list lines and clips with a warning (counted) instead of stopping the run",
    )
    g.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode every clip once and keep it in memory (small datasets)",
    )
    g.add_argument("--workers", type=int, help="DataLoader worker processes: 4, at most the cores - 1")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, metavar="E", help="evaluate every E epochs (0 = only at the end)")
    g.add_argument("--fusion", choices=FUSIONS, help="fused score: mean of softmaxes or of logits")
    g.add_argument(
        "--best-metric",
        metavar="NAME",
        help="validation top-1 that picks best.pt: a modality or 'fused' (auto = the first modality; "
        "needs --val-subjects; the test split is never used)",
    )
    g.add_argument(
        "--watch-test",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also evaluate the test split every --eval-every epochs (logged only, never used to choose "
        "anything; mmpose's configs validate on test)",
    )
    g.add_argument(
        "--eval-test",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="evaluate the test split after the last epoch; --no-eval-test never loads it (runs that "
        "choose settings on validation before a preregistered test)",
    )
    g.add_argument(
        "--save-logits",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write every evaluation's per-clip logits to evals/epochNNN_SPLIT.npz",
    )
    g.add_argument(
        "--init-from",
        metavar="CKPT",
        help="start from these weights only (a training checkpoint or a state dict; no optimizer, epoch or RNG state)",
    )
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--amp", choices=AMP_MODES, help="mixed precision (auto: bf16/fp16 on GPU, off on CPU)")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    g.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="no PNG plots at the end")
    g.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write TensorBoard scalars to OUT/tb (loss terms, lr, throughput, memory per iteration)",
    )
    g.add_argument("--log-every", type=int, metavar="N", help="TensorBoard: every N iterations")
    g.add_argument(
        "--keep-every",
        type=int,
        metavar="K",
        help="also keep the checkpoint of every K-th epoch (OUT/epochNNN.pt; 0 = only last.pt and best.pt)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last.pt, with the settings saved in it (options given "
        "here override them; only those that keep the trajectory are accepted)",
    )
    _add_defaults(p)
    return p


def _add_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each option's 'full'-preset default to its help (options default to None)."""
    defaults = TrainConfig()
    for action in parser._actions:
        if action.dest in ("data_root", "help", "preset") or not hasattr(defaults, action.dest):
            continue
        value = getattr(defaults, action.dest)
        if isinstance(action, argparse._StoreFalseAction):
            shown = f"{action.dest} {'on' if value else 'off'}"
        elif isinstance(value, tuple):
            shown = " ".join(map(str, value)) if value else "none"
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        else:
            shown = "none" if value is None else value
        action.help = f"{action.help or ''} [{shown}]".strip()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset's config, then the ``--config`` file's settings, then every option given
    on the command line, validated.

    With ``--resume`` and a run in ``--out``, the run's own settings (saved in its
    ``last.pt``) take the preset's place: ``--out DIR --resume`` alone continues it.
    """
    from .config_file import read_config_file, typed, typed_fields

    from_file = read_config_file(args.config) if getattr(args, "config", None) else {}
    saved = _saved_config(args, from_file.get("out"))
    if saved is not None:
        if args.preset and args.preset != saved.get("preset"):
            raise ValueError(
                f"--resume: the run in {saved['out']} was started with --preset {saved.get('preset')}, "
                f"not {args.preset}; leave --preset out to continue it with its settings"
            )
        preset = saved.get("preset", "full")
        cfg = TrainConfig(
            **{k: typed(k, v, f"{saved['out']}/last.pt: {k!r}") for k, v in saved.items() if k in typed_fields()}
        )
        from_file.pop("preset", None)
    else:
        preset = args.preset or from_file.pop("preset", None) or "full"
        from_file.pop("preset", None)
        if preset not in PRESETS:
            raise ValueError(f"--config {args.config}: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        cfg = TrainConfig(preset=preset, **PRESETS[preset])
    for name, value in from_file.items():
        setattr(cfg, name, value)
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
    if args.ssa_backend == "auto":
        cfg.ssa_backend = None
    if args.color_jitter is not None and not any(args.color_jitter):
        cfg.color_jitter = None
    if cfg.box_pipeline == "mmpose" and cfg.hand_boxes is None and cfg.data_root:
        found = [Path(cfg.data_root) / c for c in FRAME_BOX_CANDIDATES if (Path(cfg.data_root) / c).is_file()]
        if not found:
            raise ValueError(
                f"--preset {preset} (--box-pipeline mmpose) crops to per-frame hand boxes: give "
                f"mmpose's bboxes.json with --hand-boxes (not found at {' or '.join(FRAME_BOX_CANDIDATES)} "
                f"under {cfg.data_root})"
            )
        cfg.hand_boxes = str(found[0])
    validate(cfg)
    return cfg


def _saved_config(args: argparse.Namespace, out_in_file: str | None) -> dict | None:
    """The settings saved in the run folder's ``last.pt`` when resuming (``None``
    otherwise), with ``out`` the folder it was found in."""
    if not getattr(args, "resume", False):
        return None
    from .checkpoint import load_checkpoint

    out = args.out or out_in_file or TrainConfig.out
    path = Path(out) / "last.pt"
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path} (--out names the run folder to continue)")
    return {**load_checkpoint(path)["config"], "out": str(out)}


def resume_command(out: str | Path) -> str:
    """The command that continues the run in ``out``."""
    import shlex

    return f"python examples/train_nvgesture.py --out {shlex.quote(str(out))} --resume"


def schedule_warnings(cfg: TrainConfig) -> list[str]:
    """Settings that leave part of the schedule without effect in this run: SSA starting
    after the last epoch (the networks then train apart), LR steps at or after it."""
    out = []
    preset = PRESETS.get(cfg.preset, {})

    def source(name: str, flag: str) -> str:
        default = preset.get(name, getattr(TrainConfig, name, None))
        return (
            f"the value of preset {cfg.preset!r}" if _norm_value(getattr(cfg, name)) == _norm_value(default) else flag
        )

    if cfg.ssa and len(cfg.modalities) > 1 and cfg.ssa_start > cfg.epochs:
        out.append(
            f"SSA never runs: --ssa-start {cfg.ssa_start} ({source('ssa_start', 'as given')}) is after the last "
            f"epoch (--epochs {cfg.epochs}), so the {len(cfg.modalities)} networks train independently. Give "
            f"--ssa-start E with E <= {cfg.epochs} for SSA, or --no-ssa to train without it"
        )
    late = [e for e in cfg.lr_steps if e >= cfg.epochs]
    if late:
        out.append(
            f"--lr-steps {' '.join(map(str, late))} ({source('lr_steps', 'as given')}): the LR would drop after "
            f"epoch(s) at or past the last one (--epochs {cfg.epochs}), so it never does there"
        )
    return out


def _norm_value(v):
    return list(v) if isinstance(v, (list, tuple)) else v


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
    need(
        Path(cfg.data_root).is_dir(),
        f"--data-root {cfg.data_root!r} is not a folder (make a synthetic dataset "
        "with `python -m examples.data make-synthetic --out DIR`)",
    )
    unknown = [m for m in cfg.modalities if m not in MODALITIES]
    need(
        not unknown, f"--modalities: unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}" if unknown else ""
    )
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
    need(cfg.eval_test or not cfg.watch_test, "--watch-test evaluates the test split: it cannot go with --no-eval-test")
    need(cfg.beta >= 0 and cfg.lambda_ >= 0, "--beta and --lambda must be >= 0")
    need(cfg.focal in FOCAL_MODES, f"--focal must be one of {', '.join(FOCAL_MODES)}, got {cfg.focal!r}")
    ssa_runs = cfg.ssa and len(cfg.modalities) > 1 and cfg.ssa_start <= cfg.epochs
    need(
        not (ssa_runs and cfg.focal == "exp" and cfg.beta == 0),
        "--beta 0 with --focal exp makes rho = exp(0) - 1 = 0 for every sample: the SSA loss would be 0 and "
        "SSA silently off. For SSA without focal weighting use --focal constant; to train without SSA use --no-ssa",
    )
    bad = [m for m in cfg.ssa_shuffle if m not in cfg.modalities]
    need(not bad, f"--ssa-shuffle: {bad} not among --modalities {' '.join(cfg.modalities)}")
    need(
        len(cfg.ssa_shuffle) < len(cfg.modalities) or not cfg.ssa_shuffle,
        "--ssa-shuffle: shuffling every modality's features together keeps them paired; leave at least one out",
    )
    need(cfg.pair_cap is None or cfg.pair_cap > 0, f"--pair-cap must be >= 0 (0 = no cap), got {cfg.pair_cap}")
    bad = [e for e in cfg.ssa_endpoints if e not in ENDPOINTS]
    need(
        not bad and bool(cfg.ssa_endpoints), f"--ssa-endpoints: {bad} not I3D endpoints; known: {', '.join(ENDPOINTS)}"
    )
    need(cfg.width > 0, f"--width must be > 0, got {cfg.width}")
    need(0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}")
    for m, path in parse_pretrained(cfg.pretrained, cfg.modalities).items():
        need(
            m in cfg.modalities,
            f"--pretrained: modality {m!r} is not trained (--modalities {' '.join(cfg.modalities)})",
        )
        need(Path(path).is_file(), f"--pretrained: {path!r} is not a file (weights are never downloaded)")
    need(cfg.frames >= 1, f"--frames must be >= 1, got {cfg.frames}")
    need(cfg.test_frames is None or cfg.test_frames >= 1, f"--test-frames must be >= 0, got {cfg.test_frames}")
    need(cfg.size >= 1, f"--size must be >= 1, got {cfg.size}")
    need(cfg.resize is None or cfg.resize >= cfg.size, f"--resize ({cfg.resize}) must be >= --size ({cfg.size})")
    need(cfg.fps is None or cfg.fps > 0, f"--fps must be > 0, got {cfg.fps}")
    need(cfg.hand_boxes is None or Path(cfg.hand_boxes).is_file(), f"--hand-boxes {cfg.hand_boxes!r} is not a file")
    need(cfg.box_pipeline in ("margin", "mmpose"), f"--box-pipeline must be margin or mmpose, got {cfg.box_pipeline!r}")
    need(
        cfg.box_pipeline != "mmpose" or cfg.hand_boxes is not None,
        "--box-pipeline mmpose needs --hand-boxes (mmpose's per-frame bboxes.json)",
    )
    need(0 < cfg.box_scale[0] <= cfg.box_scale[1], f"--box-scale must be 0 < LO <= HI, got {list(cfg.box_scale)}")
    need(0 < cfg.box_ratio[0] <= cfg.box_ratio[1], f"--box-ratio must be 0 < LO <= HI, got {list(cfg.box_ratio)}")
    need(cfg.box_shift >= 0, f"--box-shift must be >= 0, got {cfg.box_shift}")
    need(cfg.color_jitter is None or min(cfg.color_jitter) >= 0, f"--color-jitter must be >= 0, got {cfg.color_jitter}")
    need(cfg.val_subjects >= 0, f"--val-subjects must be >= 0, got {cfg.val_subjects}")
    need(cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
    need(cfg.eval_every >= 0, f"--eval-every must be >= 0, got {cfg.eval_every}")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.log_every >= 1, f"--log-every must be >= 1, got {cfg.log_every}")
    need(cfg.keep_every >= 0, f"--keep-every must be >= 0 (0 = off), got {cfg.keep_every}")
    need(cfg.lr_scaling in ("none", "linear"), f"--lr-scaling must be none or linear, got {cfg.lr_scaling!r}")
    need(cfg.lr_reference_batch >= 1, f"--lr-reference-batch must be >= 1, got {cfg.lr_reference_batch}")
    need(cfg.fusion in FUSIONS, f"--fusion must be one of {FUSIONS}, got {cfg.fusion!r}")
    scores = (*cfg.modalities, "fused") if len(cfg.modalities) > 1 else cfg.modalities
    need(
        cfg.best_metric == "auto" or cfg.best_metric in scores,
        f"--best-metric must be auto or one of {', '.join(scores)}, got {cfg.best_metric!r}",
    )
    need(cfg.init_from is None or Path(cfg.init_from).is_file(), f"--init-from {cfg.init_from!r} is not a file")
    need(cfg.distance in ("rms", "fro2"), f"--distance must be 'rms' or 'fro2', got {cfg.distance!r}")
    need(cfg.algo in ("auto", "direct", "gram"), f"--algo must be auto, direct or gram, got {cfg.algo!r}")
    need(cfg.stem in ("mean", "sum"), f"--stem must be 'mean' or 'sum', got {cfg.stem!r}")
    need(cfg.amp in AMP_MODES, f"--amp must be one of {AMP_MODES}, got {cfg.amp!r}")
    device = resolve_device(cfg.device)
    resolve_amp(cfg.amp, device)  # raises for CUDA or mixed precision without a GPU
    if cfg.ssa_backend is not None and len(cfg.modalities) > 1:
        import mtut_ops

        available = mtut_ops.available_backends(device)
        need(
            cfg.ssa_backend in available,
            f"--ssa-backend {cfg.ssa_backend}: not available on {device} (available: {', '.join(available)})",
        )


@dataclass
class Paths:
    """Files of a run folder."""

    root: Path
    checkpoint: Path = field(init=False)
    metrics_json: Path = field(init=False)
    metrics_csv: Path = field(init=False)
    final: Path = field(init=False)
    best: Path = field(init=False)
    evals: Path = field(init=False)

    def __post_init__(self) -> None:
        self.checkpoint = self.root / "last.pt"
        self.best = self.root / "best.pt"
        self.evals = self.root / "evals"
        self.metrics_json = self.root / "metrics.json"
        self.metrics_csv = self.root / "metrics.csv"
        self.final = self.root / "final_eval.json"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """The checkpoint kept after ``epoch`` (``--keep-every``)."""
        return self.root / f"epoch{epoch:03d}.pt"

    def logits(self, epoch: int, split: str) -> Path:
        """Per-clip logits of the evaluation of ``split`` after ``epoch``."""
        return self.evals / f"epoch{epoch:03d}_{split}.npz"
