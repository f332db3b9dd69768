#!/usr/bin/env bash
# Stage 1 of the paired study (docs/study/design.md): lambda chosen on the validation split.
# One seed per call (run two seeds at once on the two cores); resumable: run it again and
# every run continues where it stopped. The test split is never loaded (--no-eval-test).
#
#   bash docs/study/stage1.sh 100 & bash docs/study/stage1.sh 101 & wait; bash docs/study/stage1.sh 102
#   python -m examples.study aggregate runs/study/val/lam0.05 --split val --out runs/study/val/lam0.05/aggregate
set -euo pipefail
seed=${1:?usage: stage1.sh SEED}
root=${ROOT:-runs/study/val}
first=0.05                 # its folder trains the trunk and the ssa_off arm, shared by the others
# lambda*/3, lambda*, 3 lambda* at Mixed_3c (design.md); the grid's extension (stage1.md):
# LAMBDAS="0.5 1.5 5" bash docs/study/stage1.sh SEED
# and SSA at LR 1e-3 (one LR step, after epoch 10):
# ROOT=runs/study/val-lr3 LR_STEPS=10 LAMBDAS=0.05 bash docs/study/stage1.sh SEED
lambdas=${LAMBDAS:-"0.05 0.02 0.15"}
common=(--data-root runs/study/data --preset cpu-study --epochs 24 --lr-steps ${LR_STEPS:-10 16} --ssa-start 20
        --pretrained runs/study/pretext/pretext_rgb.pth --val-subjects 2 --no-eval-test
        --threads 1 --no-progress --no-plots --seeds "$seed")
for lam in $lambdas; do
  out=$root/lam$lam
  if [ "$lam" != "$first" ]; then  # share the first folder's trunk and ssa_off arm (both SSA-off)
    mkdir -p "$out/seed$seed"
    for run in trunk ssa_off; do
      [ -e "$out/seed$seed/$run" ] || ln -s "$(realpath "$root/lam$first/seed$seed/$run")" "$out/seed$seed/$run"
    done
  fi
  python -m examples.study pair "${common[@]}" --lambda "$lam" --out "$out" --arms ssa_off ssa_on
done
