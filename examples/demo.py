"""The MTUT demo: does multimodal training lift the RGB network? (``make demo``)

1. Writes the synthetic NVGesture-format dataset to ``<out>/data`` (once).
2. For every seed, trains with the same budget (the ``cpu-small`` preset: same epochs,
   batches, learning-rate schedule, RGB network):
   * the unimodal baseline: the RGB I3D alone;
   * MTUT: an RGB and a depth I3D together, with the SSA loss from the start epoch.
3. Evaluates both RGB networks on the RGB test clips alone (MTUT's depth network is
   not used for its RGB score), prints a table and writes ``results.json``,
   ``results.md`` and ``demo.png``; every run folder also has its own metrics and plots.

Finished runs are reused when the demo is run again (``--fresh`` retrains), and an
interrupted run resumes from its last checkpoint.

    python -m examples.demo                  # seed 0, about 10 minutes on a 2-core CPU
    python -m examples.demo --seeds 0 1 2    # repeat over seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run by path (python examples/demo.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from examples.data import SyntheticConfig, generate
from examples.data.synthetic import INFO_FILE
from examples.training import PRESETS, TrainConfig, train
from examples.training.checkpoint import CheckpointError, load_checkpoint
from examples.training.engine import check_resumable

# The demo's dataset, fixed across training seeds: the generator's defaults (8 classes,
# 168 train / 72 test clips, 160x120, RGB clutter at the default difficulty, 0.5).
RGB_DIFFICULTY = SyntheticConfig().rgb_difficulty
RUNS = {"rgb": ("rgb",), "mtut": ("rgb", "depth")}


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
    print(f"data: writing the synthetic NVGesture-format dataset to {root}")
    summary = generate(root, config)
    print(f"data: {summary['train']} train / {summary['test']} test clips in {summary['seconds']:.0f}s")


def run_config(data: Path, out: Path, modalities: tuple[str, ...], seed: int, threads: int | None) -> TrainConfig:
    """The cpu-small preset, with the synthetic hand boxes (crop to the hand, as mmpose's
    'with hand boxes' setting does)."""
    return TrainConfig(data_root=str(data), out=str(out), modalities=modalities, seed=seed, threads=threads,
                       hand_boxes=str(data / "hand_boxes.json"), preset="cpu-small", **PRESETS["cpu-small"])


def run_once(cfg: TrainConfig) -> dict:
    """Train one run, or reuse it when finished, or resume it when interrupted; a run
    folder left by other settings is replaced."""
    out = Path(cfg.out)
    checkpoint = out / "last.pt"
    if checkpoint.is_file():
        try:
            ckpt = load_checkpoint(checkpoint)
            check_resumable(ckpt["config"], cfg)
        except (CheckpointError, ValueError) as e:
            print(f"{out} holds a run this demo cannot continue ({str(e).splitlines()[0]}); starting over")
            shutil.rmtree(out)
        else:
            final_path = out / "final_eval.json"
            if ckpt["epoch"] == cfg.epochs and final_path.is_file():
                print(f"reusing finished run {out}")
                return json.loads(final_path.read_text())
    return train(cfg, resume=checkpoint.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="demo folder (data and runs); default runs/demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--fresh", action="store_true", help="retrain instead of reusing finished runs")
    p.add_argument("--rgb-difficulty", type=float, default=RGB_DIFFICULTY,
                   help=f"synthetic RGB clutter, 0..1 (default {RGB_DIFFICULTY}, the generator's)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.rgb_difficulty <= 1:
        p.error(f"--rgb-difficulty must be in [0, 1], got {args.rgb_difficulty}")

    started = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    ensure_data(data, SyntheticConfig(seed=0, rgb_difficulty=args.rgb_difficulty))
    results: list[dict] = []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        for name, modalities in RUNS.items():
            run_dir = out / f"seed{seed}" / name
            if args.fresh and run_dir.exists():
                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            print(f"\n== seed {seed}: {'+'.join(modalities)} ({'unimodal baseline' if name == 'rgb' else 'MTUT'})")
            final = run_once(run_config(data, run_dir, modalities, seed, args.threads))
            row[name] = final["splits"]["test"]["top1"]
            row[f"{name}_seconds"] = time.perf_counter() - t0
        results.append(row)
    total = time.perf_counter() - started

    table = format_table(results)
    print("\n" + table)
    print(f"\nwall time {total / 60:.1f} min ({os.cpu_count()} CPUs visible, torch threads "
          f"{torch.get_num_threads()})")
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"runs": results, "seconds": total}, indent=1) + "\n",
                                      encoding="utf-8")
    plot_results(results, out / "demo.png")
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'demo.png'} and per-run plots "
          f"under {out}/seed*/")
    return 0


def format_table(results: list[dict]) -> str:
    """A markdown table: RGB test top-1 alone and with MTUT, per seed, then the mean."""
    lines = ["| seed | RGB alone | RGB with MTUT (trained with depth) | gain | MTUT depth | MTUT fused |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        gain = r["mtut"]["rgb"] - r["rgb"]["rgb"]
        lines.append(f"| {r['seed']} | {r['rgb']['rgb']:.3f} | {r['mtut']['rgb']:.3f} | {gain:+.3f} | "
                     f"{r['mtut']['depth']:.3f} | {r['mtut']['fused']:.3f} |")
    if len(results) > 1:
        def mean_std(xs: list[float]) -> str:
            return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"

        alone = [r["rgb"]["rgb"] for r in results]
        mtut = [r["mtut"]["rgb"] for r in results]
        gains = [b - a for a, b in zip(alone, mtut)]
        lines.append(f"| mean ± std | {mean_std(alone)} | {mean_std(mtut)} | {statistics.mean(gains):+.3f} | "
                     f"{mean_std([r['mtut']['depth'] for r in results])} | "
                     f"{mean_std([r['mtut']['fused'] for r in results])} |")
        wins = sum(g > 0 for g in gains)
        lines.append(f"\nMTUT lifted the RGB network's test top-1 on {wins} of {len(gains)} seeds.")
    return "\n".join(lines)


def plot_results(results: list[dict], path: Path) -> None:
    """Bars: RGB test top-1 alone vs with MTUT, per seed."""
    from examples.training.plots import plt  # Agg backend, set up there

    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(results), 3.6))
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], [r["rgb"]["rgb"] for r in results], 0.4, label="RGB alone")
    ax.bar([x + 0.2 for x in xs], [r["mtut"]["rgb"] for r in results], 0.4, label="RGB with MTUT")
    ax.set_xticks(list(xs), [f"seed {r['seed']}" for r in results])
    ax.set_ylabel("RGB test top-1")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("RGB network tested alone")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
