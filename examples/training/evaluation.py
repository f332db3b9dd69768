"""Evaluation: per-clip logits of every network, top-1 per modality and fused, and the
per-clip logits file (``.npz``) that evaluations write.

The logits file is meant to be reused (aggregating many runs, paired comparisons), so
its layout is fixed and it loads with ``numpy.load(path)`` (no pickle):

=====================  =====================================================
``format``             ``"mtut-eval/1"``
``split``              ``"val"`` or ``"test"`` (or another list's name)
``epoch``              the training epoch the weights are from (int)
``modalities``         ``[M]`` str: the networks, in the model's order
``paths``              ``[N]`` str: each clip's list path, in list order
``labels``             ``[N]`` int64: 0-based labels
``logits_<modality>``  ``[N, K]`` float32: that network's logits (averaged over time)
``fused``              ``[N, K]`` float32: the fused score (absent for one modality)
``fusion``             how ``fused`` was made (``softmax``: mean of softmaxes; ``logits``)
=====================  =====================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from examples.data import NUM_CLASSES

from ..mtut_model import MTUTModel
from . import distributed as dd
from .checkpoint import _atomic_write
from .metrics import summarize

LOGITS_FORMAT = "mtut-eval/1"


@dataclass
class EvalResult:
    """Per-clip scores of one evaluation (in list order) and their summary."""

    split: str
    modalities: tuple[str, ...]
    logits: dict[str, torch.Tensor]  # modality -> [N, K] float32 (and "fused")
    labels: torch.Tensor
    paths: list[str]
    fusion: str

    def summary(self) -> dict:
        """``{"top1": {name: acc}, "confusion": {name: K x K}, "clips": N}``."""
        return summarize(self.logits, self.labels, NUM_CLASSES)


@torch.no_grad()
def evaluate(model: MTUTModel, loader: DataLoader, split: str, rt: dd.Runtime, *, fusion: str = "softmax",
             progress: bool = False) -> EvalResult:
    """Run every network of ``model`` on this process's shard of ``loader``, gather the
    shards from every process and put the clips back in list order.

    The loader's dataset must be a ``Subset`` of clip indices ``rank, rank + world, ...``
    (see :func:`examples.training.data.eval_loader`). The model runs in eval mode under
    the runtime's autocast; logits are returned in float32.
    """
    was_training = model.training
    model.eval()  # the plain model: DDP's forward would sync buffers across uneven shards
    modalities = tuple(model.modalities)
    logits: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    labels: list[torch.Tensor] = []
    paths: list[str] = []
    autocast = torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)
    for batch in tqdm(loader, desc=f"eval {split}", unit="batch", leave=False, disable=not progress):
        inputs = {m: batch[m].to(rt.device, non_blocking=True) for m in modalities}
        with autocast:
            out = model(inputs)
        for m in modalities:
            logits[m].append(out.logits[m].float().cpu())
        labels.append(torch.as_tensor(batch["label"]).cpu())
        paths += list(batch["path"])
    model.train(was_training)
    mine = ({m: torch.cat(v) if v else torch.empty(0, model.num_classes) for m, v in logits.items()},
            torch.cat(labels) if labels else torch.empty(0, dtype=torch.long), paths,
            list(getattr(loader.dataset, "indices", range(len(paths)))))
    parts = dd.gather(mine, rt)
    order = torch.as_tensor([i for p in parts for i in p[3]], dtype=torch.long).argsort()
    scores = {m: torch.cat([p[0][m] for p in parts])[order] for m in modalities}
    y = torch.cat([p[1] for p in parts])[order]
    all_paths = [q for p in parts for q in p[2]]
    all_paths = [all_paths[i] for i in order.tolist()]
    if len(modalities) > 1:
        scores["fused"] = MTUTModel.fuse({m: scores[m] for m in modalities}, fusion)
    return EvalResult(split, modalities, scores, y, all_paths, fusion)


def save_logits(result: EvalResult, path: str | Path, epoch: int) -> None:
    """Write ``result`` as a logits file (see the module doc), atomically."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(LOGITS_FORMAT), "split": np.array(result.split), "epoch": np.array(epoch, np.int64),
        "modalities": np.array(result.modalities, dtype=str), "paths": np.array(result.paths, dtype=str),
        "labels": result.labels.numpy().astype(np.int64), "fusion": np.array(result.fusion),
    }
    for m in result.modalities:
        arrays[f"logits_{m}"] = result.logits[m].numpy().astype(np.float32)
    if "fused" in result.logits:
        arrays["fused"] = result.logits["fused"].numpy().astype(np.float32)
    _atomic_write(Path(path), lambda f: np.savez_compressed(f, **arrays))


def load_logits(path: str | Path) -> dict:
    """Read a logits file (no pickle): ``{"split", "epoch", "modalities", "paths", "labels",
    "logits": {modality: [N, K]}, "fused", "fusion"}``.

    Raises:
        ValueError: the file is not a logits file of this format.
    """
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z or str(z["format"]) != LOGITS_FORMAT:
            raise ValueError(f"{path}: not a logits file of format {LOGITS_FORMAT!r}")
        modalities = [str(m) for m in z["modalities"]]
        return {
            "split": str(z["split"]), "epoch": int(z["epoch"]), "modalities": modalities,
            "paths": [str(p) for p in z["paths"]], "labels": z["labels"].copy(),
            "logits": {m: z[f"logits_{m}"].copy() for m in modalities},
            "fused": z["fused"].copy() if "fused" in z else None, "fusion": str(z["fusion"]),
        }


def top1_from_logits(data: dict, names: Sequence[str] | None = None) -> dict[str, float]:
    """Top-1 of every network (and ``fused``) of a loaded logits file."""
    scores = dict(data["logits"])
    if data["fused"] is not None:
        scores["fused"] = data["fused"]
    names = list(scores) if names is None else list(names)
    return {n: float((scores[n].argmax(1) == data["labels"]).mean()) for n in names}
