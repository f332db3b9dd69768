"""A reader's recheck of a study's write-up from its committed outputs (seconds, no training).

    python -m examples.study recheck docs/study

reads from the folder:

* ``per_seed.csv``: one row per seed, the write-up's per-seed table: ``test_clips`` and
  ``top1_<arm>`` (the studied network's test top-1 of each arm, ``ssa_off`` the
  baseline); optional ``corr_dist_<arm>``, ``rgb_train_top1_at_branch``,
  ``depth_train_top1_at_branch``, ``rgb_focal_top10_share``, ``focal_on_hard_<arm>``.
* ``per_clip.csv`` (optional; ``aggregate`` writes it): one row per seed, arm and clip
  with ``label`` and ``pred``. Where present, every top-1 of ``per_seed.csv`` must be
  its mean to the table's printed digits, and the clip-level numbers are recomputed.
* ``claims.csv``: ``quantity,printed,tolerance,source``: every number the write-up
  prints, the quantity it is (see :func:`recompute`), and a tolerance where the table's
  rounding leaves one (0 otherwise: the recomputed value, printed with the claim's
  digits, sign and %, must be the printed text).
* the write-up (``--doc``, default ``results.md``): every printed claim must occur in it.

Per-seed gains are recomputed in clips, ``round(top1 * test_clips)``, which the table's 3
digits determine while ``test_clips < 1000``; the statistics are those of ``aggregate``
(:mod:`examples.study.stats`, :mod:`examples.study.clips`), with its default bootstrap
(10,000 resamples, seed 0).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from .clips import clip_level, worst_case_matrix
from .stats import summarize_gains

BASELINE = "ssa_off"
_WORST = re.compile(r"^worst_case(\d+)\.(\w+)\.clip_(low|high|se|mde)$")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _test_summary(prefix: str, x: np.ndarray, out: dict) -> None:
    s = summarize_gains(x)
    out |= {
        f"{prefix}.mean": s["mean"],
        f"{prefix}.boot_low": s["bootstrap_low"],
        f"{prefix}.boot_high": s["bootstrap_high"],
        f"{prefix}.t_low": s["ci_low"],
        f"{prefix}.t_high": s["ci_high"],
        f"{prefix}.t": s["t"],
        f"{prefix}.p": s["p_one_sided"],
        f"{prefix}.se": s["se"],
        f"{prefix}.mde": s["mde"],
        f"{prefix}.up": s["positive"],
        f"{prefix}.level": s["zero"],
        f"{prefix}.down": s["negative"],
    }


def _range(prefix: str, x: np.ndarray, out: dict) -> None:
    out |= {f"{prefix}.mean": float(x.mean()), f"{prefix}.min": float(x.min()), f"{prefix}.max": float(x.max())}


def seed_counts(rows: list[dict]) -> tuple[dict[str, np.ndarray], int]:
    """``{arm: correct clips per seed}`` and the number of test clips, from the top-1s."""
    clips = {int(r["test_clips"]) for r in rows}
    if len(clips) != 1:
        raise ValueError(f"per_seed.csv: test_clips must be one number, got {sorted(clips)}")
    n = clips.pop()
    if n >= 1000:
        raise ValueError(f"per_seed.csv: {n} test clips: 3-digit top-1s no longer determine the counts")
    counts = {}
    for key in rows[0]:
        if key.startswith("top1_"):
            top1 = np.array([float(r[key]) for r in rows])
            k = np.round(top1 * n)
            if np.abs(k / n - top1).max() > 0.0005 + 1e-12:
                raise ValueError(f"per_seed.csv: {key} is not a count of {n} clips to 3 digits")
            counts[key.removeprefix("top1_")] = k.astype(int)
    if BASELINE not in counts:
        raise ValueError(f"per_seed.csv: no top1_{BASELINE} column (the baseline arm)")
    return counts, n


def per_clip_matrices(rows: list[dict], seeds: list[int]) -> tuple[dict[str, np.ndarray], dict]:
    """``{arm: D[seed, clip]}`` against the baseline, and ``{(seed, arm): top-1}``."""
    ok: dict[tuple[int, str], dict[str, bool]] = {}
    for r in rows:
        ok.setdefault((int(r["seed"]), r["arm"]), {})[r["clip"]] = r["label"] == r["pred"]
    top1 = {k: float(np.mean(list(v.values()))) for k, v in ok.items()}
    arms = sorted({a for _, a in ok if a != BASELINE})
    mats = {}
    for a in arms:
        D = []
        for s in seeds:
            base, arm = ok.get((s, BASELINE)), ok.get((s, a))
            if base is None or arm is None or base.keys() != arm.keys():
                raise ValueError(f"per_clip.csv: seed {s}: {BASELINE} and {a} need the same clips")
            D.append([int(arm[c]) - int(base[c]) for c in sorted(base)])
        mats[a] = np.array(D, dtype=np.int8)
    return mats, top1


def recompute(folder: Path) -> dict[str, float]:
    """Every quantity the committed outputs determine, by name (``<arm>`` without ``ssa_``):

    ``gain.<arm>.{mean,boot_low,boot_high,t_low,t_high,t,p,se,mde,up,level,down}`` (the
    seed-level paired statistics), ``top1.<arm>.mean``, ``corr.<arm>.mean``,
    ``corr_decrease.<arm>.{...as gain}``, ``corr_rel.<arm>.{mean,min,max}`` (arm / baseline
    - 1), ``branch.<rgb|depth|focal_top10>.{mean,min,max}``, ``branch.depth.below_0.99``
    (seeds), ``focal_hard.<arm>.{mean,min,max}``, ``worst_case<K>.<arm>.clip_{low,high,se,mde}``
    (the clip bootstrap of :func:`worst_case_matrix` with K changed clips per seed), and
    from ``per_clip.csv``: ``clip.<arm>.{clip,crossed}_{low,high,se,mde}``,
    ``clip.<arm>.{fixed,broken,changed_clips}``.
    """
    rows = _read_csv(folder / "per_seed.csv")
    if not rows:
        raise ValueError(f"{folder / 'per_seed.csv'}: no rows")
    seeds = [int(r["seed"]) for r in rows]
    counts, n = seed_counts(rows)
    out: dict[str, float] = {}
    for arm, k in counts.items():
        name = arm.removeprefix("ssa_")
        out[f"top1.{name}.mean"] = float(k.sum() / (n * len(k)))
        if arm != BASELINE:
            _test_summary(f"gain.{name}", (k - counts[BASELINE]) / n, out)
            out[f"net.{name}"] = [int(v) for v in k - counts[BASELINE]]
    cols = rows[0].keys()

    def col(key: str) -> np.ndarray:
        return np.array([float(r[key]) for r in rows])

    if f"corr_dist_{BASELINE}" in cols:
        base = col(f"corr_dist_{BASELINE}")
        for key in (c for c in cols if c.startswith("corr_dist_")):
            name = key.removeprefix("corr_dist_ssa_")
            out[f"corr.{name}.mean"] = float(col(key).mean())
            if key != f"corr_dist_{BASELINE}":
                _test_summary(f"corr_decrease.{name}", base - col(key), out)
                _range(f"corr_rel.{name}", col(key) / base - 1, out)
    for key, name in (
        ("rgb_train_top1_at_branch", "rgb"),
        ("depth_train_top1_at_branch", "depth"),
        ("rgb_focal_top10_share", "focal_top10"),
    ):
        if key in cols:
            _range(f"branch.{name}", col(key), out)
    if "depth_train_top1_at_branch" in cols:
        out["branch.depth.below_0.99"] = int((col("depth_train_top1_at_branch") < 0.99).sum())
    for key in (c for c in cols if c.startswith("focal_on_hard_")):
        _range(f"focal_hard.{key.removeprefix('focal_on_hard_ssa_')}", col(key), out)
    clip_file = folder / "per_clip.csv"
    if clip_file.is_file():
        mats, top1 = per_clip_matrices(_read_csv(clip_file), seeds)
        for (s, arm), v in top1.items():
            if s in seeds and f"top1_{arm}" in cols:
                printed = float(rows[seeds.index(s)][f"top1_{arm}"])
                if abs(v - printed) > 0.0005 + 1e-12:
                    raise ValueError(f"per_seed.csv says seed {s} {arm} top-1 {printed}, per_clip.csv gives {v:.4f}")
        for arm, D in mats.items():
            c = clip_level(D)
            name = arm.removeprefix("ssa_")
            for kind in ("clip", "crossed"):
                for q in ("low", "high", "se", "mde"):
                    out[f"clip.{name}.{kind}_{q}"] = c[f"{kind}_bootstrap"][q]
            out[f"clip.{name}.fixed"] = int(sum(c["fixed_per_seed"]))
            out[f"clip.{name}.broken"] = int(sum(c["broken_per_seed"]))
            out[f"clip.{name}.changed_clips"] = c["clips_changed_in_some_seed"]
    out["_clips"] = n
    return out


def _value(values: dict, quantity: str) -> float:
    if quantity in values:
        return values[quantity]
    m = _WORST.match(quantity)
    if m and f"net.{m.group(2)}" in values:
        net = values[f"net.{m.group(2)}"]
        D = worst_case_matrix(net, [int(m.group(1))] * len(net), values["_clips"])
        return clip_level(D)["clip_bootstrap"][m.group(3)]
    raise KeyError(quantity)


def format_like(value: float, printed: str) -> str:
    """``value`` with the printed text's digits, sign and percent sign."""
    pct = printed.endswith("%")
    body = printed.removesuffix("%")
    decimals = len(body.split(".")[1]) if "." in body else 0
    v = value * 100 if pct else value
    text = format(v, ("+" if body[:1] in "+-" else "") + f".{decimals}f")
    return text + ("%" if pct else "")


