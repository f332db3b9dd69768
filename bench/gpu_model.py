"""A small GPU model of the SSA loss. Every number it prints is PREDICTED, as a range
(low-high): no GPU has run this project's code. `make gpu-check` (tools/gpu_check.sh)
measures the ceilings below and times each kernel this model prices, beside its entry.

A kernel takes  max(roofline, latency) + floor:
  roofline = max(FLOPs / (ceiling x GEMM efficiency), DRAM bytes / copy bandwidth)
  latency  = bytes x latency / bytes in flight   (Little's law: blocks that keep B bytes in
             flight stream at most B / latency; B = resident blocks x bytes per block), for
             our kernels (ATen's and cuBLAS's are assumed to fill the GPU); L2 latency where
             the data fits in half the L2, DRAM latency else
  floor    = the least time of a launch, back to back on one stream.
The GPU time is the sum over the kernels; the host issues them (its per-op cost by the
calling layer: eager ATen, a compiled graph, our C++ op) and the wall time is
max(GPU, host), each end of the range with each end of the other.

What is modelled (docs/design.md §6 names the implementations):
  expert-eager    bench/baselines.expert_gram_ssa_loss, traced op by op on meta tensors
  expert-compile  the same under torch.compile: cuBLAS bmm each way, the rest fused (by hand)
  mtut-cuda       the CUDA backend without the split-K Gram forward: every product a torch
                  bmm call (the Gram blocks into the kept views, one call per block), our
                  reduction and normalization kernels with grids of >= 2 waves and >= 4 16-byte
                  loads in flight per thread (issue 27 item 1), the loss kernels single-block.
The auto choice is mtut_ops._validation.resolve_algo's (csrc/ssa_common.cpp:auto_factor).

Run: python -m bench.gpu_model  -> bench/results/gpu-model-<date>.{md,csv}
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.baselines import expert_gram_ssa_loss
from bench.costs import Problem

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class GPU:
    name: str
    sms: int
    l2_mb: float
    tflops: dict  # dense GEMM ceiling by operand type, TFLOP/s
    copy_tbs: float  # device-to-device copy, TB/s (read + write counted)
    dram_ns: tuple = (370, 450)  # a DRAM round trip under load, low-high
    l2_ns: tuple = (150, 270)  # an L2 hit, near to far partition

    def latency_ns(self, nbytes: float, end: int) -> float:
        """What a kernel's loads wait for: L2 where its data fits in half the L2 (just written
        by the kernel before it, as our reductions read the products), else DRAM."""
        return (self.l2_ns if nbytes <= self.l2_mb * 1e6 / 2 else self.dram_ns)[end]


# H100 SXM: bf16 from an 8192^3 matmul and the copy bandwidth, both measured on the lent machine;
# tf32 and fp32 are assumed (0.8 of the datasheet's 494.7 and 66.9). H200: the same SMs and
# clocks, its 4.8 TB/s HBM3e at the H100's measured 0.9 of the datasheet (assumed).
H100 = GPU("H100-SXM", 132, 50, {"bf16": 798.0, "tf32": 396.0, "fp32": 53.5}, 3.0)
H200 = GPU("H200", 132, 50, {"bf16": 798.0, "tf32": 396.0, "fp32": 53.5}, 4.3)
GPUS = {g.name: g for g in (H100, H200)}

GEMM_EFF = (0.55, 0.85)  # of the ceiling for a bmm that fills the GPU (worst, best)
FLOOR_US = (1.5, 3.0)  # a launch, back to back
HOST_US = {
    "eager": (5.0, 9.0),
    "view": (1.0, 2.0),
    "graph": (25.0, 40.0),
    "inductor": (2.0, 4.0),
    "op": (15.0, 30.0),
    "aten_in_op": (3.0, 5.0),
}
RESIDENT = 4  # blocks of 256 threads per SM for our kernels (their registers allow more)
OUR_INFLIGHT = 256 * 4 * 16  # bytes a block of ours keeps in flight: 4 independent 16-byte loads a thread


@dataclass(frozen=True)
class Kernel:
    name: str
    flops: float = 0.0
    bytes: float = 0.0  # DRAM traffic
    gemm: tuple = ()  # (batch, m, n, k) of a bmm: cuBLAS tiles it
    blocks: int = 0  # grid of a kernel of ours (0: ATen's, assumed to fill the GPU)
    inflight: int = OUR_INFLIGHT


def wave_use(gemm: tuple, prec: str, sms: int) -> float:
    """The share of the last wave's SMs a bmm's output tiles keep busy (128 x 256 tiles for
    16-bit operands, 128 x 128 else): its efficiency at the low end."""
    b, m, n, _ = gemm
    tiles = b * math.ceil(m / 128) * math.ceil(n / (256 if prec == "bf16" else 128))
    return tiles / (math.ceil(tiles / sms) * sms)


def little(nbytes: float, blocks: int, inflight: int, latency_ns: float, sms: int, resident: int = RESIDENT) -> float:
    """Seconds to stream nbytes with `blocks` blocks each keeping `inflight` bytes in flight."""
    in_flight = min(blocks, sms * resident) * inflight
    return nbytes * latency_ns * 1e-9 / in_flight


def kernel_time(k: Kernel, gpu: GPU, prec: str) -> tuple:
    """(low, high) seconds on the GPU."""
    out = []
    for end in (0, 1):  # 0: the optimistic end
        t = k.bytes / (gpu.copy_tbs * 1e12)
        if k.flops:
            eff = GEMM_EFF[1] if end == 0 else GEMM_EFF[0] * wave_use(k.gemm, prec, gpu.sms)
            t = max(t, k.flops / (gpu.tflops[prec] * 1e12 * eff))
        if k.blocks:
            t = max(t, little(k.bytes, k.blocks, k.inflight, gpu.latency_ns(k.bytes, end), gpu.sms))
        out.append(t + FLOOR_US[end] * 1e-6)
    return tuple(out)


@dataclass
class Plan:
    forward: list
    backward: list
    host_fwd: tuple  # (low, high) seconds
    host_bwd: tuple

    def wall(self, gpu: GPU, prec: str) -> tuple:
        """Forward + backward, (low, high) seconds."""
        g = [sum(kernel_time(k, gpu, prec)[end] for k in self.forward + self.backward) for end in (0, 1)]
        return tuple(max(g[end], self.host_fwd[end] + self.host_bwd[end]) for end in (0, 1))


def _host(counts: dict) -> tuple:  # (low, high) seconds of the host's per-op costs
    return tuple(sum(n * HOST_US[kind][end] * 1e-6 for kind, n in counts.items()) for end in (0, 1))


def elem(prec: str) -> int:
    return 2 if prec == "bf16" else 4


# ------------------------------------------------------------------ the expert code, eager: traced

_VIEWS = {
    "view",
    "_unsafe_view",
    "expand",
    "permute",
    "transpose",
    "t",
    "select",
    "slice",
    "unsqueeze",
    "squeeze",
    "detach",
    "split_with_sizes",
    "split",
    "alias",
    "as_strided",
    "reshape",
    "narrow",
    "unbind",
    "lift_fresh",
}


class _Trace(TorchDispatchMode):
    """Records every ATen op: a view (no kernel) or a kernel with its bytes and, for bmm, FLOPs."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _VIEWS:
            self.ops.append(None)
            return out
        leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
        nbytes = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
        if name == "bmm":
            a, b = args[0], args[1]
            gemm = (a.shape[0], a.shape[1], b.shape[2], a.shape[2])
            self.ops.append(Kernel(name, 2.0 * math.prod(gemm), nbytes, gemm))
        else:
            self.ops.append(Kernel(name, 0.0, nbytes))
        return out


