"""Command line: ``python -m examples.data {make-synthetic,compute-flow,extract-windows,show}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .classes import NUM_CLASSES
from .errors import NVGestureDataError
from .flow import DEFAULT_BOUND, precompute_flow
from .listfile import LIST_FILES, find_list_file
from .modalities import MODALITIES
from .synthetic import DEFAULT_CLASSES, SyntheticConfig, generate


def _classes(text: str) -> tuple[int, ...]:
    if text == "all":
        return tuple(range(1, NUM_CLASSES + 1))
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated labels like 1,2,5, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 160x120, got {text!r}")
    return int(w), int(h)


def _modalities(text: str) -> tuple[str, ...]:
    mods = tuple(m for m in text.split(",") if m)
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown or not mods:
        raise argparse.ArgumentTypeError(f"unknown modality in {text!r}; choose from {', '.join(MODALITIES)}")
    return mods


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.data",
        description="NVGesture data tools: synthetic data, optical flow, a look at the clips.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = SyntheticConfig()

    s = sub.add_parser(
        "make-synthetic",
        help="write a synthetic dataset in the NVGesture layout",
        description="Write a synthetic dataset in exactly the NVGesture layout (AVI videos, list "
        "files, plus hand_boxes.json). Deterministic for a given seed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--out", type=Path, required=True, help="dataset root to write")
    s.add_argument("--seed", type=int, default=d.seed, help="base seed")
    s.add_argument(
        "--classes",
        type=_classes,
        default=",".join(map(str, DEFAULT_CLASSES)),
        help="1-based classes, comma-separated, or 'all' for the 25",
    )
    s.add_argument("--clips-per-class", type=int, default=d.clips_per_class, help="clips of each class")
    s.add_argument("--subjects", type=int, default=d.subjects, help="number of subjects")
    s.add_argument("--test-subjects", type=int, default=d.test_subjects, help="subjects held out for the test list")
    s.add_argument(
        "--first-subject",
        type=int,
        default=d.first_subject,
        help="number of the first subject (a pretext dataset takes a range disjoint from the target's)",
    )
    s.add_argument("--frames", type=int, default=d.frames, help="mean gesture (valid window) length in frames")
    s.add_argument(
        "--size",
        type=_size,
        default=f"{d.width}x{d.height}",
        metavar="WxH",
        help="frame size (the real sensors are 320x240)",
    )
    s.add_argument(
        "--rgb-difficulty",
        type=float,
        default=d.rgb_difficulty,
        help="0 (RGB as clean as depth) .. 1 (heavy clutter, noise, lighting changes)",
    )
    s.add_argument(
        "--rgb-hard-p",
        type=float,
        default=d.rgb_hard_p,
        help="probability that a clip is RGB-hard (camouflaged hand, a skin-toned distractor near it, a "
        "lighting dip; depth unchanged); the marks go to rgb_hard.json, for analysis only",
    )
    s.add_argument(
        "--rgb-hard-strength", type=float, default=d.rgb_hard_strength, help="0..1: how hard an RGB-hard clip is"
    )
    s.add_argument(
        "--hand-scale",
        type=float,
        default=d.hand_scale,
        help="hand size relative to the default camera distance (2 = a camera twice as close)",
    )
    s.add_argument("--codec", default=d.codec, help="AVI FourCC (MJPG, or lossless FFV1)")
    s.add_argument("--flow", action="store_true", help="also precompute optical flow for both lists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    f = sub.add_parser(
        "compute-flow",
        help="precompute optical flow (Farneback or TV-L1) for a list file",
        description="Compute dense optical flow (OpenCV Farneback, or Dual TV-L1 with "
        "opencv-contrib) from sk_color.avi over each clip's color window and write "
        "sk_color_flow.npz next to it (format: examples/data/flow.py). Resumable: "
        "finished clips are skipped; writes are atomic.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    f.add_argument(
        "--method",
        choices=("farneback", "tvl1"),
        default="farneback",
        help="tvl1: what the Kinetics flow I3D was trained on (needs opencv-contrib-python-headless)",
    )
    f.add_argument("--root", type=Path, required=True, help="dataset root")
    f.add_argument(
        "--list",
        type=Path,
        action="append",
        dest="lists",
        help="list file (relative to --root or a path); repeat for several (default: train and test)",
    )
    f.add_argument("--bound", type=float, default=DEFAULT_BOUND, help="clip flow to +-bound pixels per frame")
    f.add_argument("--workers", type=int, default=1, help="processes")
    f.add_argument("--force", action="store_true", help="recompute clips that are already done")
    f.add_argument("--skip-bad", action="store_true", help="warn about bad clips and go on instead of stopping")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    w = sub.add_parser(
        "extract-windows",
        help="write every clip's valid windows as a new dataset (one-off)",
        description="Decode each clip's sensor windows once and write them as a new dataset in "
        "the same layout (windows start at frame 0), so training never decodes a "
        "recording from its first frame. bboxes.json is cut to the color window; "
        "hand_boxes.json and flow files are carried over.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    w.add_argument("--root", type=Path, required=True, help="dataset root")
    w.add_argument("--out", type=Path, required=True, help="new dataset root")
    w.add_argument(
        "--codec",
        default="MJPG",
        help="AVI FourCC: MJPG decodes fast but re-encodes lossily; FFV1 is "
        "lossless (identical frames) but ~13x slower to decode",
    )
    w.add_argument("--workers", type=int, default=1, help="processes")
    w.add_argument("--skip-bad", action="store_true", help="leave bad clips out (with a warning) instead of stopping")
    w.add_argument("--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser(
        "show",
        help="save an image grid of a few clips (PNG)",
        description="Save a PNG grid of a few clips: one row per modality, frames over the valid "
        "window. Flow is read from precomputed files, else computed for display.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    v.add_argument("--root", type=Path, required=True, help="dataset root")
    v.add_argument("--out", type=Path, help="PNG to write (default: ROOT/grid.png, beside the data)")
    v.add_argument("--split", choices=sorted(LIST_FILES), default="train", help="which list to show")
    v.add_argument("--clips", type=int, default=4, help="number of clips (one per class first)")
    v.add_argument("--frames", type=int, default=8, help="frames per row")
    v.add_argument("--modalities", type=_modalities, default="rgb,depth,ir,flow", help="comma-separated rows per clip")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "make-synthetic":
            cfg = SyntheticConfig(
                classes=args.classes,
                clips_per_class=args.clips_per_class,
                subjects=args.subjects,
                test_subjects=args.test_subjects,
                first_subject=args.first_subject,
                frames=args.frames,
                width=args.size[0],
                height=args.size[1],
                rgb_difficulty=args.rgb_difficulty,
                codec=args.codec,
                rgb_hard_p=args.rgb_hard_p,
                rgb_hard_strength=args.rgb_hard_strength,
                hand_scale=args.hand_scale,
                seed=args.seed,
            )
            summary = generate(args.out, cfg, progress=not args.quiet)
            hard = f" ({summary['hard']} RGB-hard, {args.out}/rgb_hard.json)" if cfg.rgb_hard_p > 0 else ""
            print(
                f"wrote {summary['train']} train / {summary['test']} test clips{hard} to {args.out} "
                f"in {summary['seconds']:.1f} s"
            )
            if args.flow:
                for name in LIST_FILES.values():
                    precompute_flow(args.out, args.out / name, progress=not args.quiet)
        elif args.command == "compute-flow":
            for list_file in args.lists or [find_list_file(args.root, split) for split in LIST_FILES]:
                stats = precompute_flow(
                    args.root,
                    list_file,
                    bound=args.bound,
                    force=args.force,
                    skip_bad=args.skip_bad,
                    workers=args.workers,
                    progress=not args.quiet,
                    method=args.method,
                )
                print(f"{list_file}: {stats.computed} computed, {stats.skipped} already done, {stats.failed} bad")
        elif args.command == "extract-windows":
            from .windows import extract_windows

            stats = extract_windows(
                args.root,
                args.out,
                codec=args.codec,
                workers=args.workers,
                skip_bad=args.skip_bad,
                progress=not args.quiet,
            )
            print(
                f"wrote {stats.clips} clips to {args.out} ({stats.failed} bad): {stats.bytes_out / 2**20:.1f} MiB "
                f"of windows from {stats.bytes_in / 2**20:.1f} MiB of recordings"
            )
        elif args.command == "show":
            from .show import show

            out = show(
                args.root,
                args.out or args.root / "grid.png",
                split=args.split,
                clips=args.clips,
                frames=args.frames,
                modalities=args.modalities,
            )
            print(f"wrote {out}")
    except (NVGestureDataError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
