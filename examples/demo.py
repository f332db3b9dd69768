"""The MTUT demo (``make demo``): what the SSA op does, in a few minutes on a CPU.

1. **The op against mmpose's code at I3D shapes.** One forward + backward of the SSA
   loss of two networks' features at I3D's Mixed_4f (C = 832, 16x14x14 positions, 3
   clips, float32), by mmpose's code (it builds every d x d correlation matrix) and by
   ``mtut_ops.ssa_loss``: time, peak memory, and that both give the same loss. At
   Mixed_3c (C = 480, 32x28x28) mmpose's matrices alone would need tens of GiB: the demo
   says how much and does not run it.
2. **SSA acting in training.** The same RGB + depth pair trained twice on synthetic
   NVGesture-format data, from the same initialization on the same batches: SSA off, and
   SSA on from epoch ``SSA_START``. Per epoch, the test clips' correlation distance
   between the two networks' features at the SSA endpoint (plotted), and at the end how
   many test clips the RGB network classifies differently.
3. **The registered study's answer**, quoted from ``docs/study/results.md``.

Outputs under ``--out`` (default ``runs/demo``): ``results.json`` (valid JSON, no NaN),
``results.md``, ``corr_distance.png`` and the two runs' folders.

    python -m examples.demo
    python -m examples.demo --skip-op      # the training part only
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run by path (python examples/demo.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from examples.data import SyntheticConfig, generate  # noqa: E402
from examples.data.synthetic import INFO_FILE  # noqa: E402
from examples.training import TrainConfig, train  # noqa: E402
from examples.training.evaluation import load_logits  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY_RESULTS = REPO / "docs" / "study" / "results.md"

# part 1: I3D shapes at a 64x224x224 input (bench/bench_ssa.py's NAMED shapes); 3 clips
# keep mmpose's two calls within a minute on a 2-core CPU (bench/results/cpu-2026-12-01.md has 6)
OP_CLIPS = 3
RECIPE_CLIPS = 6  # the recipe's batch, for what mmpose's code would need at Mixed_3c
MIXED_4F = (832, (16, 14, 14))
MIXED_3C = (480, (32, 28, 28))

# part 2: 4 classes x 8 clips of 4 subjects (subject 4 is the test subject): 24 train / 8 test clips
DATA = SyntheticConfig(
    classes=(1, 2, 5, 6), clips_per_class=8, subjects=4, test_subjects=1, frames=16, width=64, height=48, seed=0
)
SSA_START = 3
# An eighth-width I3D on 8 frames at 48x48, SSA at Mixed_3c (4x6x6 = 144 positions). The
# focal weight is "constant" (both networks pulled toward each other on every clip) and
# lambda 10: in trials here the paper's "exp" weight at lambda 0.1 and 1 left the test
# clips' distance 4% and 27% *higher* after 4 SSA epochs, "constant" at lambda 3 and 10
# 8% and 25% lower after 6 (the recipe's 5e-3 is for the full network's Mixed_5c).
RUN = dict(
    modalities=("rgb", "depth"),
    epochs=8,
    batch_size=4,
    lr=1e-2,
    lr_steps=(),
    ssa_start=SSA_START,
    lambda_=10.0,
    focal="constant",
    ssa_endpoints=("Mixed_3c",),
    width=0.125,
    frames=8,
    test_frames=8,
    size=48,
    resize=52,
    fps=None,
    cache=True,
    workers=0,
    eval_every=1,
    watch_test=True,
    device="cpu",
    progress=False,
    plots=False,
    tensorboard=False,
    preset="demo",
)
ARMS = ("ssa_off", "ssa_on")


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def op_comparison(clips: int = OP_CLIPS, log=print) -> dict:
    """Part 1: mmpose's SSA code and ``mtut_ops.ssa_loss`` at Mixed_4f, one forward +
    backward each after a warm-up call; what mmpose's code would hold at Mixed_3c."""
    import mtut_ops
    from bench.baselines import mmpose_ssa_loss
    from bench.bench_ssa import Meter
    from bench.costs import Problem, naive_bytes

    C, spatial = MIXED_4F
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(clips, C, *spatial, generator=g) for _ in range(2)]
    ce = torch.rand(2, clips, generator=g) * 3
    impls = {
        "mmpose": lambda xs, c: mmpose_ssa_loss(xs, c, beta=2.0, lambda_=5e-3, cap=10.0),
        "mtut_ops": lambda xs, c: mtut_ops.ssa_loss(xs, c, beta=2.0, lambda_=5e-3, pair_cap=10.0),
    }
    meter = Meter(torch.device("cpu"))
    out: dict = {
        "shape": f"Mixed_4f: {clips} clips x C={C} x {'x'.join(map(str, spatial))} "
        f"(d={math.prod(spatial)}), 2 networks, float32",
        "threads": torch.get_num_threads(),
    }
    for name, fn in impls.items():
        log(f"[op] {name} at Mixed_4f: warm-up, then one timed forward + backward ...")
        meter.fwd_bwd(fn, feats, ce)
        result = {}

        def timed():
            fwd, bwd, loss = meter.fwd_bwd(fn, feats, ce)
            result.update(seconds=fwd + bwd, loss=float(loss.detach()))

        result["peak_mib"] = _mib(meter.peak_extra_bytes(timed))
        out[name] = result
        log(f"[op] {name}: {result['seconds']:.2f} s, peak memory +{result['peak_mib']:.0f} MiB")
    out["speedup"] = out["mmpose"]["seconds"] / out["mtut_ops"]["seconds"]
    out["memory_ratio"] = out["mmpose"]["peak_mib"] / max(out["mtut_ops"]["peak_mib"], 0.1)
    out["loss_rel_diff"] = abs(out["mmpose"]["loss"] - out["mtut_ops"]["loss"]) / max(abs(out["mmpose"]["loss"]), 1e-30)
    C3, s3 = MIXED_3C
    need = naive_bytes(Problem(RECIPE_CLIPS, (C3, C3), math.prod(s3)), 4)
    out["mixed3c_naive_gib"] = round(need / 2**30, 1)
    out["mixed3c_shape"] = (
        f"Mixed_3c: {RECIPE_CLIPS} clips (the recipe's batch) x C={C3} x {'x'.join(map(str, s3))} (d={math.prod(s3)})"
    )
    return out


