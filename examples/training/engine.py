"""The training loop: epochs, evaluation, checkpoints, resume, metric files, plots."""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from examples.data import CLASS_NAMES, NUM_CLASSES

from ..data.synthetic import load_hard_clips
from ..mtut_model import MTUTModel, SSAConfig, derangement
from . import data as D
from . import distributed as dd
from .checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    model_state_from,
    rng_state,
    save_atomic,
    set_rng_state,
    write_json_atomic,
)
from .config import (
    BRANCH_CHANGES,
    RESUMABLE_CHANGES,
    Paths,
    TrainConfig,
    parse_pretrained,
    resume_command,
    schedule_warnings,
    validate,
)
from .evaluation import EvalResult, evaluate, save_logits, save_train_ce
from .metrics import MetricsLog
from .runlog import DivergenceError, TextLog, TrainingInterrupted, check_writable, environment


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_model(cfg: TrainConfig, verbose: bool = True) -> MTUTModel:
    """The MTUT model of ``cfg`` (pretrained weights loaded, their reports printed when ``verbose``)."""
    ssa = SSAConfig(
        beta=cfg.beta,
        lambda_=cfg.lambda_,
        distance=cfg.distance,
        algo=cfg.algo,
        pair_cap=cfg.pair_cap,
        backend=cfg.ssa_backend,
        inputs_fp32=cfg.ssa_fp32,
        focal=cfg.focal,
        shuffle=tuple(cfg.ssa_shuffle),
    )
    model = MTUTModel(
        cfg.modalities, NUM_CLASSES, width=cfg.width, dropout=cfg.dropout, ssa_endpoints=cfg.ssa_endpoints, ssa=ssa
    )
    paths = parse_pretrained(cfg.pretrained, cfg.modalities)
    for m, report in model.load_pretrained(paths, stem=cfg.stem).items():
        if verbose:
            print(f"[pretrained] {m}: {paths[m]}: {str(report).replace(chr(10), '; ')}")
    if cfg.init_from:
        loaded = init_from(model, cfg.init_from)
        if verbose:
            print(f"[init-from] {cfg.init_from}: weights of {', '.join(loaded)}")
    return model


def init_from(model: MTUTModel, path: str | Path) -> list[str]:
    """Copy the weights of ``path`` (a training checkpoint or a state dict, read safely)
    into the networks of ``model`` that it has; returns their modalities.

    A network is taken whole or not at all: every one of its tensors must be in the file
    with the same shape. Optimizer, epoch and RNG states are not read.
    """
    state, _ = model_state_from(path)
    target = model.state_dict()
    loaded, problems = [], []
    for m in model.modalities:
        keys = [k for k in target if k.startswith(f"nets.{m}.")]
        have = [k for k in keys if k in state]
        if not have:
            continue
        bad = [k for k in keys if k not in state and not k.endswith("num_batches_tracked")]
        bad += [k for k in have if state[k].shape != target[k].shape]
        if bad:
            problems.append(f"{m}: {len(bad)} tensors missing or of another shape (first: {bad[0]})")
            continue
        with torch.no_grad():
            for k in have:
                target[k].copy_(state[k])
        loaded.append(m)
    if problems or not loaded:
        raise ValueError(
            f"--init-from {path}: "
            + (
                "; ".join(problems)
                if problems
                else f"holds no network of {list(model.modalities)} (keys like nets.rgb.*)"
            )
        )
    return loaded


def _config_diffs(saved: Mapping, cfg: TrainConfig, allowed) -> list[str]:
    """The settings of ``cfg`` outside ``allowed`` that differ from a checkpoint's ``saved``."""
    return [
        f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}"
        for k, v in cfg.to_dict().items()
        if k not in allowed and _norm(saved.get(k)) != _norm(v)
    ]


def check_resumable(saved: Mapping, cfg: TrainConfig) -> None:
    """Raise ``ValueError`` listing the settings of ``cfg`` that differ from a checkpoint's
    ``saved`` config in ways that would change the run's trajectory."""
    diffs = _config_diffs(saved, cfg, RESUMABLE_CHANGES)
    if diffs:
        raise ValueError(
            "--resume: the run was started with other settings (they would change its "
            "trajectory):\n  " + "\n  ".join(diffs)
        )


