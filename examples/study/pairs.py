"""Paired runs: one SSA-off trunk per seed, branched into SSA-on, SSA-off and control arms.

For each seed the joint model (one network per modality) trains with SSA off up to the
branch epoch (``<out>/seed<S>/trunk``); every arm then continues from that checkpoint
(model, optimizer, scheduler, every RNG state) with only its SSA settings changed
(``<out>/seed<S>/<arm>``). All arms of a seed therefore share the initialization, the
first ``branch_epoch`` epochs exactly, and the data order and augmentations after the
branch. Without SSA the networks are independent, so the RGB network of the ``ssa_off``
arm is the RGB-alone baseline; ``ssa_off`` is bit for bit the run an un-branched SSA-off
training of the same length would give.

Arms (``ARMS``): ``ssa_off``; ``ssa_on`` (the given SSA settings); the controls
``ssa_shuffled`` (SSA toward the other networks' features of other clips of the batch:
``--ssa-shuffle`` of every modality but the first), ``ssa_constant`` (``--focal
constant``: no focal weighting) and ``ssa_indicator`` (``--focal indicator``).

Everything is resumable: run the same command again and each run continues where it
stopped (finished runs are reused, a trunk or an arm interrupted mid-way resumes from its
``last.pt``, an arm not yet started branches).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from examples.training.checkpoint import load_checkpoint, write_json_atomic
from examples.training.config import TrainConfig, validate
from examples.training.engine import Trainer

ARMS = ("ssa_off", "ssa_on", "ssa_shuffled", "ssa_constant", "ssa_indicator")
DEFAULT_ARMS = ("ssa_off", "ssa_on")
BASELINE = "ssa_off"
TRUNK = "trunk"


def branch_epoch_of(cfg: TrainConfig, branch_epoch: int | None = None) -> int:
    """The branch epoch: ``branch_epoch``, or the epoch before SSA starts."""
    epoch = cfg.ssa_start - 1 if branch_epoch is None else branch_epoch
    if not 1 <= epoch < cfg.epochs:
        raise ValueError(
            f"the branch epoch must be in 1..{cfg.epochs - 1} (--epochs {cfg.epochs}), got {epoch}"
            + (" (--ssa-start - 1)" if branch_epoch is None else "")
        )
    if epoch >= cfg.ssa_start:
        raise ValueError(f"--branch-epoch {epoch} must come before SSA starts (--ssa-start {cfg.ssa_start})")
    return epoch


def arm_config(base: TrainConfig, arm: str, seed: int, out: Path) -> TrainConfig:
    """The config of one arm (or of the trunk, ``arm="trunk"``) of ``base`` for ``seed``."""
    if len(base.modalities) < 2:
        raise ValueError("a paired study trains two or more modalities together (--modalities rgb depth)")
    common = dict(seed=seed, out=str(out))
    if arm in (TRUNK, "ssa_off"):
        changes = dict(ssa=False)
    elif arm == "ssa_on":
        changes = dict(ssa=True, ssa_shuffle=())
    elif arm == "ssa_shuffled":
        changes = dict(ssa=True, ssa_shuffle=tuple(base.modalities[1:]))
    elif arm == "ssa_constant":
        changes = dict(ssa=True, ssa_shuffle=(), focal="constant")
    elif arm == "ssa_indicator":
        changes = dict(ssa=True, ssa_shuffle=(), focal="indicator")
    else:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    cfg = dataclasses.replace(base, **common, **changes)
    validate(cfg)
    return cfg


def _epoch_of(checkpoint: Path) -> int | None:
    return int(load_checkpoint(checkpoint)["epoch"]) if checkpoint.is_file() else None


def run_pair(
    base: TrainConfig,
    seed: int,
    out: str | Path,
    *,
    branch_epoch: int | None = None,
    arms: Sequence[str] = DEFAULT_ARMS,
    log=print,
) -> dict:
    """Train (or finish) the trunk and the arms of one seed under ``out/seed<seed>``.

    Returns ``{"seed", "branch_epoch", "seconds": {run: wall seconds of this call},
    "finals": {arm: final_eval.json content}}``, also written to ``seed<seed>/pair.json``.
    """
    E = branch_epoch_of(base, branch_epoch)
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    root = Path(out) / f"seed{seed}"
    seconds: dict[str, float] = {}
    trunk_cfg = arm_config(base, TRUNK, seed, root / TRUNK)
    trunk_ckpt = root / TRUNK / "last.pt"
    done = _epoch_of(trunk_ckpt)
    if done is not None and done > E:
        raise ValueError(
            f"{trunk_ckpt} is at epoch {done}, past the branch epoch {E}: another branch epoch "
            "was used there; choose another --out"
        )
    if done != E:
        log(f"== seed {seed}: trunk (SSA off) to the branch epoch {E}" + (f", resuming after {done}" if done else ""))
        t0 = time.perf_counter()
        Trainer(trunk_cfg, resume=done is not None).run(stop_after=E)
        seconds[TRUNK] = time.perf_counter() - t0
    finals: dict[str, dict] = {}
    for arm in arms:
        cfg = arm_config(base, arm, seed, root / arm)
        ckpt = root / arm / "last.pt"
        final_path = root / arm / "final_eval.json"
        done = _epoch_of(ckpt)
        t0 = time.perf_counter()
        if done == cfg.epochs and final_path.is_file():
            log(f"== seed {seed}: {arm}: finished, reused")
            finals[arm] = json.loads(final_path.read_text())
            continue
        if done is not None:
            log(f"== seed {seed}: {arm}: resuming after epoch {done}")
            finals[arm] = Trainer(cfg, resume=True).run()
        else:
            log(f"== seed {seed}: {arm}: branching from {trunk_ckpt} (epoch {E})")
            finals[arm] = Trainer(cfg, branch_from=trunk_ckpt).run()
        seconds[arm] = time.perf_counter() - t0
    summary = {
        "seed": seed,
        "branch_epoch": E,
        "arms": list(arms),
        "seconds": seconds,
        "finals": {
            a: {k: v for k, v in f.items() if k in ("epochs", "splits", "best", "branched_from")}
            for a, f in finals.items()
        },
    }
    previous = root / "pair.json"
    if previous.is_file():  # keep the wall times of earlier calls (an interrupted study's first part)
        old = json.loads(previous.read_text()).get("seconds", {})
        summary["seconds"] = {**old, **seconds}
    write_json_atomic(summary, previous)
    return summary