@functools.cache
def _trace(p: Problem, dtype: torch.dtype) -> tuple:
    feats = [torch.empty(p.N, c, p.d, device="meta", dtype=dtype).requires_grad_() for c in p.channels]
    with _Trace() as tr:
        loss = expert_gram_ssa_loss(feats, torch.empty(p.M, p.N, device="meta"))
        n = len(tr.ops)
        loss.backward()
    return tr.ops[:n], tr.ops[n:]


def expert_eager(p: Problem, prec: str) -> Plan:
    f, b = _trace(p, torch.bfloat16 if prec == "bf16" else torch.float32)

    def host(ops):
        return _host({"eager": sum(o is not None for o in ops), "view": sum(o is None for o in ops)})

    return Plan([o for o in f if o], [o for o in b if o], host(f), host(b))


def expert_compile(p: Problem, prec: str) -> Plan:
    """inductor: normalize + cat in one kernel, H = bmm (cuBLAS), one reduction for all block
    square-sums, a tail; backward: dH pointwise, dX = bmm(dH, X), the normalization backward
    fused per modality."""
    e, N, d, C = elem(prec), p.N, p.d, p.C
    HH, X = N * C * C * e, N * C * d * e
    fwd = [
        Kernel("normalize+cat", 0, 2 * X),
        Kernel("H=bmm", 2.0 * N * C * C * d, HH + 2 * X, (N, C, C, d)),
        Kernel("block square-sums", 0, HH),
        Kernel("tail"),
    ]
    bwd = [Kernel("dH", 0, 2 * HH), Kernel("dX=bmm", 2.0 * N * C * C * d, HH + 2 * X, (N, C, d, C))]
    bwd += [Kernel("normalize backward", 0, 4 * N * c * d * e) for c in p.channels] + [Kernel("tail")]
    return Plan(fwd, bwd, _host({"graph": 1, "inductor": len(fwd)}), _host({"graph": 1, "inductor": len(bwd)}))