def check_branchable(saved: Mapping, cfg: TrainConfig, epoch: int) -> None:
    """Raise ``ValueError`` unless a run with ``cfg`` may branch from a checkpoint written
    after ``epoch`` by a run with config ``saved``.

    The two may differ only in settings that do not change the trajectory
    (``RESUMABLE_CHANGES``) and in the SSA settings (``BRANCH_CHANGES``), and SSA must be
    off in both up to ``epoch``: then the branch's first ``epoch`` epochs are the
    checkpoint's run, exactly, and everything after it sees the same data order and
    random streams.
    """
    diffs = _config_diffs(saved, cfg, BRANCH_CHANGES)
    if diffs:
        raise ValueError(
            "--branch-from: the branch differs from the run it branches from in settings other than "
            "SSA's (they would change the shared prefix):\n  " + "\n  ".join(diffs)
        )

    def ssa_before(c: Mapping) -> bool:
        return bool(c.get("ssa", True)) and len(c["modalities"]) > 1 and c["ssa_start"] <= epoch

    if ssa_before(saved):
        raise ValueError(
            f"--branch-from: the checkpoint's run had SSA on from epoch {saved['ssa_start']}, before the "
            f"branch point (epoch {epoch}); branch from an SSA-off run (--no-ssa)"
        )
    if ssa_before(cfg.to_dict()):
        raise ValueError(
            f"--branch-from: this run would have SSA on from epoch {cfg.ssa_start}, but its first "
            f"{epoch} epochs come from an SSA-off checkpoint: --ssa-start must be > {epoch}"
        )


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def shuffle_permutation(n: int, seed: int, epoch: int, step: int, rank: int) -> torch.Tensor:
    """The batch permutation of the shuffled-features control at one step: a derangement
    from its own generator (the global RNG streams, and so the data order and
    augmentations, stay those of the un-shuffled run)."""
    state = np.random.SeedSequence([seed, epoch, step, rank, 0x5EED]).generate_state(2, np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] % 2**63))
    return derangement(n, generator)


