"""Deploying one network: export a single modality's I3D from a training checkpoint,
and classify a video with the exported file alone.

An exported network is one file: ``torch.export`` (``.pt2``, the default) or
TorchScript (``.ts``). It holds the network and, as an extra file ``mtut.json``, what
inference needs to prepare its input the way training evaluated it (the same file is
also written next to it as ``<name>.json``):

``modality``, ``in_channels``, ``num_classes``, ``class_names``, ``frames`` (the fixed
clip length T the network was exported for), ``size``, ``resize``, ``fps``, ``mean``,
``std``, ``hand_boxes`` (whether the run cropped to hand boxes: then inference needs a
box), ``box_pipeline``, and where it came from (``checkpoint``, ``epoch``).

The input is ``[N, in_channels, T, size, size]`` float32, prepared by the run's test
pipeline (:func:`examples.data.build_transforms` with ``train=False``); the output is
``[N, num_classes]`` logits (averaged over time), as in training's evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from examples.data import CLASS_NAMES, MODALITIES, build_transforms
from examples.data.transforms import RGB_MEAN, RGB_STD
from examples.data.video import read_window
from examples.models import I3D

from .training.checkpoint import load_checkpoint

FORMATS = {"export": ".pt2", "torchscript": ".ts"}
META_NAME = "mtut.json"
META_FORMAT = "mtut-network/1"


def network_from_checkpoint(checkpoint: str | Path, modality: str) -> tuple[I3D, dict, dict]:
    """The ``modality`` network of a training checkpoint (eval mode), its run config, and the checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    if modality not in cfg["modalities"]:
        raise ValueError(f"--modality {modality}: the run trained {', '.join(cfg['modalities'])}")
    net = I3D(len(CLASS_NAMES), in_channels=MODALITIES[modality].channels, width=cfg["width"], dropout=cfg["dropout"])
    prefix = f"nets.{modality}."
    net.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["model"].items() if k.startswith(prefix)})
    return net.eval(), cfg, ckpt


def metadata(cfg: dict, modality: str, frames: int, checkpoint: str | Path, epoch: int) -> dict:
    return {
        "format": META_FORMAT,
        "modality": modality,
        "in_channels": MODALITIES[modality].channels,
        "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "frames": frames,
        "size": cfg["size"],
        "resize": cfg["resize"],
        "fps": cfg["fps"],
        "mean": list(RGB_MEAN),
        "std": list(RGB_STD),
        "hand_boxes": bool(cfg.get("hand_boxes")),
        "box_pipeline": cfg.get("box_pipeline", "margin"),
        "checkpoint": str(checkpoint),
        "epoch": epoch,
    }


