"""Train the MTUT gesture model (one I3D per modality) on NVGesture.

    python examples/train_nvgesture.py --data-root data/nvgesture --modalities rgb depth
    python examples/train_nvgesture.py --data-root data/nvgesture --preset mmpose-224-box --print-config
    python examples/train_nvgesture.py --data-root runs/demo/data --preset cpu-small --modalities rgb
    torchrun --nproc_per_node 4 examples/train_nvgesture.py --data-root data/nvgesture

The defaults are mmpose's recipe (SGD momentum 0.9, lr 1e-2 divided by 10 after epochs
30 and 50, 75 epochs, SSA from epoch 61 with beta 2 and lambda 5e-3, 64 frames at
224x224, batch 6 per GPU); ``--preset cpu-small`` is a few-minute CPU run. The run
folder (``--out``) gets ``last.pt`` (every epoch, atomically), ``metrics.json``/``.csv``,
``final_eval.json`` and PNG plots; ``--resume`` continues from ``last.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path (python examples/X.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402

from examples.data.errors import BadClipError, ListFormatError, NVGestureDataError, VideoError  # noqa: E402
from examples.training import build_parser, config_from_args, train  # noqa: E402
from examples.training.runlog import DivergenceError, TrainingInterrupted  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when the run finished; 2 for settings that cannot be used (with the
    option at fault), 1 for bad data, files or divergence, 130 for Ctrl-C: each with a
    one-line message and what to do, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        parser.error(str(e))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    try:
        train(cfg, resume=args.resume)
    except TrainingInterrupted as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted before training started: nothing to resume", file=sys.stderr)
        return 130
    except (NVGestureDataError, DivergenceError) as e:
        bad_clip = isinstance(e, (BadClipError, ListFormatError, VideoError)) and not cfg.skip_bad
        hint = " (--skip-bad passes over bad clips with a warning; a run can be resumed with it)" if bad_clip else ""
        print(f"{parser.prog}: error: {e}{hint}", file=sys.stderr)
        return 1
    except OSError as e:  # includes FileNotFoundError
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # settings that only a run can check (resume, checkpoints, pretrained weights)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
