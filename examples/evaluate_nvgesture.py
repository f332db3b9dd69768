"""Evaluate a training checkpoint on one split, without training: top-1 per modality and
fused, the confusion matrices and every clip's logits.

    python examples/evaluate_nvgesture.py --checkpoint runs/nv_rgbd/best.pt --split val
    python examples/evaluate_nvgesture.py --checkpoint runs/nv_rgbd/last.pt --split test --out runs/nv_rgbd/eval_test

The data pipeline is the run's own test pipeline (from the checkpoint's config); the
output folder gets ``eval.json`` (top-1, confusion matrices, clips, checkpoint, epoch),
``logits.npz`` (per-clip logits, format in ``examples/training/evaluation.py``) and
``confusion.png``. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path (python examples/X.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402

from examples.data import CLASS_NAMES  # noqa: E402
from examples.data.errors import NVGestureDataError  # noqa: E402
from examples.training import distributed as dd  # noqa: E402
from examples.training.checkpoint import load_checkpoint, write_json_atomic  # noqa: E402
from examples.training.config import TrainConfig, validate  # noqa: E402
from examples.training.data import build_datasets, eval_loader, require_clips, skipped_entries  # noqa: E402
from examples.training.engine import accuracy_lines, build_model  # noqa: E402
from examples.training.evaluation import evaluate, save_logits  # noqa: E402
from examples.training.runlog import check_writable  # noqa: E402


def config_of(ckpt: dict, **overrides) -> TrainConfig:
    """The run's config from a checkpoint, with ``overrides`` (``None`` values ignored);
    pretrained and init-from files are dropped (the weights come from the checkpoint)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    cfg.pretrained, cfg.init_from = (), None
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str,
    out: str | Path | None = None,
    *,
    data_root: str | None = None,
    test_frames: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    fusion: str | None = None,
    skip_bad: bool | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict:
    """Evaluate ``checkpoint`` on ``split`` (``val`` or ``test``) and write the outputs
    to ``out`` (default: ``<checkpoint folder>/eval_<checkpoint name>_<split>``).

    ``test_frames=0`` evaluates whole clips; ``skip_bad=True`` passes over bad clips
    (listed in ``eval.json``'s ``skipped``). Returns ``eval.json``'s content.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = config_of(
        ckpt,
        data_root=data_root,
        device=device,
        workers=workers,
        batch_size=batch_size,
        fusion=fusion,
        skip_bad=skip_bad,
        progress=progress,
    )
    if test_frames is not None:
        cfg.test_frames = test_frames or None
    validate(cfg)
    if split == "val" and not cfg.val_subjects:
        raise ValueError(
            f"--split val: the run in {checkpoint} has no validation split (it was trained without --val-subjects)"
        )
    out = Path(out) if out is not None else Path(checkpoint).parent / f"eval_{Path(checkpoint).stem}_{split}"
    check_writable(out)
    rt = dd.Runtime(0, 1, dd.resolve_device(cfg.device), dd.resolve_amp(cfg.amp, dd.resolve_device(cfg.device)))
    model = build_model(cfg, verbose=False)
    model.load_state_dict(ckpt["model"])
    model.to(rt.device)
    datasets = build_datasets(cfg, splits=(split,))
    require_clips(datasets)
    dataset = datasets[split]
    result = evaluate(model, eval_loader(dataset, cfg, 0, 1), split, rt, fusion=cfg.fusion, progress=progress)
    summary = result.summary()
    report = {
        "checkpoint": str(checkpoint),
        "epoch": ckpt["epoch"],
        "split": split,
        **summary,
        "test_frames": cfg.test_frames,
        "fusion": cfg.fusion,
        "class_names": list(CLASS_NAMES),
        "skipped": skipped_entries(datasets),
    }
    write_json_atomic(report, out / "eval.json")
    save_logits(result, out / "logits.npz", ckpt["epoch"])
    if plots:
        from examples.training.plots import plot_confusion

        plot_confusion(summary["confusion"], out / "confusion.png", f"{split} split, epoch {ckpt['epoch']}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python examples/evaluate_nvgesture.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (last.pt, best.pt)")
    p.add_argument(
        "--split",
        required=True,
        choices=("val", "test"),
        help="which split (val needs a run trained with --val-subjects); tune on val, report test",
    )
    p.add_argument("--out", help="output folder (default: <checkpoint folder>/eval_<name>_<split>)")
    p.add_argument("--data-root", help="dataset root, if not where the run found it")
    p.add_argument("--test-frames", type=int, help="clip length T (0 = whole clip; default: the run's)")
    p.add_argument("--device", help="auto, cpu, cuda, ... (default: the run's)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the run's)")
    p.add_argument("--batch-size", type=int, help="clips per batch (default: the run's)")
    p.add_argument("--fusion", choices=("softmax", "logits"), help="fused score (default: the run's)")
    p.add_argument(
        "--skip-bad",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pass over bad clips with a warning (listed in eval.json) (default: the run's)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="no confusion-matrix PNG")
    args = p.parse_args(argv)
    try:
        report = evaluate_checkpoint(
            args.checkpoint,
            args.split,
            args.out,
            data_root=args.data_root,
            test_frames=args.test_frames,
            device=args.device,
            workers=args.workers,
            batch_size=args.batch_size,
            fusion=args.fusion,
            skip_bad=args.skip_bad,
            progress=args.progress,
            plots=args.plots,
        )
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted: nothing written", file=sys.stderr)
        return 130
    except NVGestureDataError as e:
        hint = "" if args.skip_bad else " (--skip-bad passes over bad clips with a warning)"
        print(f"{p.prog}: error: {e}{hint}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # CheckpointError included
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(accuracy_lines(report["split"], report, f", epoch {report['epoch']}"))
    if report["skipped"]:
        print(f"--skip-bad: passed over {len(report['skipped'])} bad clips (eval.json lists them)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
