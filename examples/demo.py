"""The MTUT demo: a reduced run of the paired study (``make demo``).

Does training the RGB network next to a depth network with the SSA loss lift the RGB
network tested alone? The demo runs the study's design (docs/study/design.md) at a size
a 2-core CPU finishes in minutes, and reports what so few seeds can and cannot say:

1. Writes two synthetic NVGesture-format datasets (once): the *target* (8 classes, half
   the clips RGB-hard: camouflaged hand, a skin-toned distractor, a lighting dip; depth
   unchanged) and a *pretext* dataset of 8 other classes performed by other subjects.
2. Trains the pretext RGB network once on the pretext data, cropped to the hand (a
   stand-in for the recipe's Kinetics weights; ``examples/study/pretext.py``), and loads
   it into both networks.
3. For every seed, a paired run (``examples/study/pairs.py``) on the recipe's
   fit-then-align schedule (``--preset cpu-study`` in 10 epochs, see ``DEMO_RUN``): the RGB
   and depth networks train together with SSA off to the branch epoch, then continue
   twice from that checkpoint, SSA off (its RGB network is the RGB-alone baseline) and
   SSA on, on the same batches.
4. Prints the paired table (RGB top-1 of both arms per seed, the gain, on RGB-hard and
   easy clips), the mean gain with its 95% intervals, and a one-line reading; writes
   ``results.md``, ``results.json`` and the aggregate's plot under ``<out>``.

Finished runs are reused when the demo is run again (``--fresh`` retrains), and an
interrupted run resumes from its last checkpoint.

    python -m examples.demo                  # seeds 0 and 1 (9-10 minutes on a shared 2-core CPU)
    python -m examples.demo --seeds 0 1 2 3  # more pairs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run by path (python examples/demo.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from examples.data import SyntheticConfig, generate  # noqa: E402
from examples.data.synthetic import INFO_FILE  # noqa: E402
from examples.study.aggregate import aggregate, format_test  # noqa: E402
from examples.study.pairs import run_pair  # noqa: E402
from examples.study.pretext import pretext_data_config, train_pretext  # noqa: E402
from examples.training import PRESETS, TrainConfig  # noqa: E402
from examples.training.config import recipe_schedule  # noqa: E402

# The target dataset: 8 classes x 16 clips of 8 subjects (2 test subjects): 96 train /
# 32 test clips, half of them RGB-hard (the study's generator settings, fewer clips).
DEMO_DATA = SyntheticConfig(clips_per_class=16, subjects=8, test_subjects=2, rgb_difficulty=0.5, rgb_hard_p=0.5,
                            seed=0)
# The pretext dataset: 8 other classes (motions and shapes the target does not have), 12
# clips each from subjects 9..14 (80 train clips), no RGB-hard clips: generic footage.
PRETEXT_CLASSES = (3, 4, 7, 8, 12, 16, 17, 19)
PRETEXT_DATA = dataclasses.replace(pretext_data_config(DEMO_DATA, classes=PRETEXT_CLASSES, subjects=6,
                                                       clips_per_class=12, test_subjects=1), rgb_hard_p=0.0)
# The pretext network: the cpu-pretext network in 12 epochs (LR steps after 9 and 11): a
# fast pretext, far weaker than the study's.
PRETEXT_RUN = {**PRESETS["cpu-pretext"], "epochs": 12, "lr_steps": (9, 11)}
# The paired runs: the cpu-study preset (its network and input, SSA at Mixed_3c) on the
# recipe's schedule in 10 epochs instead of 15 (LR steps after 4 and 7, SSA from epoch 9;
# the trunk is SSA-off to epoch 8), evaluated once, at the end.
DEMO_RUN = {**PRESETS["cpu-study"], **recipe_schedule(10), "eval_every": 0}
SEEDS = (0, 1)
ARMS = ("ssa_off", "ssa_on")


def ensure_data(root: Path, config: SyntheticConfig) -> None:
    """Generate the dataset unless ``root`` already holds one made with ``config``."""
    info = root / INFO_FILE
    if info.is_file():
        saved = json.loads(info.read_text())
        wanted = json.loads(json.dumps(dataclasses.asdict(config)))
        if all(saved.get(k) == v for k, v in wanted.items()):
            print(f"data: reusing {root}")
            return
        print(f"data: {root} was generated with other settings; regenerating")
        shutil.rmtree(root)
    print(f"data: writing a synthetic NVGesture-format dataset to {root}")
    summary = generate(root, config, progress=False)
    print(f"data: {summary['train']} train / {summary['test']} test clips ({summary['hard']} RGB-hard) in "
          f"{summary['seconds']:.0f}s")


def pretext_config(out: Path, threads: int | None) -> TrainConfig:
    """The pretext network's run: RGB alone, on the pretext data cropped to the hand boxes
    (the pretext stands for a large labelled corpus and may use them; on whole frames a
    12-epoch pretext stayed at chance, on the crops it reached about 0.55 top-1 on its 8
    classes). The target runs never use hand boxes."""
    data = out / "pretext-data"
    return TrainConfig(data_root=str(data), out=str(out / "pretext"), threads=threads, preset="cpu-pretext",
                       **{**PRETEXT_RUN, "hand_boxes": str(data / "hand_boxes.json"), "progress": False,
                          "plots": False, "tensorboard": False})


def study_config(out: Path, pretrained: Path, threads: int | None, split: str) -> TrainConfig:
    """The paired runs' settings (the SSA-on arm's; ``examples.study.pairs`` derives each arm).
    ``split="val"`` holds out the last training subject as a validation split and never
    builds the test split."""
    held = {"val_subjects": 1, "eval_test": False} if split == "val" else {}
    return TrainConfig(data_root=str(out / "data"), out=str(out / "pairs"), threads=threads, preset="cpu-study",
                       pretrained=(str(pretrained),),
                       **{**DEMO_RUN, "progress": False, "plots": False, "tensorboard": False, **held})


# The study's regime criterion (R1): the RGB network fits its training clips when SSA starts.
REGIME_RGB_TOP1 = 0.95


def reading(test: dict, seeds: int, rgb_at_branch: float | None = None) -> str:
    """The one-line reading of the mean gain's test (``summarize_gains``) over ``seeds``
    pairs; ``rgb_at_branch``: the RGB training top-1 at the branch epoch (mean over
    seeds), reported when it falls short of the study's regime."""
    low, high = test["bootstrap_low"], test["bootstrap_high"]
    interval = f"mean gain {test['mean']:+.3f}, 95% bootstrap [{low:+.3f}, {high:+.3f}]"
    regime = ""
    if rgb_at_branch is not None and rgb_at_branch < REGIME_RGB_TOP1:
        regime = (f"; nor is the paper's regime reached here (RGB training top-1 {rgb_at_branch:.2f} when SSA "
                  f"starts, the study asks >= {REGIME_RGB_TOP1})")
    if seeds < 10:
        return (f"Reading: {seeds} paired seed{'s' if seeds != 1 else ''} cannot tell whether MTUT lifts the RGB "
                f"network ({interval}){regime}; that takes the powered, preregistered study (>= 10 paired seeds), "
                "whose answer is in docs/study/results.md.")
    if low > 0:
        verdict = "the RGB network gained"
    elif high < 0:
        verdict = "the RGB network lost"
    else:
        verdict = "no gain or loss is detectable (the interval includes 0)"
    return (f"Reading: over {seeds} paired seeds {verdict} ({interval}){regime}; the preregistered study's "
            "answer: docs/study/results.md.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="demo folder (data and runs); default runs/demo")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                   help=f"training seeds, one pair each (default {' '.join(map(str, SEEDS))})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine torch's 2 OpenMP threads ran a "
                        "training step 20-50x slower whenever another job was busy)")
    p.add_argument("--fresh", action="store_true", help="retrain instead of reusing finished runs")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="the split the pairs are compared on: test (the demo's test subjects) or val (the last "
                        "training subject held out; the test split is never loaded)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has repeats: {args.seeds}")

    started = time.perf_counter()
    out = Path(args.out)
    pairs = out / ("pairs" if args.split == "test" else "pairs-val")
    if args.fresh:
        for folder in (out / "pretext", pairs):
            if folder.exists():
                shutil.rmtree(folder)
    ensure_data(out / "data", DEMO_DATA)
    ensure_data(out / "pretext-data", PRETEXT_DATA)
    phases: dict[str, float] = {"data": time.perf_counter() - started}

    t0 = time.perf_counter()
    try:
        weights = train_pretext(pretext_config(out, args.threads), out / "data")
    except ValueError as e:
        p.exit(2, f"{p.prog}: error: {e}\n(rerun with --fresh to start the pretext network over)\n")
    phases["pretext"] = time.perf_counter() - t0

    base = dataclasses.replace(study_config(out, weights, args.threads, args.split), out=str(pairs))
    for seed in args.seeds:
        t0 = time.perf_counter()
        try:
            run_pair(base, seed, pairs, arms=ARMS)
        except ValueError as e:
            p.exit(2, f"{p.prog}: error: {e}\n(rerun with --fresh to start the pairs over)\n")
        phases[f"seed {seed}"] = time.perf_counter() - t0

    stats = aggregate([pairs], out / f"aggregate_{args.split}", split=args.split, arms=["ssa_on"],
                      resamples=10_000, bootstrap_seed=0, plot=True, seeds=args.seeds)
    table = (out / f"aggregate_{args.split}" / "paired.md").read_text()
    gain = stats["tests"]["ssa_on"]["gain"]
    at_branch = [r["at_branch_top1_rgb"] for r in stats["rows"] if r.get("at_branch_top1_rgb") is not None]
    line = reading(gain, len(stats["seeds"]), sum(at_branch) / len(at_branch) if at_branch else None)
    total = time.perf_counter() - started
    print("\n" + table)
    print(f"RGB {args.split} top-1 gain, SSA on vs off: {format_test(gain)}")
    print("\n" + line)
    print(f"\nwall time {total / 60:.1f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in phases.items())}; "
          f"{os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()})")
    (out / "results.md").write_text(table + "\n" + line + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"split": args.split, "seeds": stats["seeds"], "gain": gain,
                                                  "reading": line, "rows": stats["rows"], "seconds": total,
                                                  "phases": phases}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out}/aggregate_{args.split}/ (paired.png); "
          f"runs under {pairs}/seed*/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
