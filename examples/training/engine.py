"""The training loop: epochs, evaluation, checkpoints, resume, metric files, plots."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from examples.data import CLASS_NAMES, NUM_CLASSES

from ..mtut_model import MTUTModel, SSAConfig
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
from .config import RESUMABLE_CHANGES, Paths, TrainConfig, parse_pretrained, validate
from .evaluation import EvalResult, evaluate, save_logits
from .metrics import MetricsLog
from .tensorboard import ScalarWriter


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_model(cfg: TrainConfig, verbose: bool = True) -> MTUTModel:
    """The MTUT model of ``cfg`` (pretrained weights loaded, their reports printed when ``verbose``)."""
    ssa = SSAConfig(beta=cfg.beta, lambda_=cfg.lambda_, distance=cfg.distance, algo=cfg.algo, pair_cap=cfg.pair_cap,
                    backend=cfg.ssa_backend, inputs_fp32=cfg.ssa_fp32)
    model = MTUTModel(cfg.modalities, NUM_CLASSES, width=cfg.width, dropout=cfg.dropout,
                      ssa_endpoints=cfg.ssa_endpoints, ssa=ssa)
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
        raise ValueError(f"--init-from {path}: " + ("; ".join(problems) if problems else
                         f"holds no network of {list(model.modalities)} (keys like nets.rgb.*)"))
    return loaded


def check_resumable(saved: Mapping, cfg: TrainConfig) -> None:
    """Raise ``ValueError`` listing the settings of ``cfg`` that differ from a checkpoint's
    ``saved`` config in ways that would change the run's trajectory."""
    current = cfg.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in current.items()
             if k not in RESUMABLE_CHANGES and _norm(saved.get(k)) != _norm(v)]
    if diffs:
        raise ValueError("--resume: the run was started with other settings (they would change its "
                         "trajectory):\n  " + "\n  ".join(diffs))


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


