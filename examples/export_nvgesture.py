"""Export one modality's network of a training checkpoint, to run it alone (unimodal testing).

    python examples/export_nvgesture.py --checkpoint runs/nv_rgbd/last.pt --modality rgb --out deploy/rgb.pt2
    python examples/export_nvgesture.py --checkpoint runs/nv_rgbd/last.pt --modality depth --format torchscript \\
        --out deploy/depth.ts

Writes the network (``torch.export`` program or TorchScript) with its preprocessing
metadata inside, and the metadata as ``<out>.json``; classify a video with
``python examples/infer_nvgesture.py --model deploy/rgb.pt2 --video clip.avi``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path (python examples/X.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from examples.deploy import FORMATS, export_network  # noqa: E402
from examples.training.checkpoint import CheckpointError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python examples/export_nvgesture.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt or last.pt)")
    p.add_argument("--modality", required=True, help="the network to export (rgb, depth, ir, flow)")
    p.add_argument("--out", required=True, help="file to write (.pt2 for torch.export, .ts for TorchScript)")
    p.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="export",
        help="torch.export program (batch dynamic) or TorchScript trace (deprecated by torch)",
    )
    p.add_argument(
        "--frames",
        type=int,
        help="clip length T of the input (default: the run's evaluation length, else its training length)",
    )
    args = p.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")
    try:
        meta = export_network(args.checkpoint, args.modality, args.out, frames=args.frames, fmt=args.format)
    except (CheckpointError, ValueError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except OSError as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt:
        p.exit(130, f"{p.prog}: interrupted\n")
    print(
        f"wrote {args.out} ({args.format}): {meta['modality']} I3D, input [N, {meta['in_channels']}, "
        f"{meta['frames']}, {meta['size']}, {meta['size']}], epoch {meta['epoch']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
