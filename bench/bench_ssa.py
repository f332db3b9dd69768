"""Benchmark the SSA loss against the best code a user would otherwise write (docs/design.md §6).

For each shape and dtype, in one process, on one device:
  mmpose-eager     the published mmpose formulation (builds every d x d K_m)
  mmpose-compile   the same under torch.compile (a fresh compiled object per shape)
  expert-eager     the expert eager Gram code: one bmm(X, X.detach()^T) over the stacked
                   modalities, float64 block sums, student-only gradient by a surrogate
  expert-compile   the same under torch.compile
  mtut-<backend>-<algo>  our op, algo in direct / gram / auto
  (opt-in: gram-eager, the weaker per-pair Gram variant; mtut-reference, the spec)

1. Every implementation runs forward + backward (warm-up, compilation included, not
   timed); then all must agree on the loss and on each modality's gradient norm within
   ``agreement_rtol`` of their median. One that does not is reported loudly and not timed.
2. Timing rounds: round r runs every implementation once, forward + backward (the start
   rotates by one each round, so no implementation always follows the same one), so a
   change of the machine's load hits all alike. Per implementation: median and p20/p80
   of the rounds; speed-ups against the baselines are ratios of the *same round's* times,
   reported as their median and a distribution-free interval of that median.
3. CPU times by perf_counter; CUDA times by CUDA events with a 256 MB buffer zeroed
   before every call (flushes the L2, as triton.testing.do_bench does). Peak memory of
   every timed call above what was held before it (process RSS / CUDA allocator).
4. The environment (date, versions, threads, load average before and after every shape)
   goes with the results: bench/results/<device>-<date>.{csv,json,md,png}.

  python -m bench.bench_ssa --device cpu                           # everything (hours on 2 cores)
  python -m bench.bench_ssa --device cpu --shapes mixed4f --repeats 5
  python -m bench.bench_ssa --device cuda --dtype float32 tf32 bfloat16
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

import mtut_ops
from bench.baselines import expert_gram_ssa_loss, gram_identity_ssa_loss, mmpose_ssa_loss
from bench.costs import Problem, active_pairs, flops, naive_bytes

RESULTS = Path(__file__).resolve().parent / "results"
#: what speed-ups are measured against: baseline -> the attribute stem of Row
BASELINES = {"mmpose-eager": "mmpose", "expert-eager": "expert", "expert-compile": "expert_compile"}


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

    @property
    def problem(self) -> Problem:
        return Problem(self.N, tuple(self.channels), self.d)


def _i3d(name, C, spatial, note, M):
    return Shape(
        name if M == 2 else f"{name}_m{M}", 6, (C,) * M, spatial, note + ("" if M == 2 else f", {M} modalities")
    )


NAMED = [
    _i3d(n, C, s, note, M)
    for M in (2, 3)
    for n, C, s, note in [
        ("mixed5c_224", 1024, (8, 7, 7), "I3D Mixed_5c, 64x224x224 input"),
        ("mixed5c_112", 1024, (2, 3, 3), "I3D Mixed_5c, 32x112x112 input"),
        ("mixed4f", 832, (16, 14, 14), "I3D Mixed_4f, 64x224x224 input"),
        ("mixed3c", 480, (32, 28, 28), "I3D Mixed_3c, 64x224x224 input"),
    ]
]
SWEEP_D = [Shape(f"sweep_d{d}", 6, (256, 256), (d,), "d sweep at C=256") for d in (64, 256, 1024, 4096)]
SWEEP_C = [Shape(f"sweep_c{c}", 6, (c, c), (8, 7, 7), "C sweep at d=392") for c in (64, 256, 1024, 2048)]
SHAPES = {s.name: s for s in NAMED + SWEEP_D + SWEEP_C}
DTYPES = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


# ------------------------------------------------------------------ implementations


@dataclass
class Impl:
    name: str
    kind: str  # the work model of bench.costs.flops ("naive", "expert", ..., or "mtut:<algo>")
    make: Callable[[], Callable]  # a fresh loss fn (feats, ce) -> scalar, made once per shape
    compiled: bool = False


def _compiled(fn):
    def make():  # a fresh compiled object per shape (run_shape resets dynamo's caches first)
        return torch.compile(fn, dynamic=False)

    return make


def impl_table(device: torch.device, algos=("direct", "gram", "auto")) -> dict:
    mmpose = lambda f, ce: mmpose_ssa_loss(f, ce)  # noqa: E731
    expert = lambda f, ce: expert_gram_ssa_loss(f, ce)  # noqa: E731
    impls = [
        Impl("mmpose-eager", "naive", lambda: mmpose),
        Impl("mmpose-compile", "naive", _compiled(mmpose), compiled=True),
        Impl("expert-eager", "expert", lambda: expert),
        Impl("expert-compile", "expert", _compiled(expert), compiled=True),
        Impl("gram-eager", "gram-pairs", lambda: lambda f, ce: gram_identity_ssa_loss(f, ce)),
        Impl(
            "mtut-reference",
            "naive",
            lambda: lambda f, ce: mtut_ops.ssa_loss(f, ce, pair_cap=10.0, backend="reference"),
        ),
    ]
    for backend in mtut_ops.available_backends(device):
        if backend == "reference":
            continue
        for algo in algos:

            def fn(f, ce, b=backend, a=algo):
                return mtut_ops.ssa_loss(f, ce, algo=a, pair_cap=10.0, backend=b)

            impls.append(Impl(f"mtut-{backend}-{algo}", f"mtut-{backend}:{algo}", (lambda fn=fn: fn)))
    return {i.name: i for i in impls}


OPT_IN = ("gram-eager", "mtut-reference")  # not in the default set


def resolved_kind(impl: Impl, shape: Shape, dtype: torch.dtype) -> tuple:
    """(cost kind for bench.costs.flops, note): mtut kinds name their resolved algorithm."""
    if not impl.kind.startswith("mtut-"):
        return impl.kind, ""
    backend, algo = impl.kind[len("mtut-") :].split(":")
    note = ""
    if algo == "auto":
        algo = mtut_ops._validation.resolve_algo("auto", shape.d, shape.channels, backend, dtype)
        note = f"auto -> {algo}"
    # the CUDA / triton kernels do other work than the cpu ones (bench/gpu_model.py counts
    # them); for achieved FLOP/s their useful work is the cpu algorithm's
    return f"cpu-{algo}", note


# ------------------------------------------------------------------ measuring


def loadavg():
    return tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None


class Meter:
    """Times and peak memory on one device."""

    def __init__(self, device: torch.device, flush_bytes: int = 256 * 2**20):
        self.device = device
        self._libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
        self._before = 0
        self.flush = (
            torch.empty(flush_bytes // 4, dtype=torch.float32, device=device) if device.type == "cuda" else None
        )

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    @staticmethod
    def _status_kb(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

    def begin_peak(self):
        """Start a peak-memory window (outside any timed region)."""
        gc.collect(1)  # the young generations (a full collection takes ~0.5 s with torch loaded)
        if self.device.type == "cuda":
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed pages back, so RSS is what is live
        self._before = self._status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)

    def end_peak(self) -> int:
        """Bytes above what was held at begin_peak (CUDA allocator or process RSS)."""
        if self.device.type == "cuda":
            self.sync()
            return torch.cuda.max_memory_allocated(self.device) - self._before
        return max(0, self._status_kb("VmHWM") - self._before) * 1024

    def peak_extra_bytes(self, fn: Callable[[], None]) -> int:
        self.begin_peak()
        fn()
        return self.end_peak()

    def fwd_bwd(self, fn, feats, ce) -> tuple:
        """(forward s, backward s, loss) of one forward + backward on fresh leaves."""
        xs = [f.detach().requires_grad_() for f in feats]
        if self.device.type == "cuda":
            self.flush.zero_()  # evict the L2: no call finds its inputs cached by the last one
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            ev[0].record()
            loss = fn(xs, ce)
            ev[1].record()
            loss.backward()
            ev[2].record()
            torch.cuda.synchronize(self.device)
            return ev[0].elapsed_time(ev[1]) / 1e3, ev[1].elapsed_time(ev[2]) / 1e3, loss
        t0 = time.perf_counter()
        loss = fn(xs, ce)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, loss


def quantile(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median_interval(xs, conf: float = 0.9) -> tuple:
    """(lo, hi, coverage): order statistics x_(j) <= median <= x_(n+1-j) with the narrowest
    j whose distribution-free coverage 1 - 2 P(Binom(n, 1/2) < j) is >= conf (or j = 1, the
    min and max, with the coverage they give: 75% for 3 values, 94% for 5)."""
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None, None, 0.0

    def coverage(j):
        return 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= conf:
        j += 1
    return xs[j - 1], xs[n - j], coverage(j)


# ------------------------------------------------------------------ agreement


def unit_roundoff(dtype_name: str) -> tuple:
    """(u of the accumulation, u of the operands where they are rounded before the products)."""
    return {
        "float64": (2.0**-53, 0.0),
        "float32": (2.0**-24, 0.0),
        "tf32": (2.0**-24, 2.0**-11),  # TF32 keeps 10 explicit mantissa bits
        "bfloat16": (2.0**-24, 2.0**-8),  # 7 explicit bits; the baselines also round K, H to bf16
        "float16": (2.0**-24, 2.0**-11),
    }[dtype_name]


def agreement_rtol(dtype_name: str, shape: Shape) -> float:
    """How far two correct implementations may be apart, relative, in the loss and in each
    modality's gradient norm.

    Every implementation computes sums of L = max(d, C) products (K or G entries) in the
    accumulation precision u. Treating rounding errors as independent and mean-zero
    (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019), a sum of L terms is off by at most
    lambda sqrt(L) u relative to the sum of magnitudes, with probability >= 1 -
    2 exp(-lambda^2 / 2) (lambda = 6: ~3e-8). The Gram identity S = t_mm - 2 t_mn + t_nn
    amplifies that by kappa = (t_mm + 2 t_mn + t_nn) / S, ~1.5 for unrelated features and
    below 3 wherever the modalities are not near-identical; the loss sums sqrt(S) (half the
    relative error) and the gradient weights move by |dS| / (2 S). So with a factor 2 on
    top for the two implementations compared, |a - b| / |a| <= 2 * 6 sqrt(L) u * 3 =
    36 sqrt(L) u (fp32, L = 25088 at Mixed_3c: 3.4e-4). Operands rounded before the
    products (TF32, bf16, fp16) add ~2 u_op per entry (Cauchy-Schwarz, unit rows), times
    kappa and 2 again: 12 u_op. The tolerance is the larger of those and 1e-3 for fp32
    (fp64: 1e-9): a wrong formula (a factor of 2, 1/d, the cap, lambda, gradient into
    both modalities of a pair) moves the loss or a gradient norm by far more than 0.1%,
    and the measured discrepancies are recorded next to the tolerance, so the margin
    shows."""
    u, u_op = unit_roundoff(dtype_name)
    L = max(shape.d, sum(shape.channels))
    floor = 1e-9 if dtype_name == "float64" else 1e-3
    return max(floor, 36 * math.sqrt(L) * u, 12 * u_op)


def check_agreement(results: dict, rtol: float) -> dict:
    """results: name -> {"loss": float, "grad_norms": [float]}. Returns name -> max relative
    discrepancy against the median of all implementations (loss; each modality's gradient
    norm relative to the largest median gradient norm); inf for non-finite values."""
    names = list(results)
    if not names:
        return {}
    med_loss = statistics.median(r["loss"] for r in results.values())
    M = len(next(iter(results.values()))["grad_norms"])
    med_g = [statistics.median(r["grad_norms"][m] for r in results.values()) for m in range(M)]
    g_scale = max(max(abs(g) for g in med_g), 1e-300)
    out = {}
    for name, r in results.items():
        vals = [r["loss"], *r["grad_norms"]]
        if not all(math.isfinite(v) for v in vals):
            out[name] = math.inf
            continue
        e = abs(r["loss"] - med_loss) / max(abs(med_loss), 1e-300)
        for m in range(M):
            e = max(e, abs(r["grad_norms"][m] - med_g[m]) / g_scale)
        out[name] = e
    return out


# ------------------------------------------------------------------ one shape


@dataclass
class Row:
    shape: str
    impl: str
    dtype: str
    N: int
    channels: str
    d: int
    status: str = "ok"
    rounds: int = 0
    fwd_ms: Optional[float] = None
    bwd_ms: Optional[float] = None
    total_ms: Optional[float] = None
    total_p20_ms: Optional[float] = None
    total_p80_ms: Optional[float] = None
    peak_mb: Optional[float] = None
    gflop: Optional[float] = None  # forward + backward, bench.costs model
    gflops: Optional[float] = None  # achieved: gflop / median forward + backward time
    speedup_vs_mmpose: Optional[float] = None
    speedup_vs_mmpose_lo: Optional[float] = None
    speedup_vs_mmpose_hi: Optional[float] = None
    speedup_vs_expert: Optional[float] = None
    speedup_vs_expert_lo: Optional[float] = None
    speedup_vs_expert_hi: Optional[float] = None
    speedup_vs_expert_compile: Optional[float] = None
    speedup_vs_expert_compile_lo: Optional[float] = None
    speedup_vs_expert_compile_hi: Optional[float] = None
    interval_coverage: Optional[float] = None
    loss: Optional[float] = None
    disagreement: Optional[float] = None
    rtol: Optional[float] = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def make_inputs(shape: Shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [
        torch.randn(shape.N, c, *shape.spatial, generator=g).to(device=device, dtype=dtype) for c in shape.channels
    ]
    ce = (torch.rand(len(shape.channels), shape.N, generator=g) * 3).to(device)
    return feats, ce


def _note(row: Row, text: str):
    row.note = (row.note + "; " + text).lstrip("; ") if text else row.note


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "memory" in str(e).lower()


def _compile_count() -> int:
    with contextlib.suppress(Exception):
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return 0


def run_shape(meter: Meter, shape: Shape, dtype_name: str, impls: dict, args, log=print) -> tuple:
    """All implementations on one shape and dtype: agreement, then interleaved rounds.
    Returns (rows, record) where record holds the raw per-round times and the loads."""
    device = meter.device
    dtype = DTYPES[dtype_name]
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    record = {"shape": shape.name, "dtype": dtype_name, "load_before": loadavg()}
    feats, ce = make_inputs(shape, dtype, device)
    active = active_pairs(ce)
    rtol = agreement_rtol(dtype_name, shape)
    elem = torch.finfo(dtype).bits // 8
    rows, live, checks = {}, {}, {}
    if any(i.compiled for i in impls.values()):
        torch._dynamo.reset()  # nothing compiled for another shape is reused (or guarded against)
    try:
        for name, impl in impls.items():
            row = rows[name] = Row(shape.name, name, dtype_name, shape.N, "x".join(map(str, shape.channels)), shape.d)
            kind, note = resolved_kind(impl, shape, dtype)
            _note(row, note)
            f, b = flops(shape.problem, kind, active)
            row.gflop = (f + b) / 1e9
            if kind == "naive" and naive_bytes(shape.problem, elem) > args.naive_limit_gb * 2**30:
                row.status = "not run"
                _note(
                    row,
                    f"the d x d matrices alone need >= {naive_bytes(shape.problem, elem) / 2**30:.1f} GiB "
                    f"(limit {args.naive_limit_gb} GiB)",
                )
                continue
            if row.gflop > args.max_gflop:
                row.status = "not run"
                _note(row, f"~{row.gflop:,.0f} GFLOP per forward + backward (limit {args.max_gflop:,.0f})")
                continue
            t0 = time.perf_counter()
            try:
                fn = impl.make()
                for _ in range(args.warmup):
                    xs = [x.detach().requires_grad_() for x in feats]
                    loss = fn(xs, ce)
                    loss.backward()
                checks[name] = {"loss": float(loss.detach()), "grad_norms": [float(x.grad.double().norm()) for x in xs]}
                del xs, loss
            except Exception as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
                row.status = "oom"
                _note(row, str(e).splitlines()[0][:120])
                continue
            live[name] = fn
            row.extra["warmup_s"] = round(time.perf_counter() - t0, 2)
            log(f"  warm-up {name:18s} {row.extra['warmup_s']:8.1f} s  loss {checks[name]['loss']:.9g}")

        disagreement = check_agreement(checks, rtol)
        for name, e in disagreement.items():
            row = rows[name]
            row.disagreement, row.rtol = e, rtol
            row.loss = checks[name]["loss"]
            row.extra["grad_norms"] = checks[name]["grad_norms"]
            if not e <= rtol:
                row.status = "disagrees"
                _note(row, f"not timed: off the median by {e:.2e} (tolerance {rtol:.1e})")
                print(
                    f"!!! {shape.name} {dtype_name}: {name} DISAGREES with the other implementations: "
                    f"loss {checks[name]['loss']!r}, gradient norms {checks[name]['grad_norms']}, "
                    f"relative discrepancy {e:.3e} > {rtol:.1e}",
                    file=sys.stderr,
                    flush=True,
                )
                live.pop(name)

        # interleaved rounds
        names = list(live)
        times = {n: {"fwd": [], "bwd": [], "total": [], "peak": []} for n in names}
        compiled = any(impls[n].compiled for n in names)
        graphs_before = _compile_count() if compiled else 0
        deadline = time.perf_counter() + args.max_seconds
        for r in range(args.repeats):
            gc.collect()
            order = names[r % len(names) :] + names[: r % len(names)] if names else []
            for name in order:
                meter.begin_peak()
                try:
                    f_s, b_s, loss = meter.fwd_bwd(live[name], feats, ce)
                except Exception as e:  # noqa: BLE001
                    if not _is_oom(e):
                        raise
                    rows[name].status = "oom"
                    _note(rows[name], "out of memory while timing")
                    live.pop(name)
                    names.remove(name)
                    continue
                del loss
                peak = meter.end_peak()
                t = times[name]
                t["fwd"].append(f_s)
                t["bwd"].append(b_s)
                t["total"].append(f_s + b_s)
                t["peak"].append(peak)
            log(
                f"  round {r + 1}: "
                + ", ".join(f"{n} {1e3 * times[n]['total'][-1]:,.0f} ms" for n in order if times[n]["total"])
                + f"  (load {loadavg()})"
            )
            if time.perf_counter() > deadline and r + 1 >= args.min_repeats:
                break
        if compiled and _compile_count() != graphs_before:
            for name in names:
                if impls[name].compiled:
                    _note(rows[name], "recompiled during the timed rounds")
        record["load_after"] = loadavg()
        record["times_s"] = {n: times[n] for n in names}

        for name in names:
            row, t = rows[name], times[name]
            row.rounds = len(t["total"])
            row.fwd_ms = 1e3 * statistics.median(t["fwd"])
            row.bwd_ms = 1e3 * statistics.median(t["bwd"])
            row.total_ms = 1e3 * statistics.median(t["total"])
            row.total_p20_ms = 1e3 * quantile(t["total"], 0.2)
            row.total_p80_ms = 1e3 * quantile(t["total"], 0.8)
            row.peak_mb = max(t["peak"]) / 2**20
            row.gflops = row.gflop / (row.total_ms / 1e3)
        fill_speedups([rows[n] for n in names], record)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    return list(rows.values()), record


def fill_speedups(rows: list, record: dict) -> None:
    """Per-round speed-ups against every baseline that ran all rounds: median of the
    ratios baseline time / this time in the same round, and an interval of that median."""
    times = record.get("times_s", {})
    for row in rows:
        t = times.get(row.impl)
        if not t:
            continue
        for base, attr in BASELINES.items():
            if base not in times or len(times[base]["total"]) != len(t["total"]):
                continue
            ratios = [tb / tx for tb, tx in zip(times[base]["total"], t["total"])]
            lo, hi, cov = median_interval(ratios)
            setattr(row, f"speedup_vs_{attr}", statistics.median(ratios))
            setattr(row, f"speedup_vs_{attr}_lo", lo)
            setattr(row, f"speedup_vs_{attr}_hi", hi)
            row.interval_coverage = cov


# ------------------------------------------------------------------ environment and reporting


def environment(device: torch.device) -> dict:
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "mtut": mtut_ops.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "load_average": loadavg(),
        "argv": sys.argv[1:],
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


def fmt(v, unit=""):
    if v is None:
        return "—"
    return f"{v:,.0f}{unit}" if v >= 100 else (f"{v:.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}")


def _ratio(row: Row, attr: str) -> str:
    v = getattr(row, f"speedup_vs_{attr}")
    if v is None:
        return "—"
    return f"{v:.2f}x ({getattr(row, f'speedup_vs_{attr}_lo'):.2f}–{getattr(row, f'speedup_vs_{attr}_hi'):.2f})"


def _aa_lines(group: list, rec: dict) -> list:
    """An A/A check: mtut-<backend>-auto runs the same code as the algorithm it resolves to,
    so the per-round ratio of their times shows how much the machine alone moves a ratio."""
    times = rec.get("times_s", {})
    out = []
    for r in group:
        if not (r.impl.endswith("-auto") and r.note.startswith("auto -> ")):
            continue
        twin = r.impl[: -len("auto")] + r.note.split("auto -> ")[1].split(";")[0].strip()
        if r.impl in times and twin in times and len(times[r.impl]["total"]) == len(times[twin]["total"]) > 0:
            ratios = [a / b for a, b in zip(times[twin]["total"], times[r.impl]["total"])]
            lo, hi, _ = median_interval(ratios)
            out += [
                f"A/A check (the same code twice: {twin} / {r.impl}, per round): median"
                f" {statistics.median(ratios):.2f} ({lo:.2f}–{hi:.2f}): ratios closer to 1 than this are noise.",
                "",
            ]
    return out


def summary_markdown(rows: list, env: dict, records: list) -> str:
    lines = [
        f"# SSA loss benchmark: {env.get('device_name', env['device'])}",
        "",
        f"{env['date']} · torch {env['torch']} · {env['threads']} threads · OMP_WAIT_POLICY {env['omp_wait_policy']}"
        f" · load average (1, 5, 15 min) at the start {env.get('load_average')},"
        f" at the end {env.get('load_average_end')}",
        "",
        "Forward + backward of the whole SSA loss (mmpose's defaults: rms, beta 2, lambda 5e-3, pair cap 10), N = 6.",
        "All implementations ran interleaved: round r runs each once, in one process. Times: median over the rounds,"
        " (p20–p80). Speed-up: the median over rounds of the baseline's time / this one's time *in the same round*,"
        " (interval of that median: min–max of the rounds, a distribution-free interval with the coverage given per"
        " table). GFLOP: forward + backward work of the implementation's own algorithm (bench/costs.py), GFLOP/s ="
        " GFLOP / median time. Peak: the most memory one forward + backward added to what was held before it"
        " (process RSS on CPU), including the input gradients. Agreement: largest relative distance of the loss and"
        " of each modality's gradient norm from the median of all implementations, before timing.",
        "",
    ]
    for rec in records:
        group = [r for r in rows if r.shape == rec["shape"] and r.dtype == rec["dtype"]]
        s = SHAPES.get(rec["shape"])
        cov = next((r.interval_coverage for r in group if r.interval_coverage), None)
        g0 = group[0]
        lines += [
            f"## {rec['shape']} ({rec['dtype']}): N={g0.N}, C={g0.channels}, d={g0.d}" + (f" — {s.note}" if s else ""),
            "",
            f"load average before {rec.get('load_before')}, after {rec.get('load_after')}; "
            f"{max((r.rounds for r in group), default=0)} rounds; speed-up intervals cover the median with "
            + (f"{100 * cov:.0f}%" if cov else "—")
            + f"; agreement tolerance {group[0].rtol or agreement_rtol(rec['dtype'], s):.1e}",
            "",
            *_aa_lines(group, rec),
            "| impl | fwd ms | bwd ms | fwd+bwd ms (p20–p80) | GFLOP | GFLOP/s | peak MB | speed-up vs mmpose-eager"
            " | vs expert-eager | vs expert-compile | agreement | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in group:
            agree = "—" if r.disagreement is None else f"{r.disagreement:.1e}"
            if r.status != "ok":
                lines.append(
                    f"| {r.impl} | — | — | {r.status} | {fmt(r.gflop)} | — | — | — | — | — | {agree} | {r.note} |"
                )
                continue
            lines.append(
                f"| {r.impl} | {fmt(r.fwd_ms)} | {fmt(r.bwd_ms)} | {fmt(r.total_ms)} ({fmt(r.total_p20_ms)}–"
                f"{fmt(r.total_p80_ms)}) | {fmt(r.gflop)} | {fmt(r.gflops)} | {fmt(r.peak_mb)} | {_ratio(r, 'mmpose')}"
                f" | {_ratio(r, 'expert')} | {_ratio(r, 'expert_compile')} | {agree} | {r.note} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_results(rows: list, env: dict, records: list, stem: str) -> list:
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS / f"{stem}.csv", RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"]
    cols = [k for k in asdict(rows[0]) if k != "extra"]
    with open(paths[0], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: v for k, v in asdict(r).items() if k != "extra"})
    paths[1].write_text(
        json.dumps({"environment": env, "shapes": records, "rows": [asdict(r) for r in rows]}, indent=1)
    )
    paths[2].write_text(summary_markdown(rows, env, records))
    with contextlib.suppress(ImportError):
        paths.append(plot(rows, env, RESULTS / f"{stem}.png"))
    return paths


def plot(rows: list, env: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok"]
    shapes = list(dict.fromkeys(f"{r.shape} {r.dtype}" for r in rows))
    impls = list(dict.fromkeys(r.impl for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax, key, label in (
        (axes[0], "total_ms", "forward + backward (ms, median)"),
        (axes[1], "peak_mb", "peak extra memory (MB)"),
    ):
        width = 0.8 / max(1, len(impls))
        for k, impl in enumerate(impls):
            xs, ys, err = [], [], [[], []]
            for i, s in enumerate(shapes):
                r = next((r for r in ok if f"{r.shape} {r.dtype}" == s and r.impl == impl), None)
                if r is not None and getattr(r, key):
                    xs.append(i + (k - len(impls) / 2) * width)
                    ys.append(getattr(r, key))
                    if key == "total_ms":
                        err[0].append(r.total_ms - r.total_p20_ms)
                        err[1].append(r.total_p80_ms - r.total_ms)
            ax.bar(xs, ys, width=width, label=impl, yerr=err if key == "total_ms" else None, capsize=2)
        for i, s in enumerate(shapes):
            if any(
                f"{r.shape} {r.dtype}" == s and r.status in ("not run", "oom") and r.impl.startswith("mmpose")
                for r in rows
            ):
                ax.annotate(
                    "mmpose: not run (d x d)",
                    (i, 1),
                    rotation=90,
                    fontsize=7,
                    ha="center",
                    xycoords=("data", "axes fraction"),
                    va="top",
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"SSA loss, {env.get('device_name', env['device'])}, torch {env['torch']}, {env['date'][:10]}"
        f" (load average {env.get('load_average')})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=list(DTYPES),
        help="tf32: float32 inputs with torch.backends.cuda.matmul.allow_tf32 on",
    )
    p.add_argument("--shapes", nargs="+", default=[s.name for s in NAMED + SWEEP_D + SWEEP_C], choices=list(SHAPES))
    p.add_argument(
        "--impls",
        nargs="+",
        default=None,
        help=f"subset of implementations (default: all available but {', '.join(OPT_IN)})",
    )
    p.add_argument("--repeats", type=int, default=5, help="timing rounds (each runs every implementation once)")
    p.add_argument("--min-repeats", type=int, default=3, help="rounds run even past --max-seconds")
    p.add_argument("--warmup", type=int, default=1, help="untimed forward + backward calls per implementation")
    p.add_argument("--max-seconds", type=float, default=900.0, help="time budget of the rounds of one shape")
    p.add_argument(
        "--max-gflop",
        type=float,
        default=2000.0,
        help="do not run (record as 'not run') an implementation needing more GFLOP per forward + backward",
    )
    p.add_argument("--naive-limit-gb", type=float, default=12.0, help="do not run naive code needing more")
    p.add_argument("--tag", default=None, help="name of the result files (default: <device>-<date>)")
    p.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="only write the result files again from a results .json (its raw times; no benchmark)",
    )
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        rows = [Row(**r) for r in data["rows"]]
        for rec in data["shapes"]:
            fill_speedups([r for r in rows if r.shape == rec["shape"] and r.dtype == rec["dtype"]], rec)
        global RESULTS
        RESULTS = Path(args.render).resolve().parent
        for path in write_results(rows, data["environment"], data["shapes"], Path(args.render).stem):
            print("wrote", path)
        return

    device = torch.device(args.device)
    meter = Meter(device)
    env = environment(device)
    if device.type == "cpu" and os.environ.get("OMP_WAIT_POLICY", "").lower() != "passive":
        print(
            f"warning: OMP_WAIT_POLICY is not 'passive' (load average {loadavg()} on {os.cpu_count()} cores): on a"
            " shared machine OpenMP threads then spin against other jobs, and small ops ran up to 25x slower here"
            " (sweep_d64, mmpose-eager, 2026-12-01); set OMP_WAIT_POLICY=passive",
            file=sys.stderr,
            flush=True,
        )
    impls = impl_table(device)
    if args.impls:
        unknown = set(args.impls) - set(impls)
        if unknown:
            p.error(f"unknown --impls {sorted(unknown)}; available: {sorted(impls)}")
        impls = {k: v for k, v in impls.items() if k in args.impls}
    else:
        impls = {k: v for k, v in impls.items() if k not in OPT_IN}
    rows, records = [], []
    for dtype_name in args.dtype:
        if dtype_name == "tf32" and device.type != "cuda":
            p.error("tf32 is a CUDA setting")
        for shape_name in args.shapes:
            shape = SHAPES[shape_name]
            print(f"== {shape_name} {dtype_name} (load {loadavg()})", flush=True)
            shape_rows, record = run_shape(meter, shape, dtype_name, impls, args, log=lambda s: print(s, flush=True))
            rows += shape_rows
            records.append(record)
            for r in shape_rows:
                print(
                    f"  {r.impl:20s} {r.status:9s} fwd+bwd {fmt(r.total_ms, ' ms'):>12s}"
                    f" peak {fmt(r.peak_mb, ' MB'):>10s}"
                    f"  vs expert {_ratio(r, 'expert'):>22s}  {r.note}",
                    flush=True,
                )
            env["load_average_end"] = loadavg()
            stem = args.tag or f"{device.type}-{env['date'][:10]}"
            paths = write_results(rows, env, records, stem)  # after every shape: a long run keeps what it has
    for path in paths:
        print("wrote", path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


if __name__ == "__main__":
    main()
