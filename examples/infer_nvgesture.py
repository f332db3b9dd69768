"""Classify a gesture video with one exported network alone (no other modality needed).

    python examples/infer_nvgesture.py --model deploy/rgb.pt2 --video Video_data/class_01/subject13_r0/sk_color.avi \\
        --window 138:218
    python examples/infer_nvgesture.py --model deploy/depth.pt2 --video clip_depth.avi --top 3 --json

The video is prepared exactly as training evaluated it (the metadata inside the exported
file: T centered frames at the run's frame rate, resize and center crop, normalization);
a network trained on hand-box crops also needs ``--box``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path (python examples/X.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402

from examples.data.errors import NVGestureDataError  # noqa: E402
from examples.deploy import Deployed  # noqa: E402


def _window(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) >= int(end):
        raise argparse.ArgumentTypeError(f"expected START:END frames (end exclusive), got {text!r}")
    return int(start), int(end)


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 as fractions of the frame, got {text!r}")
    return box


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python examples/infer_nvgesture.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="an exported network (examples/export_nvgesture.py)")
    p.add_argument("--video", required=True, help="the video of the network's modality (AVI or anything OpenCV reads)")
    p.add_argument("--window", type=_window, help="frames START:END to classify (default: the whole video)")
    p.add_argument(
        "--box", type=_box, help="the hand's box x0,y0,x1,y1 as fractions of the frame (box-trained networks)"
    )
    p.add_argument("--top", type=int, default=5, help="classes to print")
    p.add_argument("--json", action="store_true", help="print the logits and the top classes as JSON")
    args = p.parse_args(argv)
    try:
        net = Deployed(args.model)
        logits = net.classify_video(args.video, args.window, args.box)
    except (OSError, ValueError, NVGestureDataError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt:
        p.exit(130, f"{p.prog}: interrupted\n")
    probs = logits.softmax(0)
    top = probs.argsort(descending=True)[: max(1, args.top)].tolist()
    names = net.meta["class_names"]
    if args.json:
        print(
            json.dumps(
                {
                    "logits": logits.tolist(),
                    "top": [{"class": c + 1, "name": names[c], "probability": float(probs[c])} for c in top],
                }
            )
        )
    else:
        for c in top:
            print(f"{float(probs[c]):6.3f}  class {c + 1:2d}  {names[c]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