def ensure_data(root: Path) -> None:
    """The demo's dataset, generated unless ``root`` holds one made with :data:`DATA`."""
    import dataclasses

    info = root / INFO_FILE
    wanted = json.loads(json.dumps(dataclasses.asdict(DATA)))
    if info.is_file() and all(json.loads(info.read_text()).get(k) == v for k, v in wanted.items()):
        return
    if root.exists():
        shutil.rmtree(root)
    generate(root, DATA, progress=False)


def training_pair(out: Path, seed: int = 0, log=print, run: dict | None = None) -> dict:
    """Part 2: the pair of runs (SSA off, SSA on) and what differs between them."""
    run = RUN if run is None else run
    ensure_data(out / "data")
    finals, rows = {}, {}
    for arm in ARMS:
        folder = out / arm
        if (folder / "final_eval.json").is_file():
            log(f"[train] {arm}: reusing {folder}")
        else:
            if folder.exists():
                shutil.rmtree(folder)
            log(
                f"[train] {arm}: {run['epochs']} epochs"
                + (f", SSA from epoch {run['ssa_start']}" if arm == "ssa_on" else ", SSA off")
                + " ..."
            )
            train(TrainConfig(data_root=str(out / "data"), out=str(folder), seed=seed, ssa=arm == "ssa_on", **run))
        finals[arm] = json.loads((folder / "final_eval.json").read_text())
        rows[arm] = json.loads((folder / "metrics.json").read_text())
    endpoint = run["ssa_endpoints"][0]
    key = f"test/corr_dist/{endpoint}"
    curves = {arm: [r[key] for r in rows[arm]] for arm in ARMS}
    epochs = [r["epoch"] for r in rows["ssa_on"]]
    last = max(epochs)
    preds = {
        arm: load_logits(out / arm / "evals" / f"epoch{last:03d}_test.npz")["logits"]["rgb"].argmax(1) for arm in ARMS
    }
    test = {arm: finals[arm]["splits"]["test"] for arm in ARMS}
    before = [e for e in epochs if e < run["ssa_start"]]
    return {
        "endpoint": endpoint,
        "epochs": epochs,
        "ssa_start": run["ssa_start"],
        "lambda": run["lambda_"],
        "focal": run.get("focal", "exp"),
        "corr_distance": curves,
        "identical_before_ssa": all(curves["ssa_off"][i] == curves["ssa_on"][i] for i in range(len(before))),
        "final_corr_distance_change": curves["ssa_on"][-1] - curves["ssa_off"][-1],
        "final_corr_distance_rel_change": (curves["ssa_on"][-1] - curves["ssa_off"][-1]) / curves["ssa_off"][-1],
        "rgb_predictions_differ": int((preds["ssa_off"] != preds["ssa_on"]).sum()),
        "test_clips": int(len(preds["ssa_on"])),
        "test_top1": {arm: test[arm]["top1"] for arm in ARMS},
    }