def export_network(
    checkpoint: str | Path, modality: str, out: str | Path, *, frames: int | None = None, fmt: str = "export"
) -> dict:
    """Export the ``modality`` network of ``checkpoint`` to ``out``; returns its metadata.

    ``frames``: the clip length T of the exported input (default: the run's evaluation
    length, else its training length). ``torch.export`` and TorchScript fix T (and the
    batch of 1 at export; the batch stays dynamic with ``torch.export``): a run evaluated on
    whole clips is deployed on T centered frames.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    net, cfg, ckpt = network_from_checkpoint(checkpoint, modality)
    out = Path(out)
    if fmt == "export" and out.suffix != FORMATS["export"]:
        raise ValueError(
            f"--out {out}: a torch.export program is written as {FORMATS['export']} (what --format "
            "export writes and infer_nvgesture.py reads; ONNX is not written by this tool)"
        )
    if fmt == "torchscript" and out.suffix == FORMATS["export"]:
        raise ValueError(
            f"--out {out}: {FORMATS['export']} is read as a torch.export program; name a TorchScript "
            f"file {FORMATS['torchscript']}"
        )
    from examples.training.runlog import check_writable

    check_writable(out.parent)  # before the work, not after it
    frames = frames or cfg["test_frames"] or cfg["frames"]
    meta = metadata(cfg, modality, frames, checkpoint, ckpt["epoch"])
    example = torch.zeros(2, meta["in_channels"], frames, cfg["size"], cfg["size"])
    text = json.dumps(meta, indent=1)
    with torch.no_grad():
        if fmt == "export":
            program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
            torch.export.save(program, out, extra_files={META_NAME: text})
        else:
            import warnings

            with warnings.catch_warnings():  # the tracer warns about every shape-dependent Python branch
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(net, example)
            torch.jit.save(traced, str(out), _extra_files={META_NAME: text})
    out.with_suffix(".json").write_text(text + "\n", encoding="utf-8")
    return meta


class Deployed:
    """An exported network and its metadata, ready to classify clips."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no exported network at {path}")
        extra = {META_NAME: ""}
        try:
            if path.suffix == ".pt2":
                self.module = torch.export.load(path, extra_files=extra).module()
            else:
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:  # torch raises RuntimeError and others, with messages about zip records
            raise ValueError(_not_exported(path, e)) from None
        self.meta = json.loads(extra[META_NAME]) if extra[META_NAME] else {}
        if self.meta.get("format") != META_FORMAT:
            raise ValueError(f"{path}: not an exported MTUT network (no {META_NAME} of format {META_FORMAT})")

    def transform(self, box: tuple[float, float, float, float] | None = None):
        m = self.meta
        if m["hand_boxes"] and box is None:
            raise ValueError(
                "this network was trained on hand-box crops: give the hand's box (--box x0,y0,x1,y1 "
                "as fractions of the frame)"
            )
        return build_transforms(
            False,
            frames=m["frames"],
            size=m["size"],
            resize=m["resize"],
            fps=m["fps"],
            boxes={"clip": box} if box is not None else None,
            mean=m["mean"],
            std=m["std"],
            box_pipeline=m["box_pipeline"],
        )

    def prepare(self, frames: np.ndarray, fps: float, box=None) -> torch.Tensor:
        """``[1, C, T, size, size]`` float32 from decoded frames ``[N, H, W, C]`` (uint8)."""
        modality = self.meta["modality"]
        sample = {modality: frames, "label": 0, "path": "clip", "meta": {"fps": {modality: fps}}}
        x = self.transform(box)(sample)[modality]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))[None]

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def classify_video(self, video: str | Path, window: tuple[int, int] | None = None, box=None) -> torch.Tensor:
        """Logits ``[num_classes]`` of a video file's frames ``[start, end)`` (default: all).

        A video named as NVGesture names a sensor's file (``sk_color.avi``, ``sk_depth.avi``,
        ``duo_left.avi``) must be the network's modality's."""
        from examples.data.video import probe_video

        check_video_modality(video, self.meta["modality"])
        start, end = window if window is not None else (0, probe_video(video).frames)
        frames, fps = read_window(video, start, end, gray=self.meta["in_channels"] == 1)
        return self.logits(self.prepare(frames, fps, box))[0]


# NVGesture's file name of each video modality's sensor
SENSOR_FILES = {"sk_color": "rgb", "sk_depth": "depth", "duo_left": "ir"}


def check_video_modality(video: str | Path, modality: str) -> None:
    """A ValueError when ``video``'s name says it is another modality's sensor video."""
    said = SENSOR_FILES.get(Path(video).stem)
    if said is not None and said != modality:
        theirs = (
            next(f for f, m in SENSOR_FILES.items() if m == modality) if modality in SENSOR_FILES.values() else None
        )
        raise ValueError(
            f"--video {video}: by its name a {said} video, but the network classifies {modality}"
            + (f" (NVGesture's {modality} video is {theirs}.avi)" if theirs else "")
        )


def _not_exported(path: Path, error: Exception) -> str:
    """Why ``path`` cannot be loaded as an exported network, with what to do."""
    from examples.training.checkpoint import CheckpointError, read_safely

    try:
        obj = read_safely(path)
    except (CheckpointError, OSError):
        obj = None
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        return (
            f"--model {path} is a training checkpoint, not an exported network: export one network first "
            f"(python examples/export_nvgesture.py --checkpoint {path} --modality rgb --out rgb.pt2)"
        )
    return (
        f"--model {path}: not an exported network (a .pt2 or .ts file written by examples/export_nvgesture.py; "
        f"{type(error).__name__})"
    )
