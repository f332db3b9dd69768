"""Benchmark the SSA loss against what users would otherwise run.

In one process and one run, on one device, for named I3D shapes and two sweeps:
  mmpose-eager    the published mmpose formulation (builds every d x d K_m)
  mtut-reference  mtut_ops.reference, the spec written literally (builds K too)
  mmpose-compile  the same under torch.compile
  gram-eager      a hand-written eager Gram-identity version (no d x d)
  mtut-<backend>-<algo>  our fused op, algo in direct / gram / auto
Times forward, backward and forward+backward (median and 20/80% quantiles after
warm-up) and the peak memory of one forward+backward above what was held before.
Writes CSV + JSON + a markdown summary + a plot to bench/results/.

  python -m bench.bench_ssa --device cpu                     # the CPU run of README
  python -m bench.bench_ssa --device cuda --dtype float32 bfloat16
  python -m bench.bench_ssa --device cpu --shapes mixed4f --impls mtut-cpu-gram
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

import mtut_ops
from bench.baselines import gram_identity_ssa_loss, mmpose_ssa_loss

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Shape:
    name: str
    N: int
    channels: tuple
    spatial: tuple
    note: str = ""

    @property
    def d(self) -> int:
        return math.prod(self.spatial)


NAMED = [
    Shape("mixed5c_224", 6, (1024, 1024), (8, 7, 7), "I3D Mixed_5c, 64x224x224 input"),
    Shape("mixed5c_112", 6, (1024, 1024), (2, 3, 3), "I3D Mixed_5c, small input"),
    Shape("mixed4f", 6, (832, 832), (16, 14, 14), "I3D Mixed_4f, 64x224x224 input"),
    Shape("mixed3c", 6, (480, 480), (32, 28, 28), "I3D Mixed_3c, 64x224x224 input"),
    Shape("mixed5c_224_m3", 6, (1024, 1024, 1024), (8, 7, 7), "Mixed_5c, 3 modalities"),
]
SWEEP_D = [Shape(f"sweep_d{d}", 6, (256, 256), (d,), "d sweep at C=256") for d in (64, 256, 1024, 4096)]
SWEEP_C = [Shape(f"sweep_c{c}", 6, (c, c), (8, 7, 7), "C sweep at d=392") for c in (64, 256, 1024, 2048)]
SHAPES = {s.name: s for s in NAMED + SWEEP_D + SWEEP_C}


# ------------------------------------------------------------------ cost models


def flops(shape: Shape, algo: str) -> float:
    """Multiply-adds x2 of one forward of the given algorithm (for achieved FLOP/s)."""
    C, d, N, M = sum(shape.channels), shape.d, shape.N, len(shape.channels)
    if algo == "naive":  # every K_m in full
        return 2.0 * N * d * d * C
    if algo == "direct":  # upper triangle of every K_m
        return 1.0 * N * d * d * C
    if algo == "gram":  # the blocks G_mn, n >= m
        return 1.0 * N * d * (C * C + sum(c * c for c in shape.channels))
    raise ValueError(algo)


def naive_bytes(shape: Shape, elem: int) -> int:
    """A lower bound on what the mmpose code holds at once: every K_m and one difference."""
    M = len(shape.channels)
    return (M + 2) * shape.N * shape.d * shape.d * elem


# ------------------------------------------------------------------ measuring


class Meter:
    """Times and peak memory on one device."""

    def __init__(self, device: torch.device):
        self.device = device
        self._libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    @staticmethod
    def _status_kb(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

    def peak_extra_bytes(self, fn: Callable[[], None]) -> int:
        """Peak memory of fn() above what was held before it (CUDA allocator or process RSS)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            fn()
            self.sync()
            return torch.cuda.max_memory_allocated(self.device) - before
        if self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed pages back, so RSS is what is live
        before = self._status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
        fn()
        return max(0, self._status_kb("VmHWM") - before) * 1024


