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
``sqdist_<endpoint>``  ``[N, M, M]`` float32 (two or more modalities): every clip's squared
                       correlation distances ``S_mn = ||K_m - K_n||_F^2`` of the networks'
                       features at that SSA endpoint (:func:`mtut_ops.pairwise_sqdist`)
``positions_<endpoint>`` ``[N]`` int64: that endpoint's ``d`` (positions) for each clip
=====================  =====================================================

The correlation distance reported in summaries is ``sqrt(S) / d`` (the "rms" distance:
the root-mean-square difference of the two ``d x d`` correlation matrices' entries),
averaged over clips. Files from before the distances were recorded simply lack them.

Training writes one more per-clip file per epoch, ``epochNNN_train_ce.npz``
(:func:`save_train_ce`): every training clip's per-sample CE per network, from which the
focal weights of any beta can be recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import mtut_ops
from examples.data import NUM_CLASSES

from ..mtut_model import MTUTModel
from . import distributed as dd
from .checkpoint import _atomic_write
from .metrics import summarize

LOGITS_FORMAT = "mtut-eval/1"
TRAIN_CE_FORMAT = "mtut-train-ce/1"


@dataclass
class EvalResult:
    """Per-clip scores of one evaluation (in list order) and their summary."""

    split: str
    modalities: tuple[str, ...]
    logits: dict[str, torch.Tensor]  # modality -> [N, K] float32 (and "fused")
    labels: torch.Tensor
    paths: list[str]
    fusion: str
    sqdist: dict[str, torch.Tensor] = field(default_factory=dict)  # endpoint -> [N, M, M]
    positions: dict[str, torch.Tensor] = field(default_factory=dict)  # endpoint -> [N]

    def summary(self) -> dict:
        """``{"top1": {name: acc}, "confusion": {name: K x K}, "clips": N}``, plus
        ``"corr_dist": {endpoint: mean over clips of sqrt(S_01) / d}`` (the first two
        networks' correlation distance) with two or more modalities."""
        out = summarize(self.logits, self.labels, NUM_CLASSES)
        if self.sqdist:
            out["corr_dist"] = {
                e: float(correlation_distance(S.numpy(), self.positions[e].numpy()).mean())
                for e, S in self.sqdist.items()
            }
        return out


def correlation_distance(sqdist: np.ndarray, positions: np.ndarray, pair: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Per-clip ``sqrt(S_mn) / d`` from a logits file's ``sqdist`` ``[N, M, M]`` and ``positions`` ``[N]``."""
    m, n = pair
    return np.sqrt(np.maximum(sqdist[:, m, n].astype(np.float64), 0.0)) / positions.astype(np.float64)


@torch.no_grad()
def evaluate(
    model: MTUTModel, loader: DataLoader, split: str, rt: dd.Runtime, *, fusion: str = "softmax", progress: bool = False
) -> EvalResult:
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
    endpoints = tuple(model.ssa_endpoints) if len(modalities) > 1 else ()
    sqdist: dict[str, list[torch.Tensor]] = {e: [] for e in endpoints}
    positions: dict[str, list[torch.Tensor]] = {e: [] for e in endpoints}
    ssa = model.ssa_config
    labels: list[torch.Tensor] = []
    paths: list[str] = []
    autocast = torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)
    for batch in tqdm(loader, desc=f"eval {split}", unit="batch", leave=False, disable=not progress):
        inputs = {m: batch[m].to(rt.device, non_blocking=True) for m in modalities}
        with autocast:
            out = model(inputs)
        for m in modalities:
            logits[m].append(out.logits[m].float().cpu())
        for e in endpoints:  # how far apart the networks' correlation structures are, per clip
            feats = [out.features[m][e].float() for m in modalities]
            S = mtut_ops.pairwise_sqdist(feats, eps=ssa.eps, algo=ssa.algo, backend=ssa.backend)
            sqdist[e].append(S.float().cpu())
            positions[e].append(torch.full((S.shape[0],), math.prod(feats[0].shape[2:]), dtype=torch.long))
        labels.append(torch.as_tensor(batch["label"]).cpu())
        paths += list(batch["path"])
    model.train(was_training)
    M = len(modalities)
    mine = (
        {m: torch.cat(v) if v else torch.empty(0, model.num_classes) for m, v in logits.items()},
        torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
        paths,
        list(getattr(loader.dataset, "indices", range(len(paths)))),
        {e: torch.cat(v) if v else torch.empty(0, M, M) for e, v in sqdist.items()},
        {e: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for e, v in positions.items()},
    )
    parts = dd.gather(mine, rt)
    order = torch.as_tensor([i for p in parts for i in p[3]], dtype=torch.long).argsort()
    scores = {m: torch.cat([p[0][m] for p in parts])[order] for m in modalities}
    all_sqdist = {e: torch.cat([p[4][e] for p in parts])[order] for e in endpoints}
    all_positions = {e: torch.cat([p[5][e] for p in parts])[order] for e in endpoints}
    y = torch.cat([p[1] for p in parts])[order]
    all_paths = [q for p in parts for q in p[2]]
    all_paths = [all_paths[i] for i in order.tolist()]
    if len(modalities) > 1:
        scores["fused"] = MTUTModel.fuse({m: scores[m] for m in modalities}, fusion)
    return EvalResult(split, modalities, scores, y, all_paths, fusion, all_sqdist, all_positions)


def save_logits(result: EvalResult, path: str | Path, epoch: int) -> None:
    """Write ``result`` as a logits file (see the module doc), atomically."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(LOGITS_FORMAT),
        "split": np.array(result.split),
        "epoch": np.array(epoch, np.int64),
        "modalities": np.array(result.modalities, dtype=str),
        "paths": np.array(result.paths, dtype=str),
        "labels": result.labels.numpy().astype(np.int64),
        "fusion": np.array(result.fusion),
    }
    for m in result.modalities:
        arrays[f"logits_{m}"] = result.logits[m].numpy().astype(np.float32)
    if "fused" in result.logits:
        arrays["fused"] = result.logits["fused"].numpy().astype(np.float32)
    for e, S in result.sqdist.items():
        arrays[f"sqdist_{e}"] = S.numpy().astype(np.float32)
        arrays[f"positions_{e}"] = result.positions[e].numpy().astype(np.int64)
    _atomic_write(Path(path), lambda f: np.savez_compressed(f, **arrays))


def load_logits(path: str | Path) -> dict:
    """Read a logits file (no pickle): ``{"split", "epoch", "modalities", "paths", "labels",
    "logits": {modality: [N, K]}, "fused", "fusion", "sqdist": {endpoint: [N, M, M]},
    "positions": {endpoint: [N]}}`` (the last two empty in files without distances).

    Raises:
        ValueError: the file is not a logits file of this format.
    """
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z or str(z["format"]) != LOGITS_FORMAT:
            raise ValueError(f"{path}: not a logits file of format {LOGITS_FORMAT!r}")
        modalities = [str(m) for m in z["modalities"]]
        return {
            "split": str(z["split"]),
            "epoch": int(z["epoch"]),
            "modalities": modalities,
            "paths": [str(p) for p in z["paths"]],
            "labels": z["labels"].copy(),
            "logits": {m: z[f"logits_{m}"].copy() for m in modalities},
            "fused": z["fused"].copy() if "fused" in z else None,
            "fusion": str(z["fusion"]),
            "sqdist": {k.removeprefix("sqdist_"): z[k].copy() for k in z.files if k.startswith("sqdist_")},
            "positions": {k.removeprefix("positions_"): z[k].copy() for k in z.files if k.startswith("positions_")},
        }


def top1_from_logits(data: dict, names: Sequence[str] | None = None) -> dict[str, float]:
    """Top-1 of every network (and ``fused``) of a loaded logits file."""
    scores = dict(data["logits"])
    if data["fused"] is not None:
        scores["fused"] = data["fused"]
    names = list(scores) if names is None else list(names)
    return {n: float((scores[n].argmax(1) == data["labels"]).mean()) for n in names}


def save_train_ce(
    path: str | Path, paths: Sequence[str], ce: np.ndarray, modalities: Sequence[str], epoch: int, beta: float
) -> None:
    """One epoch's per-clip training CE (``[N, M]``, in the order the clips were seen) as
    ``.npz`` (no pickle): ``format`` ``"mtut-train-ce/1"``, ``epoch``, ``modalities``,
    ``paths``, ``ce`` and the run's ``beta``. Written atomically."""
    arrays = {
        "format": np.array(TRAIN_CE_FORMAT),
        "epoch": np.array(epoch, np.int64),
        "modalities": np.array(list(modalities), dtype=str),
        "paths": np.array(list(paths), dtype=str),
        "ce": np.asarray(ce, np.float64),
        "beta": np.array(beta, np.float64),
    }
    _atomic_write(Path(path), lambda f: np.savez_compressed(f, **arrays))


def load_train_ce(path: str | Path) -> dict:
    """Read :func:`save_train_ce`'s file: ``{"epoch", "modalities", "paths", "ce", "beta"}``."""
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z or str(z["format"]) != TRAIN_CE_FORMAT:
            raise ValueError(f"{path}: not a training-CE file of format {TRAIN_CE_FORMAT!r}")
        return {
            "epoch": int(z["epoch"]),
            "modalities": [str(m) for m in z["modalities"]],
            "paths": [str(p) for p in z["paths"]],
            "ce": z["ce"].copy(),
            "beta": float(z["beta"]),
        }
