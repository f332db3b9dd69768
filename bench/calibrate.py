"""First contact with a GPU: the measurements bench/gpu_model.py's predictions rest on, each
beside the model's entry (tools/gpu_check.sh runs it; about 5 minutes on an H100).

  python -m bench.calibrate torch  ceilings (bf16 8192^3 matmul, copy), host cost per eager op,
                                   torch.bmm at our product shapes, the eager expert code at
                                   Mixed_5c/4f/3c in bf16 and fp32 with per-kernel tables
  python -m bench.calibrate mtut   the CUDA backend at the same shapes, per-kernel tables
                                   beside the model's kernel rows (needs the built extension)

--dry-run: the same code on tiny shapes on the CPU (CPU timers, CPU profiler, the cpu
backend), so that a typo costs no GPU time; python_tests/test_bench.py runs it.
Writes <out>/calibrate-<part>.md (medians of 15 runs over 3 rotating input sets).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench import gpu_model as G
from bench.baselines import expert_gram_ssa_loss

SHAPES = ("mixed5c_224", "mixed4f", "mixed3c")
TINY = {"mixed5c_224": (2, 16, 8), "mixed4f": (2, 12, 20), "mixed3c": (2, 8, 40)}  # (N, C, d), dry run


class Run:
    def __init__(self, dry: bool, out: Path, part: str):
        self.dry, self.dev = dry, torch.device("cpu" if dry else "cuda")
        self.gpu = G.H100  # the model's entries; the device's own name is printed above them
        self.path = out / f"calibrate-{part}.md"
        self.path.write_text(f"# calibrate {part}{' (dry run, CPU, tiny shapes)' if dry else ''}\n\n")
        name = "cpu" if dry else torch.cuda.get_device_name()
        self.say(
            f"device {name}; torch {torch.__version__}; cuda {torch.version.cuda}; model entries: "
            f"{self.gpu.name}, PREDICTED"
        )

    def say(self, line: str = ""):
        print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")

    def sync(self):
        if not self.dry:
            torch.cuda.synchronize()

    def ms(self, fn, n: int = 15, warm: int = 3) -> float:
        """Median milliseconds of fn (CUDA events on a GPU)."""
        for _ in range(warm):
            fn()
        self.sync()
        ts = []
        for _ in range(n):
            if self.dry:
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            else:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                ts.append(s.elapsed_time(e))
        return sorted(ts)[n // 2]

    def kernels(self, fn, rows: int = 15):
        """The per-kernel table of 3 calls (torch.profiler), sorted by device time."""
        fn()
        self.sync()
        acts = [ProfilerActivity.CPU] if self.dry else [ProfilerActivity.CUDA]
        with profile(activities=acts) as prof:
            for _ in range(3):
                fn()
            self.sync()
        table = "(no profiler table)"
        for key in ["self_cpu_time_total"] if self.dry else ["self_device_time_total", "self_cuda_time_total"]:
            try:  # the key's name differs between torch versions
                table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=80)
                break
            except Exception as e:  # noqa: BLE001  (a table must not cost the rest of the run)
                table = f"(profiler table failed: {e})"
        self.say("```\n" + table + "\n```")

    def shape(self, name: str) -> tuple:
        return TINY[name] if self.dry else (G.SHAPES[name][0], G.SHAPES[name][1], G.SHAPES[name][2])

    def inputs(self, name: str, dtype, sets: int = 3) -> list:
        N, C, d = self.shape(name)
        return [
            (
                [torch.randn(N, C, d, device=self.dev, dtype=dtype, requires_grad=True) for _ in range(2)],
                torch.rand(2, N, device=self.dev),
            )
            for _ in range(sets)
        ]


def fwd_bwd(loss_fn, sets):
    state = {"i": 0}

    def run():
        feats, ce = sets[state["i"] % len(sets)]
        state["i"] += 1
        for f in feats:
            f.grad = None
        loss_fn(feats, ce).backward()

    return run


def _r(t: tuple) -> str:
    return f"{t[0]:.3f}-{t[1]:.3f}"


def part_torch(r: Run):
    n, dt = (256, torch.float32) if r.dry else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=r.dev, dtype=dt)
    b = torch.randn_like(a)
    r.say(
        f"- GEMM {n}^3 {dt}: {2 * n**3 / r.ms(functools.partial(torch.matmul, a, b)) / 1e9:.1f} TFLOP/s "
        f"(model ceiling {r.gpu.tflops['bf16']:.0f})"
    )
    x = torch.empty(2**20 if r.dry else 2**31, dtype=torch.uint8, device=r.dev)
    y = torch.empty_like(x)
    r.say(
        f"- copy {x.numel() >> 20} MiB: "
        f"{2 * x.numel() / r.ms(functools.partial(y.copy_, x)) / 1e9:.2f} TB/s read+write "
        f"(model {r.gpu.copy_tbs})"
    )
    del a, b, x, y
    z = torch.zeros(1, device=r.dev, requires_grad=True)
    r.sync()
    t0 = time.perf_counter()
    v = z
    for _ in range(2000):
        v = v * 1.0
    t1 = time.perf_counter()
    v.sum().backward()
    r.sync()
    r.say(
        f"- host per eager op: forward {(t1 - t0) / 2 * 1e3:.1f} us, backward "
        f"{(time.perf_counter() - t1) / 2 * 1e3:.1f} us (model {G.HOST_US['eager']})"
    )
    # both algorithms' products at every shape (what the auto rule weighs), without mtut_ops._C
    # (not built yet at this step)
    r.say("\n## torch.bmm at our product shapes (bf16, ms; model low-high)\n")
    for name, algo in itertools.product(SHAPES, ("direct", "gram")):
        N, C, d = r.shape(name)
        pl = G.mtut_cuda(G.Problem(N, (C, C), d), "bf16", algo)
        for k in {k.gemm: k for k in pl.forward + pl.backward if k.gemm}.values():  # one per shape
            b_, m, n_, kk = k.gemm
            A = torch.randn(b_, m, kk, device=r.dev, dtype=torch.float32 if r.dry else torch.bfloat16)
            # the Gram blocks X_m X_n^T read their right operand transposed, as the backend does
            B = (
                torch.randn(b_, n_, kk, device=r.dev, dtype=A.dtype).transpose(1, 2)
                if k.name.startswith("bmm P")
                else torch.randn(b_, kk, n_, device=r.dev, dtype=A.dtype)
            )
            t = r.ms(functools.partial(torch.bmm, A, B))
            r.say(
                f"- {name} {algo} {k.name} {k.gemm}: {t:.3f} ms, {k.flops / t / 1e9:.1f} TFLOP/s; "
                f"model {_r(tuple(1e3 * u for u in G.kernel_time(k, r.gpu, 'bf16')))} ms"
            )
            del A, B
    for prec, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for name in SHAPES:
            sets = r.inputs(name, dtype)
            run = fwd_bwd(expert_gram_ssa_loss, sets)
            N, C, d = r.shape(name)
            model = G.expert_eager(G.Problem(N, (C, C), d), prec).wall(r.gpu, prec)
            r.say(
                f"\n## expert-eager {name} {prec}: {r.ms(run):.3f} ms fwd+bwd "
                f"(model {_r(tuple(1e3 * t for t in model))})\n"
            )
            r.kernels(run)
            del sets


def part_mtut(r: Run):
    import mtut_ops

    backend = "cpu" if r.dry else "cuda"
    for prec, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for name in SHAPES:
            N, C, d = r.shape(name)
            p = G.Problem(N, (C, C), d)
            algo = G.auto_algo(p, prec)
            sets = r.inputs(name, dtype)
            run = fwd_bwd(lambda f, c: mtut_ops.ssa_loss(f, c, pair_cap=10.0, backend=backend), sets)
            model = G.mtut_cuda(p, prec, algo, r.gpu).wall(r.gpu, prec)
            r.say(
                f"\n## mtut-{backend} auto ({algo}) {name} {prec}: {r.ms(run):.3f} ms fwd+bwd "
                f"(model {_r(tuple(1e3 * t for t in model))})\n"
            )
            r.say(
                "model per kernel (us): "
                + "; ".join(f"{ps} {k} {lo:.1f}-{hi:.1f}" for ps, k, lo, hi in G.kernel_rows(p, prec, algo, r.gpu))
            )
            r.kernels(run, rows=25)
            del sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("torch", "mtut"))
    ap.add_argument("--out", default=str(G.RESULTS))
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, not the GPU")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("bench.calibrate: no GPU visible (use --dry-run to check the script on the CPU)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = Run(args.dry_run, out, args.part)
    {"torch": part_torch, "mtut": part_mtut}[args.part](r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
