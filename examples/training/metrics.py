"""Evaluation metrics and the per-epoch metric files."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .checkpoint import write_json_atomic, write_text_atomic


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts, rows = true class, columns = predicted class."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize(scores: Mapping[str, torch.Tensor], labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1 and top-5 accuracy, mean class accuracy and confusion matrix of every score
    ``[N, K]`` (one per modality, and ``fused``).

    Returns ``{"top1": {name: acc}, "top5": {...}, "mean_class": {...}, "confusion":
    {name: K x K list}, "clips": N}``. The mean class accuracy averages the recall of the
    classes present in ``labels`` (NVGesture's test list is not balanced). Accuracies of
    no clips are ``None`` (JSON has no NaN).
    """
    n = int(labels.numel())
    out: dict = {"top1": {}, "top5": {}, "mean_class": {}, "confusion": {}, "clips": n}
    for name, score in scores.items():
        pred = score.argmax(1)
        confusion = confusion_matrix(pred, labels, num_classes)
        out["confusion"][name] = confusion.tolist()
        if not n:
            out["top1"][name] = out["top5"][name] = out["mean_class"][name] = None
            continue
        out["top1"][name] = int((pred == labels).sum()) / n
        top = score.topk(min(5, score.shape[1]), dim=1).indices
        out["top5"][name] = int((top == labels[:, None]).any(1).sum()) / n
        per_class = confusion.diag().double() / confusion.sum(1).double()
        out["mean_class"][name] = float(per_class[confusion.sum(1) > 0].mean())
    return out


class MetricsLog:
    """One row of metrics per epoch, rewritten atomically to JSON and CSV after each epoch.

    Rows are flat dicts (``epoch``, ``lr``, ``train/loss``, ``test/top1/rgb``, ...); the
    CSV has the union of the rows' columns.
    """

    def __init__(self, json_path: str | Path, csv_path: str | Path, rows: Sequence[dict] = ()):
        self.json_path, self.csv_path = Path(json_path), Path(csv_path)
        self.rows: list[dict] = list(rows)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        write_json_atomic(self.rows, self.json_path)
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(buf.getvalue(), self.csv_path)