# ------------------------------------------------------------------ ours: bmm calls and our kernels


def students(p: Problem) -> list:
    """Rows with a gradient per modality over the batch, the typical focal pattern (bench.costs:
    modality m is the student of every n > m): all but the best modality."""
    return [p.N if m < p.M - 1 else 0 for m in range(p.M)]


def mtut_cuda(p: Problem, prec: str, algo: str, gpu: GPU = H100) -> Plan:
    e, N, d, ch = elem(prec), p.N, p.d, p.channels
    blocks = 2 * gpu.sms * RESIDENT  # our grids: 2 waves (issue 27 item 1)
    X = N * p.C * d * e
    fwd = [Kernel("row norms", 0, X, blocks=blocks)]
    bwd = [Kernel("pair coefficients", 0, 0, blocks=1)]
    if algo == "gram":
        pairs = [(m, n) for m in range(p.M) for n in range(m, p.M)]
        kept = sum(N * ch[m] * ch[n] * 4 for m, n in pairs)  # float32 blocks
        for m, n in pairs:
            fwd.append(
                Kernel(
                    f"bmm P{m}{n}",
                    2.0 * N * ch[m] * ch[n] * d,
                    N * (ch[m] + ch[n]) * d * e + N * ch[m] * ch[n] * 4,
                    (N, ch[m], ch[n], d),
                )
            )
        fwd.append(Kernel("block_sqnorm", 0, kept, blocks=blocks))
        # the pair form's right operands: [X_0; X_1 - X_0] for M = 2, else [X_m; X_n - X_m ...] per modality
        for m in range(1 if p.M == 2 else p.M):
            bwd.append(Kernel(f"stack {m}", 0, 2 * X + (p.M - 1) * N * ch[m] * d * e, blocks=blocks))
        for m, rows in enumerate(students(p)):
            if rows:  # the stacked strip [rows, C_m, C] of scaled blocks, then one bmm against X
                bwd.append(Kernel(f"fold strip {m}", 0, 2 * rows * ch[m] * p.C * e, blocks=blocks))
                bwd.append(
                    Kernel(
                        f"bmm dX{m}",
                        2.0 * rows * ch[m] * p.C * d,
                        rows * ch[m] * (p.C + d) * e + X + rows * ch[m] * d * 4,
                        (rows, ch[m], d, p.C),
                    )
                )
    else:  # direct: K_m = Xh_m^T Xh_m per modality, the squared differences of each pair
        KK = N * d * d * 4
        for m in range(p.M):
            fwd.append(Kernel(f"bmm K{m}", 2.0 * N * d * d * ch[m], KK + N * ch[m] * d * e, (N, d, d, ch[m])))
        fwd += [Kernel(f"strip_sqdiff {m}{n}", 0, 2 * KK, blocks=blocks) for m in range(p.M) for n in range(m + 1, p.M)]
        fwd.append(Kernel("combine strips", 0, 0, blocks=1))
        for m, rows in enumerate(students(p)):
            if rows:  # K recomputed, E = sum_n w (K_m - K_n), dX_m = Xh_m E
                bwd += [Kernel(f"bmm K{n}", 2.0 * rows * d * d * ch[n], KK, (rows, d, d, ch[n])) for n in range(p.M)]
                bwd.append(Kernel(f"E{m}", 0, (p.M + 1) * KK, blocks=blocks))
                bwd.append(
                    Kernel(f"bmm dX{m}", 2.0 * rows * ch[m] * d * d, KK + 2 * rows * ch[m] * d * 4, (rows, ch[m], d, d))
                )
    fwd.append(Kernel("loss", 0, 0, blocks=1))
    bwd.append(Kernel("normalize backward", 0, 3 * sum(r * c * d * e for r, c in zip(students(p), ch)), blocks=blocks))
    return Plan(fwd, bwd, _host({"op": 1, "aten_in_op": len(fwd)}), _host({"op": 1, "aten_in_op": len(bwd)}))