@dataclass
class Row:
    shape: str
    impl: str
    dtype: str
    N: int
    channels: str
    d: int
    status: str = "ok"
    fwd_ms: Optional[float] = None
    bwd_ms: Optional[float] = None
    total_ms: Optional[float] = None
    total_p20_ms: Optional[float] = None
    total_p80_ms: Optional[float] = None
    peak_mb: Optional[float] = None
    gflops: Optional[float] = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def quantile(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def make_inputs(shape: Shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(shape.N, c, *shape.spatial, generator=g).to(device=device, dtype=dtype) for c in shape.channels]
    ce = (torch.rand(len(shape.channels), shape.N, generator=g) * 3).to(device)
    return feats, ce


def impl_table(device: torch.device, algos=("direct", "gram", "auto")):
    """name -> (loss fn(feats, ce), algo for the FLOP model)."""
    impls = {
        "mmpose-eager": (lambda f, ce: mmpose_ssa_loss(f, ce), "naive"),
        "mmpose-compile": (torch.compile(lambda f, ce: mmpose_ssa_loss(f, ce)), "naive"),
        "gram-eager": (lambda f, ce: gram_identity_ssa_loss(f, ce), "gram"),
    }
    impls["mtut-reference"] = (lambda f, ce: mtut_ops.ssa_loss(f, ce, pair_cap=10.0, backend="reference"), "naive")
    for backend in mtut_ops.available_backends(device):
        if backend == "reference":
            continue
        for algo in algos:
            impls[f"mtut-{backend}-{algo}"] = (
                (lambda f, ce, b=backend, a=algo: mtut_ops.ssa_loss(f, ce, algo=a, pair_cap=10.0, backend=b)),
                algo,
            )
    return impls


def bench_one(meter: Meter, shape: Shape, name: str, fn, algo: str, dtype, args) -> Row:
    device = meter.device
    row = Row(shape.name, name, str(dtype).replace("torch.", ""), shape.N, "x".join(map(str, shape.channels)), shape.d)
    elem = torch.finfo(dtype).bits // 8
    if algo == "auto":
        algo = mtut_ops._validation.resolve_algo("auto", shape.d, shape.channels)
        row.note = f"auto -> {algo}"
    if algo == "naive" and naive_bytes(shape, elem) > args.naive_limit_gb * 2**30:
        row.status = "oom"
        row.note = (
            f"not run: the d x d matrices alone need >= {naive_bytes(shape, elem) / 2**30:.1f} GiB "
            f"(limit {args.naive_limit_gb} GiB)"
        )
        return row
    # Forward + backward is about 4 forwards of work; an algorithm far off its regime
    # (direct at Mixed_3c: ~3.6 TFLOP a forward) is recorded, not run.
    work = 4 * flops(shape, algo) / 1e9
    if work > args.max_gflop:
        row.status = "skipped"
        row.note = (row.note + f"; not run: ~{work:,.0f} GFLOP per forward+backward (limit {args.max_gflop:,.0f})").lstrip("; ")
        return row
    feats, ce = make_inputs(shape, dtype, device)

    def fwd():
        return fn([f.detach().requires_grad_() for f in feats], ce)

    def fwd_bwd():
        xs = [f.detach().requires_grad_() for f in feats]
        fn(xs, ce).backward()

    try:
        for _ in range(args.warmup):
            fwd_bwd()
        row.peak_mb = meter.peak_extra_bytes(fwd_bwd) / 2**20
        f_times, b_times, t_times = [], [], []
        deadline = time.perf_counter() + args.max_seconds
        for i in range(args.repeats):
            xs = [f.detach().requires_grad_() for f in feats]
            t0 = meter.now()
            loss = fn(xs, ce)
            t1 = meter.now()
            loss.backward()
            t2 = meter.now()
            f_times.append(t1 - t0)
            b_times.append(t2 - t1)
            t_times.append(t2 - t0)
            if time.perf_counter() > deadline and i >= 2:
                row.note = (row.note + f"; {i + 1} repeats (time budget)").lstrip("; ")
                break
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if "memory" not in str(e).lower():
            raise
        row.status = "oom"
        row.note = str(e).splitlines()[0][:120]
        return row
    row.fwd_ms = 1e3 * statistics.median(f_times)
    row.bwd_ms = 1e3 * statistics.median(b_times)
    row.total_ms = 1e3 * statistics.median(t_times)
    row.total_p20_ms = 1e3 * quantile(t_times, 0.2)
    row.total_p80_ms = 1e3 * quantile(t_times, 0.8)
    row.gflops = flops(shape, algo) / (row.fwd_ms * 1e-3) / 1e9
    row.extra["loss"] = float(loss)
    return row


def environment(device: torch.device) -> dict:
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "mtut": mtut_ops.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        with contextlib.suppress(ImportError):
            import triton

            env["triton"] = triton.__version__
    else:
        with contextlib.suppress(OSError, StopIteration):
            env["device_name"] = next(
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            )
        env["cores"] = os.cpu_count()
    return env


# ------------------------------------------------------------------ reporting


def write_results(rows: list[Row], env: dict, stem: str) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS / f"{stem}.csv", RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"]
    cols = [k for k in asdict(rows[0]) if k != "extra"]
    with open(paths[0], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: v for k, v in asdict(r).items() if k != "extra"})
    paths[1].write_text(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=1))
    paths[2].write_text(summary_markdown(rows, env))
    with contextlib.suppress(ImportError):
        paths.append(plot(rows, env, RESULTS / f"{stem}.png"))
    return paths


def fmt(v, unit=""):
    return "—" if v is None else (f"{v:,.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}")


