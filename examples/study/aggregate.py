"""Aggregate paired runs: the paired table, the statistics and a plot.

Reads study folders laid out by :mod:`examples.study.pairs` (``<root>/seed<S>/<arm>/``),
pairs every arm with the baseline arm (``ssa_off``) by seed, and for each arm computes
from the per-clip logits files of one evaluation (``evals/epochNNN_<split>.npz``, the
last epoch's by default) the studied network's top-1 (``--modality``, default the
first: RGB) in both arms of every seed and their difference, the *gain*. Over seeds:
the mean gain, the one-sided paired t-test of ``gain > 0``, its t interval and a
percentile bootstrap interval (seeded, stated number of resamples); the same on the
RGB-hard and the easy clips when the generator's sidecar (``rgb_hard.json``) is found,
and of the difference *hard gain - easy gain*.

Secondary quantities, where the runs recorded them: the other networks' and the fused
top-1, the correlation distance ``sqrt(S) / d`` between the networks' features at each
SSA endpoint on the evaluated clips (arm minus baseline: negative = closer), and from
the training logs, at the branch epoch, every network's training top-1 and the share
of the focal weight on the top 10% of clips, and over the arm's SSA epochs the mean
share of the focal weight on RGB-hard clips.

The clip-level analysis (:mod:`examples.study.clips`): per arm the fixed and broken
clips per seed, the clip bootstrap and the crossed clip x seed bootstrap of the mean gain,
each with its minimum detectable effect (MDE: one-sided 5%, power 0.8; the seed-level
test's MDE uses its t quantiles).

Outputs (``--out``): ``paired.csv`` (one row per seed and arm), ``per_clip.csv`` (one
row per seed, arm and clip: label and prediction), ``per_seed.csv`` (the write-up's per-seed
table, as :mod:`examples.study.recheck` reads it), ``paired.md`` (the tables and the
statistics), ``stats.json`` and ``paired.png`` (per-seed paired lines and the gains'
intervals).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from examples.data.synthetic import HARD_FILE, load_hard_clips
from examples.training.checkpoint import write_json_atomic, write_text_atomic
from examples.training.evaluation import correlation_distance, load_logits

from .clips import clip_level
from .pairs import BASELINE, TRUNK
from .stats import summarize_gains

_SEED_DIR = re.compile(r"^seed(-?\d+)$")
_EVAL_FILE = re.compile(r"^epoch(\d{3})_(.+)\.npz$")


@dataclass
class ArmEval:
    """One arm of one seed: its evaluation of the split and its training log."""

    seed: int
    arm: str
    folder: Path
    logits: dict
    metrics: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return self.final.get("config", {})


def find_runs(roots: Sequence[str | Path]) -> dict[int, dict[str, Path]]:
    """``{seed: {arm: folder}}`` of every ``<root>/seed<S>/<arm>`` run folder (one that has
    a ``last.pt`` or an ``evals`` folder; the trunk is left out). A seed found under two
    roots is an error (the pairs would be ambiguous)."""
    runs: dict[int, dict[str, Path]] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"no study folder {root}")
        for seed_dir in sorted(root.iterdir()):
            match = _SEED_DIR.match(seed_dir.name)
            if not match or not seed_dir.is_dir():
                continue
            seed = int(match.group(1))
            for arm_dir in sorted(seed_dir.iterdir()):
                if arm_dir.name == TRUNK or not arm_dir.is_dir():
                    continue
                if not ((arm_dir / "last.pt").is_file() or (arm_dir / "evals").is_dir()):
                    continue
                arms = runs.setdefault(seed, {})
                if arm_dir.name in arms:
                    raise ValueError(
                        f"seed {seed} arm {arm_dir.name} is in two folders: {arms[arm_dir.name]} and {arm_dir}"
                    )
                arms[arm_dir.name] = arm_dir
    return runs


def eval_file(folder: Path, split: str, epoch: int | str = "last") -> Path:
    """The logits file of ``split`` at ``epoch`` (``"last"``: the latest one) in a run folder."""
    files = {}
    for f in (folder / "evals").glob("epoch*.npz"):
        match = _EVAL_FILE.match(f.name)
        if match and match.group(2) == split:
            files[int(match.group(1))] = f
    if not files:
        raise FileNotFoundError(f"{folder}: no evaluation of the {split} split (evals/epochNNN_{split}.npz)")
    if epoch == "last":
        return files[max(files)]
    if int(epoch) not in files:
        raise FileNotFoundError(f"{folder}: no evaluation of the {split} split at epoch {epoch} (have {sorted(files)})")
    return files[int(epoch)]


def load_arm(seed: int, arm: str, folder: Path, split: str, epoch: int | str = "last") -> ArmEval:
    logits = load_logits(eval_file(folder, split, epoch))
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else []
    final_path = folder / "final_eval.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    return ArmEval(seed, arm, folder, logits, metrics, final)


def _correct(ev: ArmEval, name: str) -> np.ndarray:
    scores = ev.logits["fused"] if name == "fused" else ev.logits["logits"][name]
    return scores.argmax(1) == ev.logits["labels"]


def _row_at(metrics: list[dict], epoch: int) -> dict:
    return next((r for r in metrics if r.get("epoch") == epoch), {})


def seed_row(base: ArmEval, arm: ArmEval, modality: str, hard: dict[str, bool] | None) -> dict:
    """The paired quantities of one seed: ``arm`` against ``base`` (the baseline arm)."""
    if base.logits["paths"] != arm.logits["paths"]:
        raise ValueError(f"seed {base.seed}: {base.folder} and {arm.folder} evaluated different clips")
    if base.logits["epoch"] != arm.logits["epoch"]:
        raise ValueError(
            f"seed {base.seed}: {base.folder} (epoch {base.logits['epoch']}) and {arm.folder} "
            f"(epoch {arm.logits['epoch']}) are evaluations of different epochs"
        )
    row: dict = {
        "seed": base.seed,
        "arm": arm.arm,
        "epoch": int(arm.logits["epoch"]),
        "clips": len(arm.logits["paths"]),
    }
    ok_base, ok_arm = _correct(base, modality), _correct(arm, modality)
    row["base"], row["arm_top1"] = float(ok_base.mean()), float(ok_arm.mean())
    row["gain"] = row["arm_top1"] - row["base"]
    row["fixed"] = int((~ok_base & ok_arm).sum())  # clips the arm gets right and the baseline wrong
    row["broken"] = int((ok_base & ~ok_arm).sum())
    if hard is not None:
        missing = [p for p in arm.logits["paths"] if p not in hard]
        if missing:
            raise ValueError(f"the RGB-hard sidecar does not know clip {missing[0]!r}")
        is_hard = np.array([hard[p] for p in arm.logits["paths"]])
        for name, mask in (("hard", is_hard), ("easy", ~is_hard)):
            row[f"{name}_clips"] = int(mask.sum())
            if mask.any():
                row[f"{name}_base"] = float(ok_base[mask].mean())
                row[f"{name}_arm"] = float(ok_arm[mask].mean())
                row[f"{name}_gain"] = row[f"{name}_arm"] - row[f"{name}_base"]
        if "hard_gain" in row and "easy_gain" in row:
            row["hard_minus_easy_gain"] = row["hard_gain"] - row["easy_gain"]
    others = [m for m in arm.logits["modalities"] if m != modality] + (
        ["fused"] if arm.logits["fused"] is not None else []
    )
    for name in others:
        row[f"{name}_base"] = float(_correct(base, name).mean())
        row[f"{name}_arm"] = float(_correct(arm, name).mean())
    for e, S in arm.logits.get("sqdist", {}).items():
        if e in base.logits.get("sqdist", {}):
            d_arm = correlation_distance(S, arm.logits["positions"][e]).mean()
            d_base = correlation_distance(base.logits["sqdist"][e], base.logits["positions"][e]).mean()
            row[f"corr_dist_{e}_base"], row[f"corr_dist_{e}_arm"] = float(d_base), float(d_arm)
            row[f"corr_dist_{e}_change"] = float(d_arm - d_base)
    # the regime at the branch point (the trunk's last epoch, in every arm's history) and
    # the focal weight while SSA ran
    branched = arm.final.get("branched_from")
    branch = int(branched["epoch"]) if branched else (arm.config.get("ssa_start") or 0) - 1
    at_branch = _row_at(arm.metrics, branch)
    if at_branch:
        row["branch_epoch"] = branch
        for k, v in at_branch.items():
            if k.startswith("train/top1/") or (k.startswith("train/focal/") and k.endswith("top10_share")):
                row[f"at_branch_{k.removeprefix('train/').replace('/', '_')}"] = v
    ssa_rows = [r for r in arm.metrics if r.get("epoch", 0) > branch and r.get("train/ssa")]
    shares = [r.get(f"train/focal/{modality}/hard_share") for r in ssa_rows]
    shares = [s for s in shares if s is not None]
    if shares:
        row["ssa_epochs_focal_hard_share"] = float(np.mean(shares))
    return row


# Quantities tested over seeds (one-sided: > 0): column of the per-seed rows, label
TESTED = (
    ("gain", "overall gain"),
    ("hard_gain", "gain on RGB-hard clips"),
    ("easy_gain", "gain on easy clips"),
    ("hard_minus_easy_gain", "hard gain - easy gain"),
)


def aggregate(
    roots: Sequence[str | Path],
    out: str | Path,
    *,
    split: str = "test",
    epoch: int | str = "last",
    baseline: str = BASELINE,
    arms: Sequence[str] | None = None,
    modality: str | None = None,
    hard_clips: str | Path | None = "auto",
    resamples: int = 10_000,
    bootstrap_seed: int = 0,
    level: float = 0.95,
    plot: bool = True,
    seeds: Sequence[int] | None = None,
) -> dict:
    """Read the runs under ``roots``, write the paired table, statistics and plot to
    ``out``; returns ``stats.json``'s content. ``seeds``: only these seeds (default:
    every seed found).

    ``hard_clips``: the RGB-hard sidecar (a file, a dataset folder, ``"auto"``: the runs'
    ``data_root``, or ``None``: no hard/easy split).
    """
    runs = find_runs(roots)
    if seeds is not None:
        runs = {s: r for s, r in runs.items() if s in set(seeds)}
    if not runs:
        raise ValueError(f"no runs under {', '.join(map(str, roots))} (expected <root>/seed<S>/<arm>/)")
    found_arms = sorted({a for r in runs.values() for a in r if a != baseline})
    arms = list(arms) if arms else found_arms
    incomplete = {
        s: sorted(set([baseline, *arms]) - set(r)) for s, r in runs.items() if not set([baseline, *arms]) <= set(r)
    }
    seeds = sorted(s for s in runs if s not in incomplete)
    if not seeds:
        raise ValueError(f"no seed has both {baseline} and {arms} (incomplete: {incomplete})")
    evals = {s: {a: load_arm(s, a, runs[s][a], split, epoch) for a in [baseline, *arms]} for s in seeds}
    modality = modality or evals[seeds[0]][baseline].logits["modalities"][0]
    hard = _hard_table(hard_clips, evals[seeds[0]][baseline])
    rows = [seed_row(evals[s][baseline], evals[s][a], modality, hard) for a in arms for s in seeds]
    stats: dict = {
        "split": split,
        "epoch": epoch,
        "modality": modality,
        "baseline": baseline,
        "arms": arms,
        "seeds": seeds,
        "incomplete_seeds": incomplete,
        "level": level,
        "resamples": resamples,
        "bootstrap_seed": bootstrap_seed,
        "hard_clips": hard is not None,
        "roots": [str(r) for r in roots],
        "tests": {},
    }
    for a in arms:
        arm_rows = [r for r in rows if r["arm"] == a]
        stats["tests"][a] = {}
        for key, _ in TESTED:
            values = [r[key] for r in arm_rows if key in r]
            if len(values) == len(arm_rows):
                stats["tests"][a][key] = summarize_gains(values, resamples=resamples, seed=bootstrap_seed, level=level)
        changes = sorted(k for k in arm_rows[0] if k.startswith("corr_dist_") and k.endswith("_change"))
        for key in changes:  # one-sided the other way: does the arm bring the networks closer?
            values = [r[key] for r in arm_rows if key in r]
            if len(values) == len(arm_rows):
                closer = summarize_gains([-v for v in values], resamples=resamples, seed=bootstrap_seed, level=level)
                stats["tests"][a][f"{key}_decrease"] = closer
    # the clips as a sample too: per seed and clip, arm minus baseline correctness
    stats["clip_level"] = {}
    for a in arms:
        D = np.stack(
            [_correct(evals[s][a], modality).astype(np.int8) - _correct(evals[s][baseline], modality) for s in seeds]
        )
        stats["clip_level"][a] = clip_level(D, resamples=resamples, seed=bootstrap_seed, level=level)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(_csv(rows), out / "paired.csv")
    write_text_atomic(_csv(per_clip_rows(evals, seeds, [baseline, *arms], modality)), out / "per_clip.csv")
    write_text_atomic(_csv(per_seed_rows(rows, baseline)), out / "per_seed.csv")
    write_text_atomic(markdown(rows, stats), out / "paired.md")
    write_json_atomic({**stats, "rows": rows}, out / "stats.json")
    if plot:
        plot_paired(rows, stats, out / "paired.png")
    return {**stats, "rows": rows}


def per_seed_rows(rows: list[dict], baseline: str = BASELINE) -> list[dict]:
    """One row per seed in the write-up's per-seed table (the columns examples.study.recheck
    reads), rounded as printed: top-1 3 digits, correlation distances 4, the regime at the
    branch and the focal shares 2."""
    table: dict[int, dict] = {}
    for r in rows:
        t = table.setdefault(r["seed"], {"seed": r["seed"], "test_clips": r["clips"]})
        regime = (
            ("rgb_train_top1_at_branch", "at_branch_top1_rgb"),
            ("depth_train_top1_at_branch", "at_branch_top1_depth"),
            ("rgb_focal_top10_share", "at_branch_focal_rgb_top10_share"),
        )
        for key, src in regime:
            if src in r and key not in t:
                t[key] = f"{r[src]:.2f}"
        t[f"top1_{baseline}"] = f"{r['base']:.3f}"
        t[f"top1_{r['arm']}"] = f"{r['arm_top1']:.3f}"
        corr = [k for k in r if k.startswith("corr_dist_") and k.endswith("_base")]
        if len(corr) == 1:  # one SSA endpoint
            t[f"corr_dist_{baseline}"] = f"{r[corr[0]]:.4f}"
            t[f"corr_dist_{r['arm']}"] = f"{r[corr[0].removesuffix('_base') + '_arm']:.4f}"
        if "ssa_epochs_focal_hard_share" in r and r["arm"] == "ssa_on":
            t["focal_on_hard_ssa_on"] = f"{r['ssa_epochs_focal_hard_share']:.2f}"
    arms = [baseline, *dict.fromkeys(r["arm"] for r in rows)]
    order = ["seed", "test_clips", "rgb_train_top1_at_branch", "depth_train_top1_at_branch", "rgb_focal_top10_share"]
    order += [f"top1_{a}" for a in arms] + [f"corr_dist_{a}" for a in arms] + ["focal_on_hard_ssa_on"]
    return [{k: table[s][k] for k in order if k in table[s]} for s in sorted(table)]


def per_clip_rows(evals: dict, seeds: Sequence[int], arms: Sequence[str], modality: str) -> list[dict]:
    """One row per seed, arm and clip: the label and the studied network's prediction
    (what a reader needs to recompute every top-1, gain and clip-level interval)."""
    rows = []
    for s in seeds:
        for a in arms:
            lg = evals[s][a].logits
            pred = lg["logits"][modality].argmax(1)
            rows += [
                {"seed": s, "arm": a, "clip": p, "label": int(y), "pred": int(k)}
                for p, y, k in zip(lg["paths"], lg["labels"], pred)
            ]
    return rows


def _hard_table(hard_clips, ev: ArmEval) -> dict[str, bool] | None:
    if hard_clips is None:
        return None
    if hard_clips == "auto":
        root = ev.config.get("data_root")
        if not root:
            return None
        return load_hard_clips(root)
    table = load_hard_clips(hard_clips)
    if table is None:
        raise FileNotFoundError(f"--hard-clips {hard_clips}: no {HARD_FILE} there")
    return table


def _csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _f(v, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def format_test(t: dict) -> str:
    """One line: mean [bootstrap interval], t interval, one-sided p, counts."""
    pct = round(100 * (t.get("level") or 0.95))
    return (
        f"mean {_f(t['mean'], '+.4f')}, {pct}% bootstrap [{_f(t['bootstrap_low'], '+.4f')}, "
        f"{_f(t['bootstrap_high'], '+.4f')}] ({t['resamples']} resamples, seed {t['bootstrap_seed']}), "
        f"{pct}% t interval [{_f(t['ci_low'], '+.4f')}, {_f(t['ci_high'], '+.4f')}], t = {_f(t['t'], '.3f')} "
        f"(df {t['df']}), one-sided p = {_f(t['p_one_sided'], '.4g')}"
        + (f", MDE {_f(t['mde'], '.4f')}" if "mde" in t else "")
        + f"; {t['positive']} up, {t['zero']} level, "
        f"{t['negative']} down"
    )


def format_clip_level(c: dict) -> str:
    """One line: the clip and the crossed bootstrap intervals with their MDEs, and counts."""
    pct = round(100 * c["clip_bootstrap"]["level"])
    cb, xb = c["clip_bootstrap"], c["crossed_bootstrap"]
    return (
        f"{c['clips']} clips x {c['seeds']} seeds, mean {_f(c['mean'], '+.4f')}; {pct}% clip bootstrap "
        f"[{_f(cb['low'], '+.4f')}, {_f(cb['high'], '+.4f')}] (SE {_f(cb['se'], '.4f')}, MDE "
        f"{_f(cb['mde'], '.4f')}), {pct}% crossed clip x seed bootstrap [{_f(xb['low'], '+.4f')}, "
        f"{_f(xb['high'], '+.4f')}] (SE {_f(xb['se'], '.4f')}, MDE {_f(xb['mde'], '.4f')}); fixed per seed "
        f"{c['fixed_per_seed']}, broken {c['broken_per_seed']}; {c['clips_changed_in_some_seed']} clips changed "
        f"in some seed ({c['clips_fixed_in_some_seed']} fixed, {c['clips_broken_in_some_seed']} broken, "
        f"{c['clips_fixed_and_broken']} both)"
    )


def markdown(rows: list[dict], stats: dict) -> str:
    m, base = stats["modality"], stats["baseline"]
    lines = [
        f"# Paired study: {m} top-1 on the {stats['split']} split, each arm against {base}",
        "",
        f"Seeds: {', '.join(map(str, stats['seeds']))} ({len(stats['seeds'])} pairs)"
        + (f"; left out (incomplete): {stats['incomplete_seeds']}" if stats["incomplete_seeds"] else "")
        + ".",
        "",
    ]
    hard = stats["hard_clips"]
    for a in stats["arms"]:
        arm_rows = [r for r in rows if r["arm"] == a]
        lines += [f"## {a} vs {base}", ""]
        head = ["seed", f"{m} {base}", f"{m} {a}", "gain", "fixed", "broken"]
        if hard:
            head += ["hard gain", "easy gain"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for r in arm_rows:
            cells = [
                str(r["seed"]),
                _f(r["base"]),
                _f(r["arm_top1"]),
                _f(r["gain"], "+.3f"),
                str(r["fixed"]),
                str(r["broken"]),
            ]
            if hard:
                cells += [_f(r.get("hard_gain"), "+.3f"), _f(r.get("easy_gain"), "+.3f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for key, label in TESTED:
            if key in stats["tests"][a]:
                lines.append(f"- {label}: {format_test(stats['tests'][a][key])}")
        if a in stats.get("clip_level", {}):
            lines.append(f"- clip level: {format_clip_level(stats['clip_level'][a])}")
        for key, t in stats["tests"][a].items():
            if key.startswith("corr_dist_"):
                e = key.removeprefix("corr_dist_").removesuffix("_change_decrease")
                lines.append(f"- correlation distance at {e}, decrease (baseline - arm): {format_test(t)}")
        secondary = sorted(
            {
                k
                for r in arm_rows
                for k in r
                if k.startswith(("at_branch_", "ssa_epochs_"))
                or (k.endswith("_arm") and not k.startswith(("hard_", "easy_")))
            }
        )
        if secondary:
            lines += ["", "Secondary (mean over seeds):", ""]
            for k in secondary:
                vals = [r[k] for r in arm_rows if r.get(k) is not None]
                if vals:
                    base_k = k[:-4] + "_base" if k.endswith("_arm") else None
                    base_vals = [r[base_k] for r in arm_rows if base_k and r.get(base_k) is not None]
                    extra = f" (baseline {np.mean(base_vals):.4f})" if base_vals else ""
                    lines.append(f"- {k}: {np.mean(vals):.4f}{extra}")
        lines.append("")
    return "\n".join(lines)


def plot_paired(rows: list[dict], stats: dict, path: Path) -> None:
    """Left: the studied network's top-1 per seed, baseline -> arm (one line per seed).
    Right: each arm's mean gain with its bootstrap interval (overall, hard, easy)."""
    from examples.training.plots import plt

    arms = stats["arms"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for i, a in enumerate(arms):
        for r in (r for r in rows if r["arm"] == a):
            color = "tab:green" if r["gain"] > 0 else "tab:red" if r["gain"] < 0 else "gray"
            ax.plot([2 * i, 2 * i + 1], [r["base"], r["arm_top1"]], color=color, marker="o", alpha=0.7)
    ax.set_xticks(
        [x for i in range(len(arms)) for x in (2 * i, 2 * i + 1)],
        [x for a in arms for x in (stats["baseline"], a)],
        rotation=20,
        fontsize="small",
    )
    ax.set_ylabel(f"{stats['modality']} top-1 ({stats['split']})")
    ax.set_title("per seed: baseline -> arm")
    ax = axes[1]
    labels, means, lows, highs = [], [], [], []
    for a in arms:
        for key, label in TESTED[:3]:
            t = stats["tests"][a].get(key)
            if t:
                labels.append(f"{a}\n{label.replace('gain on ', '').replace(' clips', '')}")
                means.append(t["mean"])
                lows.append(t["mean"] - t["bootstrap_low"])
                highs.append(t["bootstrap_high"] - t["mean"])
    ax.errorbar(range(len(means)), means, yerr=[lows, highs], fmt="o", capsize=4)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize="x-small", rotation=60, ha="right")  # 9 labels: no overlap
    ax.set_ylabel("mean gain")
    ax.set_title(f"mean gain, {round(100 * stats['level'])}% bootstrap interval")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
