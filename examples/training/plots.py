"""PNG plots of a run: loss curves, accuracy per modality, confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed (servers, CI, DDP workers)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_losses(rows: Sequence[dict], path: str | Path, ssa_start: int | None = None) -> None:
    """Training CE per modality and the SSA loss, per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted(k for k in rows[-1] if k.startswith("train/ce/")):
        ax.plot(*_series(rows, key), marker=".", label=f"CE {key.rsplit('/', 1)[1]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ssa = _series(rows, "train/ssa")
    if any(v > 0 for v in ssa[1]):
        ax2 = ax.twinx()
        ax2.plot(*ssa, color="k", linestyle="--", label="SSA")
        ax2.set_ylabel("SSA loss")
        ax2.legend(loc="upper center")
    if ssa_start is not None and ssa_start <= rows[-1]["epoch"]:
        ax.axvline(ssa_start - 0.5, color="gray", linewidth=0.8)
    ax.legend(loc="upper right")
    ax.set_title("training losses")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy(rows: Sequence[dict], path: str | Path) -> None:
    """Top-1 accuracy per modality (and fused) on every evaluated split, per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({k for r in rows for k in r if "/top1/" in k})
    for key in keys:
        xs, ys = _series(rows, key)
        ax.plot(
            xs,
            ys,
            marker="o" if len(xs) < 3 else ".",
            linestyle="--" if key.startswith("train/") else "-",
            label=key.replace("/top1/", " "),
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    ax.set_title("accuracy per modality")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusions: dict[str, list[list[int]]], path: str | Path, title: str = "") -> None:
    """One confusion matrix per score (rows true, columns predicted), restricted to the
    classes that occur (as truth or prediction), labelled with 1-based class numbers."""
    mats = {k: np.asarray(v) for k, v in confusions.items()}
    used = np.flatnonzero(sum(m.sum(0) + m.sum(1) for m in mats.values()))
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], mats.items()):
        m = m[np.ix_(used, used)]
        ax.imshow(m, cmap="Blues")
        for i, j in zip(*np.nonzero(m)):
            ax.text(
                j,
                i,
                int(m[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
        labels = [f"{c + 1}" for c in used]
        ax.set_xticks(range(len(used)), labels, fontsize=7)
        ax.set_yticks(range(len(used)), labels, fontsize=7)
        acc = np.trace(m) / max(1, m.sum())
        ax.set_title(f"{name} (top-1 {acc:.3f})")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
