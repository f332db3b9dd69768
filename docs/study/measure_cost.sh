#!/usr/bin/env bash
# Measures what one paired seed of the planned study costs on this machine, on a small
# dataset with the planned generator settings (fewer clips) and a few epochs; the per
# clip-epoch times it prints are what docs/study/design.md extrapolates from.
#   bash docs/study/measure_cost.sh [OUT]      (from the repository root; ~5 min on 2 idle cores)
# THREADS (default 1) sets torch's CPU threads: on a 2-core machine shared with other jobs,
# torch's default (2 OpenMP threads, spin-waiting) ran a training step 20-50x slower than
# 1 thread; on an idle machine 2 threads are faster. The machine's load is printed.
set -euo pipefail
OUT=${1:-runs/study-cost}
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-1}
rm -rf "$OUT"
uptime
# the planned generator settings (docs/study/design.md), 1 repetition per subject instead of 4
$PY -m examples.data make-synthetic --out "$OUT/data" --seed 14 --subjects 16 --test-subjects 6 \
    --clips-per-class 16 --rgb-difficulty 0.5 --rgb-hard-p 0.5 --quiet
COMMON=(--data-root "$OUT/data" --preset cpu-small --val-subjects 2 --no-eval-test --eval-every 1
        --no-progress --no-plots --no-tensorboard --seeds 0 --threads "$THREADS")
# 64x64, SSA at Mixed_3c (8x8x8 positions): trunk 1 epoch, every arm 2 epochs
/usr/bin/time -v $PY -m examples.study pair "${COMMON[@]}" --out "$OUT/s64" --epochs 3 --ssa-start 2 \
    --ssa-endpoints Mixed_3c --arms ssa_off ssa_on ssa_shuffled ssa_constant 2> "$OUT/s64.time"
# 128x128, SSA at Mixed_4f (4x8x8 positions): the SSA-on arm only
/usr/bin/time -v $PY -m examples.study pair "${COMMON[@]}" --out "$OUT/s128" --epochs 3 --ssa-start 2 \
    --size 128 --resize 144 --ssa-endpoints Mixed_4f --arms ssa_on 2> "$OUT/s128.time"
uptime
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("s64", "s128"):
    seed = out / name / "seed0"
    pair = json.loads((seed / "pair.json").read_text())
    print(f"{name}: wall seconds per run of this call: {pair['seconds']}")
    for run in ["trunk", *pair["arms"]]:
        rows = json.loads((seed / run / "metrics.json").read_text())
        for r in rows:
            clips = r["train/clips_per_s"]
            print(f"  {run:13s} epoch {r['epoch']}: train {r['train/seconds']:.1f} s ({1 / clips:.3f} s per clip), "
                  f"ssa {r['train/ssa']:.4f}, rgb/depth train top-1 {r['train/top1/rgb']:.2f}/{r['train/top1/depth']:.2f}")
PYEOF