class Trainer:
    """Trains an :class:`~examples.mtut_model.MTUTModel` as ``cfg`` says.

    One process, or one of several under ``torchrun`` (DDP). Every epoch ends with an
    atomically written checkpoint (``last.pt``) holding the model, optimizer, scheduler,
    grad scaler, the epoch and every process's RNG states, so ``resume=True`` continues
    the same trajectory an uninterrupted run would follow.

    ``branch_from=CKPT`` starts a new run (in ``cfg.out``) from that whole training state,
    as a resume would, with other SSA settings allowed (:func:`check_branchable`): the
    paired study's SSA-on and SSA-off branches of one SSA-off run. The branch's history,
    best-so-far record and the prefix's per-clip files are the checkpoint run's.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, branch_from: str | Path | None = None):
        validate(cfg)
        self.cfg = cfg
        self.rt = dd.setup(cfg.device, cfg.amp)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.paths = Paths(Path(cfg.out))
        if self.paths.checkpoint.exists() and not resume:
            raise ValueError(
                f"--out {cfg.out} already holds a run (last.pt): pass --resume to continue it, or choose another --out"
            )
        self.say = TextLog(check_writable(self.paths.root) / "train.log" if self.rt.main else None)
        if self.rt.main:
            for warning in schedule_warnings(cfg):
                self.say(f"WARNING: {warning}", error=True)
        seed_everything(cfg.seed)  # the same initial weights in every process
        self.model = build_model(cfg, verbose=self.rt.main).to(self.rt.device)
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None
            )
            if self.rt.distributed
            else None
        )
        self.lr = effective_lr(cfg, self.rt.world)
        if self.rt.main and self.lr != cfg.lr:
            self.say(
                f"--lr-scaling linear: lr {cfg.lr:g} x total batch {cfg.batch_size * self.rt.world} / "
                f"{cfg.lr_reference_batch} = {self.lr:g}"
            )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(cfg.lr_steps), cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.rt.amp_dtype == torch.float16)
        seed_everything(cfg.seed + 1000 * self.rt.rank)  # different augmentations per process
        self.datasets = D.build_datasets(cfg, ("train", "val", "test") if cfg.eval_test else ("train", "val"))
        D.require_clips(self.datasets)
        self.datasets_skipped = D.skipped_entries(self.datasets)
        self.train_loader, self.sampler = D.train_loader(self.datasets["train"], cfg, self.rt.rank, self.rt.world)
        self.eval_loaders = {
            name: D.eval_loader(ds, cfg, self.rt.rank, self.rt.world)
            for name, ds in self.datasets.items()
            if name != "train"
        }
        self.start_epoch = 1
        # best.pt: chosen by a validation top-1 only (never by the test split)
        self.best_metric = f"val/top1/{cfg.modalities[0] if cfg.best_metric == 'auto' else cfg.best_metric}"
        self.best: dict | None = None  # {"metric", "value", "epoch"}
        if self.rt.main and "val" not in self.eval_loaders:
            self.say(
                "no validation split (--val-subjects K): no best.pt and no evaluation during training; "
                + (
                    "the test split is evaluated after the last epoch"
                    + (" and watched (--watch-test)" if cfg.watch_test else "")
                    if cfg.eval_test
                    else "the test split is not evaluated either (--no-eval-test)"
                )
            )
        history: list[dict] = []
        self.branched_from: dict | None = None
        self.pending: list[str] = []
        # Which training clips are "RGB-hard" (the synthetic generator's sidecar): read for
        # the focal-weight statistics only, never for training.
        self.hard_clips = load_hard_clips(Path(cfg.data_root))
        if resume and self.paths.checkpoint.exists():
            history = self._restore(load_checkpoint(self.paths.checkpoint))
        elif resume:
            raise FileNotFoundError(f"--resume: no checkpoint at {self.paths.checkpoint}")
        elif branch_from is not None:
            history = self._branch(Path(branch_from))
        self.saved_epoch = self.start_epoch - 1
        self.log = MetricsLog(self.paths.metrics_json, self.paths.metrics_csv, history)
        self.tb = open_tensorboard(self.paths.root / "tb") if cfg.tensorboard and self.rt.main else None

    # ------------------------------------------------------------------ state

    def _load_training_state(self, ckpt: dict, flag: str, advice: str) -> None:
        """Weights, optimizer, schedule, scaler and this rank's random streams from ``ckpt``
        (what --resume and --branch-from both continue from)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        states = ckpt["rng"]
        if len(states) != self.rt.world:
            raise ValueError(
                f"{flag}: the checkpoint was written by {len(states)} processes, this run has {self.rt.world}; {advice}"
            )
        set_rng_state(states[self.rt.rank])
        self.start_epoch = ckpt["epoch"] + 1
        self.best = ckpt.get("best")
        # splits whose evaluation after the checkpoint's epoch had not finished
        self.pending = list(ckpt.get("pending_eval", []))

    def _restore(self, ckpt: dict) -> list[dict]:
        check_resumable(ckpt["config"], self.cfg)
        self._load_training_state(ckpt, "--resume", "resume with the same number to continue exactly")
        self.branched_from = ckpt.get("branched_from")
        if self.rt.main:
            self.say(
                f"resumed {self.paths.checkpoint} after epoch {ckpt['epoch']}"
                + (f" (its evaluation of {', '.join(self.pending)} follows)" if self.pending else "")
            )
        return ckpt["history"]

    def _branch(self, path: Path) -> list[dict]:
        """Start from the whole training state in ``path`` (see the class doc)."""
        ckpt = load_checkpoint(path)
        check_branchable(ckpt["config"], self.cfg, ckpt["epoch"])
        saved_check = dict(ckpt["config"])
        saved_check.update({k: v for k, v in self.cfg.to_dict().items() if k in BRANCH_CHANGES})
        check_resumable(saved_check, self.cfg)  # the same check a resume makes, on the shared settings
        self._load_training_state(ckpt, "--branch-from", "branch with the same number to share the random streams")
        self.pending = []
        self.branched_from = {"path": str(path), "epoch": int(ckpt["epoch"])}
        if self.rt.main:
            # the prefix's per-clip files and best checkpoint belong to this run's history too
            source = Paths(path.parent)
            if source.evals.is_dir():
                self.paths.evals.mkdir(parents=True, exist_ok=True)
                for f in sorted(source.evals.glob("epoch*.npz")):
                    if int(f.name[5:8]) <= ckpt["epoch"] and not (self.paths.evals / f.name).exists():
                        shutil.copyfile(f, self.paths.evals / f.name)
            if self.best is not None and source.best.is_file() and not self.paths.best.exists():
                self.paths.root.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.best, self.paths.best)
            self.say(f"branched from {path} after epoch {ckpt['epoch']}")
        return ckpt["history"]

    def _save(self, epoch: int, best: bool = False) -> None:
        """``last.pt`` (and ``best.pt`` when this epoch is the best so far on validation).

        ``self.pending`` (saved too) names the splits still to evaluate after ``epoch``; a
        resume evaluates them first, so an evaluation that fails (a bad test clip) does
        not cost the epoch.
        """
        states = dd.gather(rng_state(), self.rt)  # every process's RNG, captured after its epoch
        if self.rt.main:
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": states,
                "config": self.cfg.to_dict(),
                "history": self.log.rows,
                "best": self.best,
                "pending_eval": list(self.pending),
            }
            if self.branched_from is not None:
                ckpt["branched_from"] = self.branched_from
            if best:
                save_atomic(ckpt, self.paths.best)
            save_atomic(ckpt, self.paths.checkpoint)
            keep = self.cfg.keep_every
            if keep and epoch % keep == 0 and not self.pending:
                save_atomic(ckpt, self.paths.epoch_checkpoint(epoch))
        self.saved_epoch = epoch

    # ------------------------------------------------------------------ loops

    def _inputs(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        dev = self.rt.device
        inputs = {m: batch[m].to(dev, non_blocking=True) for m in self.cfg.modalities}
        return inputs, batch["label"].to(dev, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.rt.device.type, dtype=self.rt.amp_dtype, enabled=self.rt.amp_dtype is not None)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training split; returns the epoch's mean losses and accuracies."""
        cfg, model = self.cfg, self.ddp or self.model
        use_ssa = cfg.ssa and epoch >= cfg.ssa_start and len(cfg.modalities) > 1
        model.train()
        self.sampler.set_epoch(epoch)
        mods = cfg.modalities
        # sums over samples: total, ssa, ce per modality, correct per modality, count
        sums = np.zeros(3 + 2 * len(mods))
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch}/{cfg.epochs}" + (" +SSA" if use_ssa else ""),
            unit="batch",
            leave=False,
            disable=not (cfg.progress and self.rt.main),
        )
        cuda = self.rt.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.rt.device)
        steps_per_epoch = len(self.train_loader)
        started = waited = time.perf_counter()
        clip_paths: list[str] = []
        clip_ce: list[torch.Tensor] = []
        for i, batch in enumerate(bar):
            loaded = time.perf_counter()
            inputs, labels = self._inputs(batch)
            with self._autocast():
                out = model(inputs)
            ssa_now, perm = use_ssa, None
            if use_ssa and cfg.ssa_shuffle:
                # a batch of one clip cannot be shuffled: no SSA on that step
                ssa_now = len(labels) >= 2
                if ssa_now:
                    perm = shuffle_permutation(len(labels), cfg.seed, epoch, i, self.rt.rank).to(labels.device)
            losses = self.model.loss(out, labels, ssa=ssa_now, perm=perm)
            self._check_finite(losses, epoch, i + 1)
            clip_paths += list(batch["path"])
            clip_ce.append(losses.ce_per_sample.t().float().cpu())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = len(labels)
            correct = [float((out.logits[m].argmax(1) == labels).sum()) for m in mods]
            values = [losses.total.item(), losses.ssa.item(), *[losses.ce[m].item() for m in mods]]
            sums += [values[0] * n, values[1] * n, n, *[v * n for v in values[2:]], *correct]
            bar.set_postfix(loss=f"{values[0]:.3f}")
            done = time.perf_counter()
            step = (epoch - 1) * steps_per_epoch + i + 1
            if self.tb is not None and (step % cfg.log_every == 0 or i + 1 == steps_per_epoch):
                scalars = {
                    "train/loss": values[0],
                    "train/ssa": values[1],
                    "train/lr": self.optimizer.param_groups[0]["lr"],
                    **{f"train/ce/{m}": v for m, v in zip(mods, values[2:])},
                    **{f"train/ssa/{e}": v.item() for e, v in losses.ssa_by_endpoint.items()},
                    "perf/clips_per_s": n * self.rt.world / max(done - waited, 1e-9),
                    "perf/step_seconds": done - waited,
                    "perf/data_seconds": loaded - waited,
                    "perf/max_memory_mib": _max_memory_mib(self.rt.device),
                }
                add_scalars(self.tb, step, scalars)
            waited = time.perf_counter()
        seconds = time.perf_counter() - started
        sums = np.asarray(dd.all_sum(sums.tolist(), self.rt))
        sums = [float(v) for v in sums]  # plain floats: the history goes into weights_only checkpoints
        count = max(sums[2], 1.0)
        row = {"train/loss": sums[0] / count, "train/ssa": sums[1] / count}
        row |= {f"train/ce/{m}": sums[3 + i] / count for i, m in enumerate(mods)}
        row |= {f"train/top1/{m}": sums[3 + len(mods) + i] / count for i, m in enumerate(mods)}
        row["train/clips_per_s"] = sums[2] / max(seconds, 1e-9)
        row["train/max_memory_mib"] = _max_memory_mib(self.rt.device)
        if len(mods) > 1:
            parts = dd.gather((clip_paths, torch.cat(clip_ce) if clip_ce else torch.empty(0, len(mods))), self.rt)
            paths = [q for p in parts for q in p[0]]
            ce = torch.cat([p[1] for p in parts]).numpy().astype(np.float64)
            row |= focal_statistics(ce, paths, mods, cfg.beta, self.hard_clips)
            if self.rt.main and cfg.save_logits:
                save_train_ce(self.paths.logits(epoch, "train_ce"), paths, ce, mods, epoch, cfg.beta)
        return row

    def _check_finite(self, losses, epoch: int, step: int) -> None:
        """Stop before a step on an inf or NaN loss (every process alike), so no non-finite
        weights are ever stepped into or saved."""
        finite = bool(torch.isfinite(losses.total))
        if self.rt.distributed:
            finite = dd.all_sum([float(finite)], self.rt)[0] == self.rt.world
        if finite:
            return
        ce = ", ".join(f"{m} {v.item():.4g}" for m, v in losses.ce.items())
        kept = (
            f"{self.paths.checkpoint} keeps epoch {self.saved_epoch}" if self.saved_epoch >= 1 else "no epoch was saved"
        )
        raise DivergenceError(
            f"training diverged: the loss is {losses.total.item()} at epoch {epoch}, step {step} (CE {ce}; SSA "
            f"{losses.ssa.item():.4g}); stopped before stepping into non-finite weights, {kept}. Lower --lr "
            f"(now {self.lr:g}) or --lambda, and start a new run (--init-from {self.paths.checkpoint} keeps the "
            "weights)"
        )

    def evaluate(self, split: str, epoch: int) -> dict:
        """Top-1 per modality and fused, and confusion matrices, on ``split`` (all processes);
        the per-clip logits go to ``evals/epochNNN_SPLIT.npz`` (``--save-logits``)."""
        result: EvalResult = evaluate(
            self.model,
            self.eval_loaders[split],
            split,
            self.rt,
            fusion=self.cfg.fusion,
            progress=self.cfg.progress and self.rt.main,
        )
        if self.rt.main and self.cfg.save_logits:
            save_logits(result, self.paths.logits(epoch, split), epoch)
        return result.summary()

    def _update_best(self, epoch: int, row: dict) -> bool:
        """Whether ``epoch`` is the best so far by the validation metric (first maximum wins)."""
        value = row.get(self.best_metric)
        if value is None or (self.best is not None and value <= self.best["value"]):
            return False
        self.best = {"metric": self.best_metric, "value": float(value), "epoch": epoch}
        return True

    def run(self, stop_after: int | None = None) -> dict:
        """Train the remaining epochs, then evaluate; returns ``final_eval.json``'s content.

        ``stop_after=E`` (< ``cfg.epochs``) stops after epoch E with its checkpoint
        written, without the final evaluation: the trunk of a paired study, which a
        resume or a branch continues. Returns ``{"stopped_after": E}`` then.
        """
        cfg = self.cfg
        results: dict[str, dict] = {}
        last = cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)
        try:
            if self.rt.main:
                self._write_run_records()
            if self.rt.main and self.start_epoch == 1:
                sizes = ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items())
                self.say(
                    f"training {'+'.join(cfg.modalities)} on {cfg.data_root} ({sizes} clips), "
                    f"{self.rt.world} process(es) on {self.rt.device}, out {cfg.out}"
                )
            D.preload(self.datasets, cfg.progress and self.rt.main)
            first = self.start_epoch - 1 if self.pending else self.start_epoch
            for epoch in range(first, last + 1):
                if epoch < self.start_epoch:  # resumed: the checkpoint's epoch still needs its evaluation
                    row, splits = self.log.rows[-1], self.pending
                else:
                    started = time.perf_counter()
                    lr = self.optimizer.param_groups[0]["lr"]
                    row = {"epoch": epoch, "lr": lr, **self.train_epoch(epoch)}
                    self.scheduler.step()
                    row["train/seconds"] = time.perf_counter() - started
                    splits = self._eval_splits(epoch)
                    self.log.rows.append(row)
                    self.pending = splits
                    self._save(epoch)  # saved before evaluating: a failing evaluation keeps the epoch
                    if self.rt.main:
                        self.log.write()
                evals = {split: self.evaluate(split, epoch) for split in splits}
                self.pending = []
                if epoch == cfg.epochs:
                    results = evals
                for split, res in evals.items():
                    row |= {
                        f"{split}/{acc}/{k}": v
                        for acc in ("top1", "top5", "mean_class")
                        for k, v in res.get(acc, {}).items()
                    }
                    row |= {f"{split}/corr_dist/{e}": v for e, v in res.get("corr_dist", {}).items()}
                best = self._update_best(epoch, row)
                if self.rt.main:
                    self.log.write()
                    self.say(_epoch_line(row, cfg.ssa_start) + (" | best" if best else ""))
                    if self.tb is not None:
                        add_scalars(
                            self.tb,
                            epoch * len(self.train_loader),
                            {
                                f"epoch/{k}": float(v)
                                for k, v in row.items()
                                if k != "epoch" and isinstance(v, (int, float))
                            },
                        )
                        self.tb.flush()
                if splits or best:
                    self._save(epoch, best=best)
            if last < cfg.epochs:
                return {"stopped_after": last}
            if not results:  # resumed a finished run: evaluate its final weights
                results = {split: self.evaluate(split, cfg.epochs) for split in self.eval_loaders}
            final = {
                "epochs": cfg.epochs,
                "modalities": list(cfg.modalities),
                "splits": results,
                "best": self.best,
                "class_names": list(CLASS_NAMES),
                "config": cfg.to_dict(),
                "branched_from": self.branched_from,
            }
            if self.rt.main:
                self._write_outputs(final)
            return final
        except KeyboardInterrupt:
            kept = self.saved_epoch
            raise TrainingInterrupted(
                f"interrupted after epoch {kept}: {self.paths.checkpoint} holds it; resume with "
                f"{resume_command(cfg.out)}"
                if kept >= 1
                else "interrupted before the first epoch ended: nothing was saved; start the run again"
            ) from None
        finally:
            if self.tb is not None:
                self.tb.close()
            dd.teardown(self.rt)

    def _eval_splits(self, epoch: int) -> list[str]:
        """The splits evaluated after ``epoch``: every split after the last epoch; during
        training the validation split, and the test split only when asked to watch it."""
        if epoch == self.cfg.epochs:
            return list(self.eval_loaders)
        if self.cfg.eval_every and epoch % self.cfg.eval_every == 0:
            return [s for s in self.eval_loaders if s == "val" or (s == "test" and self.cfg.watch_test)]
        return []

    def _write_run_records(self) -> None:
        """``config.json`` (the resolved settings) and ``environment.json`` (versions,
        device, commit) of this start (a resume rewrites them)."""
        write_json_atomic(self.cfg.to_dict(), self.paths.root / "config.json")
        write_json_atomic(environment(self.rt.device, self.rt.world), self.paths.root / "environment.json")
        if self.datasets_skipped:
            self.say(
                f"--skip-bad: passed over {len(self.datasets_skipped)} bad list lines or clips:\n  "
                + "\n  ".join(self.datasets_skipped),
                error=True,
            )

    def _write_outputs(self, final: dict) -> None:
        write_json_atomic(final, self.paths.final)
        if self.cfg.plots:
            from .plots import plot_accuracy, plot_confusion, plot_losses  # matplotlib only when plotting

            rows = self.log.rows
            plot_losses(
                rows, self.paths.root / "loss.png", self.cfg.ssa_start if len(self.cfg.modalities) > 1 else None
            )
            plot_accuracy(rows, self.paths.root / "accuracy.png")
            for split, res in final["splits"].items():
                plot_confusion(
                    res["confusion"],
                    self.paths.root / f"confusion_{split}.png",
                    f"{split} split, epoch {final['epochs']}",
                )
        for split, res in final["splits"].items():
            self.say(accuracy_lines(split, res))