def auto_algo(p: Problem, prec: str) -> str:
    from mtut_ops._validation import resolve_algo  # the rule csrc/ssa_common.cpp states

    return resolve_algo("auto", p.d, list(p.channels), "cuda", torch.bfloat16 if prec == "bf16" else torch.float32)


# ------------------------------------------------------------------ predictions

SHAPES = {  # name -> (N, C per modality, d); M = 2 and 3
    "mixed5c_224": (6, 1024, 8 * 7 * 7),
    "mixed5c_112": (6, 1024, 2 * 3 * 3),
    "mixed4f": (6, 832, 16 * 14 * 14),
    "mixed3c": (6, 480, 32 * 28 * 28),
}
PRECS = ("bf16", "fp32")


def problem(shape: str, M: int = 2) -> Problem:
    N, C, d = SHAPES[shape]
    return Problem(N, (C,) * M, d)


def ratio(base: tuple, ours: tuple) -> tuple:
    """How many times faster ours is than base, as a range: (worst, best)."""
    return base[0] / ours[1], base[1] / ours[0]


def predict(gpus=("H100-SXM", "H200"), Ms=(2, 3)) -> list:
    rows = []
    for g, shape, M, prec in itertools.product(gpus, SHAPES, Ms, PRECS):
        gpu, p = GPUS[g], problem(shape, M)
        algo = auto_algo(p, prec)
        w = {
            "expert-eager": expert_eager(p, prec).wall(gpu, prec),
            "expert-compile": expert_compile(p, prec).wall(gpu, prec),
            "mtut-cuda": mtut_cuda(p, prec, algo, gpu).wall(gpu, prec),
        }
        rows.append(
            dict(
                gpu=g,
                shape=shape,
                M=M,
                prec=prec,
                algo=algo,
                **{f"{k}_ms": (1e3 * v[0], 1e3 * v[1]) for k, v in w.items()},
                vs_eager=ratio(w["expert-eager"], w["mtut-cuda"]),
                vs_compile=ratio(w["expert-compile"], w["mtut-cuda"]),
            )
        )
    return rows