class Trainer:
    """Trains an :class:`~examples.mtut_model.MTUTModel` as ``cfg`` says.

    One process, or one of several under ``torchrun`` (DDP). Every epoch ends with an
    atomically written checkpoint (``last.pt``) holding the model, optimizer, scheduler,
    grad scaler, the epoch and every process's RNG states, so ``resume=True`` continues
    the same trajectory an uninterrupted run would follow.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        validate(cfg)
        self.cfg = cfg
        self.rt = dd.setup(cfg.device, cfg.amp)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.paths = Paths(Path(cfg.out))
        if self.paths.checkpoint.exists() and not resume:
            raise ValueError(f"--out {cfg.out} already holds a run (last.pt): pass --resume to continue it, "
                             "or choose another --out")
        seed_everything(cfg.seed)  # the same initial weights in every process
        self.model = build_model(cfg, verbose=self.rt.main).to(self.rt.device)
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.rt.device.index]
                                           if self.rt.device.type == "cuda" else None) if self.rt.distributed else None
        self.lr = effective_lr(cfg, self.rt.world)
        if self.rt.main and self.lr != cfg.lr:
            print(f"--lr-scaling linear: lr {cfg.lr:g} x total batch {cfg.batch_size * self.rt.world} / "
                  f"{cfg.lr_reference_batch} = {self.lr:g}")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(cfg.lr_steps), cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.rt.amp_dtype == torch.float16)
        seed_everything(cfg.seed + 1000 * self.rt.rank)  # different augmentations per process
        self.datasets = D.build_datasets(cfg)
        self.train_loader, self.sampler = D.train_loader(self.datasets["train"], cfg, self.rt.rank, self.rt.world)
        self.eval_loaders = {name: D.eval_loader(ds, cfg, self.rt.rank, self.rt.world)
                             for name, ds in self.datasets.items() if name != "train"}
        self.start_epoch = 1
        # best.pt: chosen by a validation top-1 only (never by the test split)
        self.best_metric = f"val/top1/{cfg.modalities[0] if cfg.best_metric == 'auto' else cfg.best_metric}"
        self.best: dict | None = None  # {"metric", "value", "epoch"}
        if self.rt.main and "val" not in self.eval_loaders:
            print("no validation split (--val-subjects K): no best.pt and no evaluation during training; the "
                  "test split is evaluated after the last epoch" + (" and watched (--watch-test)"
                                                                   if cfg.watch_test else ""))
        history: list[dict] = []
        if resume and self.paths.checkpoint.exists():
            history = self._restore(load_checkpoint(self.paths.checkpoint))
        elif resume:
            raise FileNotFoundError(f"--resume: no checkpoint at {self.paths.checkpoint}")
        self.log = MetricsLog(self.paths.metrics_json, self.paths.metrics_csv, history)
        self.tb = ScalarWriter(self.paths.root / "tb") if cfg.tensorboard and self.rt.main else None

    # ------------------------------------------------------------------ state

    def _restore(self, ckpt: dict) -> list[dict]:
        check_resumable(ckpt["config"], self.cfg)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        states = ckpt["rng"]
        if len(states) != self.rt.world:
            raise ValueError(f"--resume: the checkpoint was written by {len(states)} processes, this run has "
                             f"{self.rt.world}; resume with the same number to continue exactly")
        set_rng_state(states[self.rt.rank])
        self.start_epoch = ckpt["epoch"] + 1
        self.best = ckpt.get("best")
        if self.rt.main:
            print(f"resumed {self.paths.checkpoint} after epoch {ckpt['epoch']}")
        return ckpt["history"]

    def _save(self, epoch: int, best: bool = False) -> None:
        """``last.pt`` (and ``best.pt`` when this epoch is the best so far on validation)."""
        states = dd.gather(rng_state(), self.rt)  # every process's RNG, captured after its epoch
        if self.rt.main:
            ckpt = {
                "format": CHECKPOINT_FORMAT, "epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": states, "config": self.cfg.to_dict(),
                "history": self.log.rows, "best": self.best,
            }
            if best:
                save_atomic(ckpt, self.paths.best)
            save_atomic(ckpt, self.paths.checkpoint)

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
        use_ssa = epoch >= cfg.ssa_start and len(cfg.modalities) > 1
        model.train()
        self.sampler.set_epoch(epoch)
        mods = cfg.modalities
        # sums over samples: total, ssa, ce per modality, correct per modality, count
        sums = np.zeros(3 + 2 * len(mods))
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{cfg.epochs}" + (" +SSA" if use_ssa else ""),
                   unit="batch", leave=False, disable=not (cfg.progress and self.rt.main))
        cuda = self.rt.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.rt.device)
        steps_per_epoch = len(self.train_loader)
        started = waited = time.perf_counter()
        for i, batch in enumerate(bar):
            loaded = time.perf_counter()
            inputs, labels = self._inputs(batch)
            with self._autocast():
                out = model(inputs)
            losses = self.model.loss(out, labels, ssa=use_ssa)
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
                scalars = {"train/loss": values[0], "train/ssa": values[1], "train/lr": self.optimizer.param_groups[0]["lr"],
                           **{f"train/ce/{m}": v for m, v in zip(mods, values[2:])},
                           **{f"train/ssa/{e}": v.item() for e, v in losses.ssa_by_endpoint.items()},
                           "perf/clips_per_s": n * self.rt.world / max(done - waited, 1e-9),
                           "perf/step_seconds": done - waited, "perf/data_seconds": loaded - waited,
                           "perf/max_memory_mib": _max_memory_mib(self.rt.device)}
                self.tb.add_scalars(step, scalars)
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
        return row

    def evaluate(self, split: str, epoch: int) -> dict:
        """Top-1 per modality and fused, and confusion matrices, on ``split`` (all processes);
        the per-clip logits go to ``evals/epochNNN_SPLIT.npz`` (``--save-logits``)."""
        result: EvalResult = evaluate(self.model, self.eval_loaders[split], split, self.rt, fusion=self.cfg.fusion,
                                      progress=self.cfg.progress and self.rt.main)
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

    def run(self) -> dict:
        """Train the remaining epochs, then evaluate; returns ``final_eval.json``'s content."""
        cfg = self.cfg
        results: dict[str, dict] = {}
        try:
            if self.rt.main and self.start_epoch == 1:
                sizes = ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items())
                print(f"training {'+'.join(cfg.modalities)} on {cfg.data_root} ({sizes} clips), "
                      f"{self.rt.world} process(es) on {self.rt.device}, out {cfg.out}")
            D.preload(self.datasets, cfg.progress and self.rt.main)
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                row = {"epoch": epoch, "lr": lr, **self.train_epoch(epoch)}
                self.scheduler.step()
                row["train/seconds"] = time.perf_counter() - started
                if epoch == cfg.epochs:
                    evals = results = {split: self.evaluate(split, epoch) for split in self.eval_loaders}
                elif cfg.eval_every and epoch % cfg.eval_every == 0:
                    # during training: the validation split; the test split only when asked to watch it
                    splits = [s for s in self.eval_loaders if s == "val" or (s == "test" and cfg.watch_test)]
                    evals = {split: self.evaluate(split, epoch) for split in splits}
                else:
                    evals = {}
                for split, res in evals.items():
                    row |= {f"{split}/top1/{k}": v for k, v in res["top1"].items()}
                best = self._update_best(epoch, row)
                if self.rt.main:
                    self.log.append(row)
                    print(_epoch_line(row, cfg.ssa_start) + (" | best" if best else ""), flush=True)
                    if self.tb is not None:
                        self.tb.add_scalars(epoch * len(self.train_loader), {
                            f"epoch/{k}": float(v) for k, v in row.items()
                            if k != "epoch" and isinstance(v, (int, float))})
                        self.tb.flush()
                self._save(epoch, best=best)
            if not results:  # resumed a finished run: evaluate its final weights
                results = {split: self.evaluate(split, cfg.epochs) for split in self.eval_loaders}
            final = {"epochs": cfg.epochs, "modalities": list(cfg.modalities), "splits": results,
                     "best": self.best, "class_names": list(CLASS_NAMES), "config": cfg.to_dict()}
            if self.rt.main:
                self._write_outputs(final)
            return final
        finally:
            if self.tb is not None:
                self.tb.close()
            dd.teardown(self.rt)

    def _write_outputs(self, final: dict) -> None:
        write_json_atomic(final, self.paths.final)
        if self.cfg.plots:
            from .plots import plot_accuracy, plot_confusion, plot_losses  # matplotlib only when plotting

            rows = self.log.rows
            plot_losses(rows, self.paths.root / "loss.png",
                        self.cfg.ssa_start if len(self.cfg.modalities) > 1 else None)
            plot_accuracy(rows, self.paths.root / "accuracy.png")
            for split, res in final["splits"].items():
                plot_confusion(res["confusion"], self.paths.root / f"confusion_{split}.png",
                               f"{split} split, epoch {final['epochs']}")
        for split, res in final["splits"].items():
            accs = ", ".join(f"{k} {v:.3f}" for k, v in res["top1"].items())
            print(f"{split} top-1 ({res['clips']} clips): {accs}")


def effective_lr(cfg: TrainConfig, world: int) -> float:
    """``cfg.lr``, times total batch / reference batch with ``lr_scaling="linear"``."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * cfg.batch_size * world / cfg.lr_reference_batch
    return cfg.lr


def _max_memory_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA memory allocated by torch on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _epoch_line(row: dict, ssa_start: int) -> str:
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.0e}", f"loss {row['train/loss']:.3f}"]
    if row["epoch"] >= ssa_start and row["train/ssa"]:
        parts.append(f"ssa {row['train/ssa']:.4f}")
    parts += [f"{k.removeprefix('train/top1/')} {v:.2f}" for k, v in row.items() if k.startswith("train/top1/")]
    parts += [f"{k.replace('/top1/', ' ')} {v:.3f}" for k, v in row.items() if "/top1/" in k and
              not k.startswith("train/")]
    parts.append(f"{row['train/seconds']:.0f}s")
    return " | ".join(parts)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run (or resume) a training run; returns the final evaluation."""
    return Trainer(cfg, resume).run()