def focal_statistics(
    ce: np.ndarray, paths: list[str], modalities: tuple[str, ...], beta: float, hard: Mapping[str, bool] | None = None
) -> dict:
    """Where the paper's focal weight falls over one epoch's training clips.

    ``ce`` ``[N, M]``: every clip's per-sample CE (as the training step computed it, in
    float64). For each modality m the clip's weight is ``sum_n rho_mn`` with
    ``rho_mn = exp(beta * max(0, l_m - l_n)) - 1`` (whatever ``--focal`` the run uses: this
    is the weight the paper's SSA would give). Returns, per modality:
    ``train/focal/<m>/mean`` (mean weight per clip), ``train/focal/<m>/top10_share`` (the
    share of the epoch's total weight on the 10% of clips with the largest weights,
    rounded up) and, when ``hard`` (the generator's RGB-hard sidecar) knows the clips,
    ``train/focal/<m>/hard_share`` (the share on RGB-hard clips) and
    ``train/hard_fraction`` (the share of the clips that are hard). Shares are ``None``
    when the total weight is 0.
    """
    out: dict = {}
    if len(ce) == 0:
        return out
    gap = ce[:, :, None] - ce[:, None, :]  # [N, m, n]: l_m - l_n
    rho = np.expm1(beta * np.maximum(gap, 0.0)).sum(axis=2)  # [N, M]: weight on network m
    is_hard = None
    if hard:
        known = [p in hard for p in paths]
        if all(known):
            is_hard = np.array([bool(hard[p]) for p in paths])
            out["train/hard_fraction"] = float(is_hard.mean())
    k = max(1, math.ceil(0.1 * len(ce)))
    for i, m in enumerate(modalities):
        w = rho[:, i]
        total = float(w.sum())
        out[f"train/focal/{m}/mean"] = float(w.mean())
        out[f"train/focal/{m}/top10_share"] = float(np.sort(w)[::-1][:k].sum() / total) if total > 0 else None
        if is_hard is not None:
            out[f"train/focal/{m}/hard_share"] = float(w[is_hard].sum() / total) if total > 0 else None
    return out