def kernel_rows(p: Problem, prec: str, algo: str, gpu: GPU = H100) -> list:
    """(pass, kernel, low us, high us) of mtut-cuda: what gpu_check sets beside its measured rows."""
    pl = mtut_cuda(p, prec, algo, gpu)
    return [
        (ps, k.name, *(1e6 * t for t in kernel_time(k, gpu, prec)))
        for ps, ks in (("fwd", pl.forward), ("bwd", pl.backward))
        for k in ks
    ]


def _r(t: tuple, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(t[0] * scale)}-{fmt.format(t[1] * scale)}"


def markdown(rows: list, date: str) -> str:
    out = [
        f"# GPU model, {date}: PREDICTED (no GPU has run this code)",
        "",
        "`python -m bench.gpu_model`; the model and its assumptions: bench/gpu_model.py, docs/benchmarks.md.",
        "Forward + backward wall time per call in ms (low-high), N = 6; ratios: expert time / mtut-cuda time,",
        "worst-best (each end against the other end). mtut-cuda runs algo=auto.",
        "",
        "Assumptions: "
        + "; ".join(
            f"{g.name} {g.sms} SMs, {g.l2_mb:.0f} MB L2, GEMM TFLOP/s {g.tflops}, copy {g.copy_tbs} TB/s"
            for g in GPUS.values()
        )
        + f"; latency DRAM {H100.dram_ns} ns, L2 {H100.l2_ns} ns; GEMM efficiency {GEMM_EFF} (low end times "
        f"wave use); launch floor {FLOOR_US} us; host per op (us) {HOST_US}; our kernels {RESIDENT} blocks/SM "
        f"resident, {OUR_INFLIGHT} B in flight per block.",
        "",
        "| GPU | shape | M | prec | auto | expert-eager | expert-compile | mtut-cuda | vs eager | vs compiled |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['gpu']} | {r['shape']} | {r['M']} | {r['prec']} | {r['algo']} | {_r(r['expert-eager_ms'])} "
            f"| {_r(r['expert-compile_ms'])} | {_r(r['mtut-cuda_ms'])} | {_r(r['vs_eager'], fmt='{:.1f}')}x "
            f"| {_r(r['vs_compile'], fmt='{:.1f}')}x |"
        )
    sq = [k for k in mtut_cuda(problem("mixed3c"), "bf16", "gram").forward if k.name == "block_sqnorm"][0]
    today = tuple(little(sq.bytes, 24, 256 * 4, H100.latency_ns(sq.bytes, e), H100.sms) for e in (0, 1))
    out += [
        "",
        "## Why our kernels' grids matter (Little's law, H100)",
        "",
        f"block_sqnorm at Mixed_3c bf16 reads {sq.bytes / 1e6:.1f} MB. With today's 24 blocks and one 4-byte load "
        f"in flight a thread: {_r(today, 1e6, '{:.0f}')} us; with {sq.blocks} blocks and 4 16-byte loads a "
        f"thread: {_r(kernel_time(sq, H100, 'bf16'), 1e6, '{:.1f}')} us.",
        "",
        "## mtut-cuda per kernel, H100, bf16 (us)",
        "",
    ]
    for shape in ("mixed4f", "mixed3c"):
        q = problem(shape)
        algo = auto_algo(q, "bf16")
        out.append(
            f"- {shape} ({algo}): "
            + "; ".join(f"{ps} {n} {lo:.1f}-{hi:.1f}" for ps, n, lo, hi in kernel_rows(q, "bf16", algo))
        )
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS))
    out, date = Path(ap.parse_args(argv).out), dt.date.today().isoformat()
    rows = predict()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu-model-{date}.md").write_text(markdown(rows, date))
    flat = [
        {
            k + e: round(x, 4) if isinstance(x, float) else x
            for k, v in r.items()
            for e, x in (zip(("_lo", "_hi"), v) if isinstance(v, tuple) else [("", v)])
        }
        for r in rows
    ]
    with open(out / f"gpu-model-{date}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    print(markdown(rows, date))


if __name__ == "__main__":
    main()
