"""The end-to-end view: one MTUT training step of the examples' I3D model (RGB + depth),
with the SSA loss computed naively (the spec, which builds every d x d K_m) or fused (ours),
and without SSA, so the loss's share of the step shows.

  python -m bench.bench_train_step --device cpu                       # CPU-sized default
  python -m bench.bench_train_step --device cuda --frames 64 --size 224 --batch 6
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench.bench_ssa import RESULTS, Meter, environment, quantile
from examples.mtut_model import MTUTModel, SSAConfig


def step_fn(model: MTUTModel, batch: dict, labels: torch.Tensor, ssa: bool, opt: torch.optim.Optimizer):
    def step():
        opt.zero_grad(set_to_none=True)
        out = model(batch)
        model.loss(out, labels, ssa=ssa).total.backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--width", type=float, default=1.0, help="I3D width multiplier")
    p.add_argument("--endpoint", default="Mixed_3c", help="where SSA aligns the features")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    meter = Meter(device)
    torch.manual_seed(0)
    batch = {
        "rgb": torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device),
        "depth": torch.rand(args.batch, 1, args.frames, args.size, args.size, device=device),
    }
    labels = torch.randint(0, 25, (args.batch,), device=device)
    variants = {
        "no SSA (CE only)": (None, False),
        "SSA naive (reference)": ("reference", True),
        "SSA fused (mtut)": (None, True),
    }
    rows = []
    for name, (backend, ssa) in variants.items():
        model = MTUTModel(
            ("rgb", "depth"),
            25,
            width=args.width,
            ssa_endpoints=(args.endpoint,),
            ssa=SSAConfig(lambda_=5e-3, backend=backend),
        ).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        step = step_fn(model, batch, labels, ssa, opt)
        step()  # warm-up
        peak = meter.peak_extra_bytes(step) / 2**20
        times = []
        for _ in range(args.repeats):
            t0 = meter.now()
            step()
            times.append(meter.now() - t0)
        with torch.no_grad():
            feat = model(batch).features["rgb"][args.endpoint]
        rows.append(
            {
                "variant": name,
                "step_ms": 1e3 * statistics.median(times),
                "p20_ms": 1e3 * quantile(times, 0.2),
                "p80_ms": 1e3 * quantile(times, 0.8),
                "peak_mb": peak,
                "feature_shape": list(feat.shape),
            }
        )
        print(
            f"{name:24s} step {rows[-1]['step_ms']:9.1f} ms  peak {peak:8.1f} MB  SSA features {list(feat.shape)}",
            flush=True,
        )

    base = rows[0]["step_ms"]
    for r in rows[1:]:
        r["loss_share"] = (r["step_ms"] - base) / r["step_ms"]
    env = environment(device)
    stem = args.tag or f"train-step-{device.type}-{env['date'][:10]}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"environment": env, "args": vars(args), "rows": rows}, indent=1))
    d = 1
    for s in rows[0]["feature_shape"][2:]:
        d *= s
    lines = [
        f"# One MTUT training step (RGB + depth I3D, SSA at {args.endpoint}): {env.get('device_name', env['device'])}",
        "",
        f"{env['date']} · torch {env['torch']} · batch {args.batch}, {args.frames}x{args.size}x{args.size} input, "
        f"I3D width {args.width} · SSA features {rows[0]['feature_shape']} (d = {d}) · median of {args.repeats} steps",
        "",
        "| variant | step ms (p20–p80) | SSA share of the step | peak MB |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        share = f"{100 * r['loss_share']:.1f} %" if "loss_share" in r else "—"
        lines.append(
            f"| {r['variant']} | {r['step_ms']:,.0f} ({r['p20_ms']:,.0f}–{r['p80_ms']:,.0f})"
            f" | {share} | {r['peak_mb']:,.0f} |"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("wrote", RESULTS / f"{stem}.md")


if __name__ == "__main__":
    main()