def effective_lr(cfg: TrainConfig, world: int) -> float:
    """``cfg.lr``, times total batch / reference batch with ``lr_scaling="linear"``."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * cfg.batch_size * world / cfg.lr_reference_batch
    return cfg.lr


def open_tensorboard(logdir: Path):
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``logdir``, or None (with a one-line
    message) where the ``tensorboard`` package is not installed: training goes on without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(
            "[tensorboard] package not installed, training without TensorBoard scalars "
            "(pip install tensorboard; --no-tensorboard silences this)",
            flush=True,
        )
        return None
    return SummaryWriter(str(logdir))


def add_scalars(writer, step: int, scalars: Mapping[str, float]) -> None:
    """Each scalar under its own tag (SummaryWriter.add_scalars would make one run per tag)."""
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, step)


def _max_memory_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA memory allocated by torch on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def accuracy_lines(split: str, res: dict, where: str = "") -> str:
    """``test top-1 (3 clips): rgb 0.333, ...`` and a line of top-5 and mean class accuracy."""

    def accs(kind: str) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in res.get(kind, {}).items())

    line = f"{split} top-1 ({res['clips']} clips{where}): {accs('top1')}"
    if res.get("top5"):
        line += f"\n{split} top-5: {accs('top5')}; mean class accuracy: {accs('mean_class')}"
    return line


def _epoch_line(row: dict, ssa_start: int) -> str:
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.0e}", f"loss {row['train/loss']:.3f}"]
    if row["epoch"] >= ssa_start and row["train/ssa"]:
        parts.append(f"ssa {row['train/ssa']:.4f}")
    parts += [f"{k.removeprefix('train/top1/')} {v:.2f}" for k, v in row.items() if k.startswith("train/top1/")]
    parts += [
        f"{k.replace('/top1/', ' ')} {v:.3f}" for k, v in row.items() if "/top1/" in k and not k.startswith("train/")
    ]
    parts.append(f"{row['train/seconds']:.0f}s")
    return " | ".join(parts)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run (or resume) a training run; returns the final evaluation."""
    return Trainer(cfg, resume).run()