def check(folder: str | Path, doc: str | Path | None = None) -> tuple[list[str], list[str]]:
    """``(lines, problems)``: one line per claim, and what does not agree."""
    folder = Path(folder)
    values = recompute(folder)
    doc_path = Path(doc) if doc else folder / "results.md"
    text = doc_path.read_text()
    lines, problems = [], []
    for c in _read_csv(folder / "claims.csv"):
        q, printed, tol = c["quantity"], c["printed"], float(c.get("tolerance") or 0)
        try:
            v = _value(values, q)
        except KeyError:
            problems.append(f"{q}: the committed outputs do not determine it")
            continue
        got = format_like(v, printed)
        scale = 100 if printed.endswith("%") else 1
        body = printed.removesuffix("%")
        half_ulp = 0.5 * 10 ** -(len(body.split(".")[1]) if "." in body else 0)
        ok = got == printed or (tol > 0 and abs(v * scale - float(body)) <= tol + half_ulp)
        lines.append(
            f"{'ok ' if ok else 'BAD'} {q} = {v:.6g}: printed {printed}, recomputed {got}"
            + (f" (tolerance {c['tolerance']}: {c.get('source', '')})" if tol > 0 else "")
        )
        if not ok:
            problems.append(f"{q}: printed {printed}, recomputed {got} ({v:.6g})")
        if printed not in text:
            problems.append(f"{q}: {printed} does not occur in {doc_path}")
    if not (folder / "per_clip.csv").is_file():
        lines.append("no per_clip.csv: clip-level numbers cannot be recomputed from these outputs")
    return lines, problems


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m examples.study recheck",
        description="Recompute every number a study's write-up prints from its committed "
        "outputs (per_seed.csv, per_clip.csv if any, claims.csv).",
    )
    p.add_argument("folder", help="the folder of the committed outputs (e.g. docs/study)")
    p.add_argument("--doc", help="the write-up whose numbers are checked (default FOLDER/results.md)")
    args = p.parse_args(argv)
    try:
        lines, problems = check(args.folder, args.doc)
    except (ValueError, FileNotFoundError, KeyError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print("\n".join(lines))
    for line in problems:
        print(f"MISMATCH {line}")
    print(f"{len(lines)} lines, {len(problems)} mismatches" if problems else f"every claim agrees ({len(lines)} lines)")
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))