def plot_curves(pair: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm, style in zip(ARMS, ("o-", "s-")):
        ax.plot(pair["epochs"], pair["corr_distance"][arm], style, label=arm.replace("_", " "))
    ax.axvline(pair["ssa_start"] - 0.5, color="gray", ls=":", label=f"SSA starts (epoch {pair['ssa_start']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"RGB-depth correlation distance\nat {pair['endpoint']} (test clips, mean)")
    ax.set_title("the same pair trained with SSA off and on")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_answer(path: Path = STUDY_RESULTS) -> str | None:
    """The first paragraph of the study's results (its answer), or ``None`` without them."""
    if not path.is_file():
        return None
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
    answer = next((p for p in paragraphs if p.startswith("**Answer")), None)
    return " ".join(answer.split()) if answer else None


def reading(pair: dict) -> str:
    """What part 2 shows, and what it does not."""
    change = pair["final_corr_distance_rel_change"]
    verdict = (
        "SSA acts: it aligns the networks' features"
        if change < -0.05
        else "SSA moved the networks' features apart here"
        if change > 0.05
        else "SSA barely moved the networks' features here"
    )
    return (
        f"{verdict} (after {pair['epochs'][-1] - pair['ssa_start'] + 1} epochs with SSA the test clips' "
        f"correlation distance is {abs(change):.0%} {'lower' if change < 0 else 'higher'} than without it; the "
        f"two runs are {'identical' if pair['identical_before_ssa'] else 'not identical'} before SSA starts), "
        f"and the RGB network classifies {pair['rgb_predictions_differ']} of {pair['test_clips']} test clips "
        f"differently. That is the loss acting on the features, not a result about accuracy: networks this small "
        f"after {pair['epochs'][-1]} epochs are far from trained, and {pair['test_clips']} clips of one pair cannot "
        "tell a lift; whether the alignment lifts the RGB network is the registered study's question (part 3)."
    )


def _json_safe(obj):
    """``obj`` with non-finite floats as ``None`` (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def report(op: dict | None, pair: dict, answer: str | None) -> str:
    lines = ["# MTUT demo", ""]
    if op is not None:
        lines += [
            "## 1. The SSA op against mmpose's code",
            "",
            f"{op['shape']}, forward + backward, {op['threads']} torch thread(s):",
            "",
            "| code | time | peak memory added | loss |",
            "|---|---|---|---|",
        ]
        for name, label in (("mmpose", "mmpose (every d x d matrix)"), ("mtut_ops", "mtut_ops.ssa_loss")):
            r = op[name]
            lines.append(f"| {label} | {r['seconds']:.2f} s | {r['peak_mib']:.0f} MiB | {r['loss']:.6g} |")
        lines += [
            "",
            f"mtut_ops: {op['speedup']:.1f}x faster, {op['memory_ratio']:.1f}x less memory, the same loss "
            f"(relative difference {op['loss_rel_diff']:.1e}). {op['mixed3c_shape']}: mmpose's matrices "
            f"alone would need {op['mixed3c_naive_gib']:.0f} GiB (not run); mtut_ops never builds them "
            "(bench/results/cpu-2026-12-01.md: 14.6 s and 586 MB there on this CPU).",
            "",
        ]
    lines += [
        "## 2. SSA acting in training",
        "",
        f"The same RGB + depth pair (seed 0, same batches), SSA off and SSA on from epoch {pair['ssa_start']} "
        f"(lambda {pair['lambda']:g}, focal weight {pair['focal']}, at {pair['endpoint']}); test clips' "
        "correlation distance per epoch "
        "(corr_distance.png):",
        "",
        "| epoch | " + " | ".join(str(e) for e in pair["epochs"]) + " |",
        "|---|" + "---|" * len(pair["epochs"]),
    ]
    for arm in ARMS:
        lines.append(
            f"| {arm.replace('_', ' ')} | " + " | ".join(f"{v:.4f}" for v in pair["corr_distance"][arm]) + " |"
        )
    tops = ", ".join(f"{arm.replace('_', ' ')} {pair['test_top1'][arm]['rgb']:.3f}" for arm in ARMS)
    lines += [
        "",
        f"RGB test top-1: {tops} ({pair['test_clips']} clips).",
        "",
        "Reading: " + reading(pair),
        "",
        "## 3. The registered study's answer",
        "",
        answer + " (docs/study/results.md)"
        if answer
        else "No study results are committed (docs/study/results.md is missing): nothing to quote.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="demo folder (data, runs, results); default runs/demo")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine torch's 2 OpenMP threads ran a "
        "training step 20-50x slower whenever another job was busy)",
    )
    p.add_argument("--skip-op", action="store_true", help="leave out part 1 (the op against mmpose's code)")
    p.add_argument("--fresh", action="store_true", help="retrain instead of reusing finished runs")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.fresh and out.exists():
        for arm in ARMS:
            shutil.rmtree(out / arm, ignore_errors=True)
    started = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
        op = None if args.skip_op else op_comparison()
        pair = training_pair(out)
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted; run it again to continue (finished runs are reused)", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    plot_curves(pair, out / "corr_distance.png")
    answer = study_answer()
    text = report(op, pair, answer)
    seconds = time.perf_counter() - started
    print(
        "\n" + text + f"\nwall time {seconds / 60:.1f} min; wrote {out / 'results.md'}, {out / 'results.json'}, "
        f"{out / 'corr_distance.png'}"
    )
    (out / "results.md").write_text(text, encoding="utf-8")
    results = _json_safe(
        {"op": op, "training": pair, "reading": reading(pair), "study_answer": answer, "seconds": seconds}
    )
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
