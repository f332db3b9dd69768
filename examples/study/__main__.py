"""Command line of the paired study: ``python -m examples.study {pretext,pair,aggregate,recheck} ...``.

    # the pretext network (RGB, other classes and subjects than the target's), trained once
    python -m examples.study pretext --data-root runs/study/pretext-data --target-root runs/study/data \
        --out runs/study/pretext --preset cpu-pretext

    # one SSA-off trunk per seed to the branch epoch, then the SSA-on and SSA-off arms
    python -m examples.study pair --data-root runs/study/data --out runs/study/val --preset cpu-study \\
        --pretrained runs/study/pretext/pretext_rgb.pth --val-subjects 2 --no-eval-test --seeds 0 1 2 \\
        --arms ssa_off ssa_on
    # the paired table, the statistics and the plot
    python -m examples.study aggregate runs/study/val --split val --out runs/study/val/aggregate
    # a reader's recheck: every number of the write-up from the committed outputs
    python -m examples.study recheck docs/study

``pair`` takes every option of ``examples/train_nvgesture.py`` (they describe the
SSA-on arm; ``--ssa-start`` is its first SSA epoch) plus ``--seeds``, ``--arms`` and
``--branch-epoch`` (default: the epoch before ``--ssa-start``). Re-running the same
command continues an interrupted study. Evaluate a checkpoint alone with
``examples/evaluate_nvgesture.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.study.aggregate import aggregate, format_clip_level, format_test  # noqa: E402
from examples.study.pairs import ARMS, BASELINE, DEFAULT_ARMS, run_pair  # noqa: E402
from examples.study.pretext import train_pretext  # noqa: E402
from examples.training.config import build_parser, config_from_args  # noqa: E402

COMMANDS = ("pretext", "pair", "aggregate", "recheck")


def pair_parser() -> argparse.ArgumentParser:
    p = build_parser()
    p.prog = "python -m examples.study pair"
    p.description = (
        "Paired runs: per seed, train the joint model with SSA off to the branch epoch (seed<S>/trunk), "
        "then continue every arm from that checkpoint with the same data order and random streams "
        "(seed<S>/<arm>). The training options describe the SSA-on arm."
    )
    g = p.add_argument_group("paired study")
    g.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds (one pair each)")
    g.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=list(DEFAULT_ARMS),
        help="arms continued from each trunk (ssa_off is the baseline; ssa_shuffled, ssa_constant and "
        "ssa_indicator are controls)",
    )
    g.add_argument("--branch-epoch", type=int, help="last epoch of the SSA-off trunk (default --ssa-start - 1)")
    return p


def pair_main(argv: list[str]) -> int:
    parser = pair_parser()
    args = parser.parse_args(argv)
    if args.seed is not None:
        parser.error("--seed: a paired study takes --seeds")
    if args.resume:
        parser.error("--resume: a paired study always continues what it finds in --out")
    args.seed = args.seeds[0]
    try:
        base = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    started = time.perf_counter()
    try:
        for seed in args.seeds:
            summary = run_pair(base, seed, base.out, branch_epoch=args.branch_epoch, arms=args.arms)
            took = ", ".join(f"{k} {v / 60:.1f} min" for k, v in summary["seconds"].items())
            print(f"seed {seed}: branch epoch {summary['branch_epoch']}; this call: {took or 'nothing to do'}")
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"paired study: {len(args.seeds)} seed(s) in {(time.perf_counter() - started) / 60:.1f} min under {base.out}")
    return 0


def pretext_parser() -> argparse.ArgumentParser:
    p = build_parser()
    p.prog = "python -m examples.study pretext"
    p.description = (
        "Train the study's pretext network once: an RGB I3D on a dataset that shares no class and no "
        "subject with the target dataset (checked from both list files), exported as "
        "OUT/pretext_rgb.pth for --pretrained (both networks of every target run). Re-running reuses "
        "or resumes it."
    )
    p.add_argument(
        "--target-root",
        required=True,
        help="the target dataset (its list files' labels and subjects are read, never its clips)",
    )
    return p


def pretext_main(argv: list[str]) -> int:
    parser = pretext_parser()
    args = parser.parse_args(argv)
    if args.resume:
        parser.error("--resume: the pretext command always continues what it finds in --out")
    if args.modalities is None:
        args.modalities = ["rgb"]
    try:
        cfg = config_from_args(args)
        started = time.perf_counter()
        train_pretext(cfg, args.target_root)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"pretext: {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def aggregate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.study aggregate",
        description="Read paired runs (ROOT/seed<S>/<arm>/), write the paired table "
        "(paired.csv, per_clip.csv, paired.md), the statistics, seed- and "
        "clip-level (stats.json) and a plot (paired.png).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("roots", nargs="+", help="study folders (each holding seed<S>/<arm>/ run folders)")
    p.add_argument("--out", help="output folder (default: FIRST_ROOT/aggregate_<split>)")
    p.add_argument("--split", default="test", help="which evaluation: val or test")
    p.add_argument("--epoch", default="last", help="evaluation epoch (last = each run's latest)")
    p.add_argument("--baseline", default=BASELINE, help="the arm every other arm is paired with")
    p.add_argument("--arms", nargs="+", help="arms to compare (default: every arm found)")
    p.add_argument("--modality", help="the network whose top-1 is compared (default: the first, rgb)")
    p.add_argument(
        "--hard-clips",
        default="auto",
        help="RGB-hard sidecar (rgb_hard.json or its dataset folder); auto: the runs' data root; "
        "none: no hard/easy split",
    )
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap's generator")
    p.add_argument("--level", type=float, default=0.95, help="interval level")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="no paired.png")
    return p


def aggregate_main(argv: list[str]) -> int:
    parser = aggregate_parser()
    args = parser.parse_args(argv)
    if not 0 < args.level < 1:
        parser.error(f"--level must be in (0, 1), got {args.level}")
    if args.resamples < 1:
        parser.error(f"--resamples must be >= 1, got {args.resamples}")
    epoch = args.epoch if args.epoch == "last" else int(args.epoch)
    out = Path(args.out) if args.out else Path(args.roots[0]) / f"aggregate_{args.split}"
    hard = None if args.hard_clips == "none" else args.hard_clips
    try:
        stats = aggregate(
            args.roots,
            out,
            split=args.split,
            epoch=epoch,
            baseline=args.baseline,
            arms=args.arms,
            modality=args.modality,
            hard_clips=hard,
            resamples=args.resamples,
            bootstrap_seed=args.bootstrap_seed,
            level=args.level,
            plot=args.plot,
        )
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print((out / "paired.md").read_text())
    for arm, tests in stats["tests"].items():
        if "gain" in tests:
            print(
                f"{arm} vs {stats['baseline']}, {stats['modality']} {stats['split']} top-1 gain: "
                f"{format_test(tests['gain'])}"
            )
    for arm, c in stats["clip_level"].items():
        print(f"{arm} vs {stats['baseline']}, clip level: {format_clip_level(c)}")
    print(f"wrote {out}/paired.csv, per_clip.csv, paired.md, stats.json" + (", paired.png" if args.plot else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(
            __doc__.strip() + f"\n\ncommands: {', '.join(COMMANDS)} (COMMAND --help for its options)",
            file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout,
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "recheck":
        from examples.study.recheck import main as recheck_main

        return recheck_main(argv[1:])
    return {"pretext": pretext_main, "pair": pair_main, "aggregate": aggregate_main}[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