def summary_markdown(rows: list[Row], env: dict) -> str:
    lines = [
        f"# SSA loss benchmark: {env.get('device_name', env['device'])}",
        "",
        f"{env['date']} · torch {env['torch']} · {env['threads']} threads · OMP_WAIT_POLICY {env['omp_wait_policy']}"
        f" · load average before the run {env.get('load_average')}",
        "",
        "Forward + backward of the whole SSA loss (pair_cap 10, mmpose's), median over repeats after warm-up;"
        " peak = memory above what was held before one forward + backward. "
        "Speed-up and memory ratio are against mmpose-eager.",
        "",
    ]
    for dtype in sorted({r.dtype for r in rows}):
        for shape in dict.fromkeys(r.shape for r in rows):
            group = [r for r in rows if r.shape == shape and r.dtype == dtype]
            if not group:
                continue
            s = SHAPES.get(shape)
            base = next((r for r in group if r.impl == "mmpose-eager" and r.status == "ok"), None)
            lines += [
                f"## {shape} ({dtype}): N={group[0].N}, C={group[0].channels}, d={group[0].d}" + (f" — {s.note}" if s else ""),
                "",
                "| impl | fwd ms | bwd ms | fwd+bwd ms (p20–p80) | peak MB | speed-up | memory ratio | note |",
                "|---|---:|---:|---:|---:|---:|---:|---|",
            ]
            for r in group:
                if r.status != "ok":
                    lines.append(f"| {r.impl} | — | — | {r.status} | — | — | — | {r.note} |")
                    continue
                speed = f"{base.total_ms / r.total_ms:.2f}x" if base else "—"
                mem = f"{base.peak_mb / max(r.peak_mb, 1e-3):.1f}x" if base and r.peak_mb else "—"
                lines.append(
                    f"| {r.impl} | {fmt(r.fwd_ms)} | {fmt(r.bwd_ms)} | {fmt(r.total_ms)} ({fmt(r.total_p20_ms)}–{fmt(r.total_p80_ms)})"
                    f" | {fmt(r.peak_mb)} | {speed} | {mem} | {r.note} |"
                )
            lines.append("")
    return "\n".join(lines)


def plot(rows: list[Row], env: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok"]
    shapes = list(dict.fromkeys(r.shape for r in rows))
    impls = list(dict.fromkeys(r.impl for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax, key, label in ((axes[0], "total_ms", "forward + backward (ms)"), (axes[1], "peak_mb", "peak extra memory (MB)")):
        width = 0.8 / max(1, len(impls))
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, s in enumerate(shapes):
                r = next((r for r in ok if r.shape == s and r.impl == impl), None)
                if r is not None and getattr(r, key):
                    xs.append(i + (k - len(impls) / 2) * width)
                    ys.append(getattr(r, key))
            ax.bar(xs, ys, width=width, label=impl)
        for i, s in enumerate(shapes):  # mark the baselines that could not run
            if any(r.shape == s and r.status == "oom" for r in rows):
                ax.annotate("naive: OOM", (i, 1), rotation=90, fontsize=7, ha="center", xycoords=("data", "axes fraction"), va="top")
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"SSA loss, {env.get('device_name', env['device'])}, torch {env['torch']}, {env['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--shapes", nargs="+", default=[s.name for s in NAMED + SWEEP_D + SWEEP_C], choices=list(SHAPES))
    p.add_argument("--impls", nargs="+", default=None, help="subset of implementations (default: all available)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=30.0, help="time budget per (shape, impl) after warm-up")
    p.add_argument("--max-gflop", type=float, default=2000.0,
                   help="skip (as 'skipped') an implementation whose forward+backward needs more GFLOP")
    p.add_argument("--naive-limit-gb", type=float, default=12.0, help="skip (as OOM) naive runs needing more")
    p.add_argument("--tag", default=None, help="name of the result files (default: <device>-<date>)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    meter = Meter(device)
    env = environment(device)
    impls = impl_table(device)
    if args.impls:
        unknown = set(args.impls) - set(impls)
        if unknown:
            p.error(f"unknown --impls {sorted(unknown)}; available: {sorted(impls)}")
        impls = {k: v for k, v in impls.items() if k in args.impls}
    rows = []
    total = len(args.dtype) * len(args.shapes) * len(impls)
    k = 0
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for shape_name in args.shapes:
            shape = SHAPES[shape_name]
            for name, (fn, algo) in impls.items():
                k += 1
                t0 = time.perf_counter()
                row = bench_one(meter, shape, name, fn, algo, dtype, args)
                rows.append(row)
                print(
                    f"[{k}/{total}] {dtype_name} {shape_name:16s} {name:20s} {row.status:4s} "
                    f"fwd+bwd {fmt(row.total_ms, ' ms'):>12s} peak {fmt(row.peak_mb, ' MB'):>10s} "
                    f"({time.perf_counter() - t0:.0f} s) {row.note}",
                    flush=True,
                )
    stem = args.tag or f"{device.type}-{env['date'][:10]}"
    for path in write_results(rows, env, stem):
        print("wrote", path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


if __name__ == "__main__":
    main()
