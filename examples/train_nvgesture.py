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

from examples.training import build_parser, config_from_args, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    try:
        train(cfg, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:  # settings that only a run can check (resume, checkpoints)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
