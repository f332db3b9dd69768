#!/usr/bin/env bash
# Rerun of the registered test phase at 25206aa (docs/study/registration.md), 2026-12-07,
# as it ran: in a worktree of 25206aa built with `MTUT_CPU_ONLY=1 python setup.py build_ext
# --inplace`, from its root (WORKTREE), with a python that has torch 2.14.1 (PY).
#   git worktree add ../study25 25206aa && cd ../study25 && bash /path/to/rerun.sh
# Resumable: run it again and every run continues from its last checkpoint.
set -euo pipefail
cd "${WORKTREE:-.}"
PY=${PY:-python}
export PYTHONPATH=$PWD
log=runs/study/rerun.log
echo "start $(date -u) commit $(git rev-parse HEAD) torch $($PY -c 'import torch;print(torch.__version__)')" >> $log
[ -d runs/study/data ] || $PY -m examples.data make-synthetic --out runs/study/data --seed 14 --subjects 16 --test-subjects 6 \
    --clips-per-class 64 --rgb-difficulty 0.5 --rgb-hard-p 0.5 --hand-scale 2 >> $log 2>&1
[ -d runs/study/pretext-data ] || $PY -m examples.data make-synthetic --out runs/study/pretext-data --seed 14 \
    --classes 3,4,7,8,9,10,12,13,14,15,16,17,19,22,23,24,25 --first-subject 17 --subjects 10 \
    --test-subjects 1 --clips-per-class 40 --rgb-difficulty 0.5 --rgb-hard-p 0.5 --hand-scale 2 >> $log 2>&1
echo "data done $(date -u)" >> $log
[ -f runs/study/pretext/pretext_rgb.pth ] || $PY -m examples.study pretext --data-root runs/study/pretext-data --target-root runs/study/data \
        --out runs/study/pretext --preset cpu-pretext --threads 1 --epochs 30 --lr-steps 12 20 --hand-boxes runs/study/pretext-data/hand_boxes.json --no-progress >> runs/study/pretext.log 2>&1
sha256sum runs/study/pretext/pretext_rgb.pth >> $log
echo "pretext done $(date -u)" >> $log
common=(--data-root runs/study/data --out runs/study/test --preset cpu-study \
    --epochs 24 --lr-steps 10 --ssa-start 20 --lambda 0.5 \
    --pretrained runs/study/pretext/pretext_rgb.pth --val-subjects 2 --threads 1 --no-progress --no-plots \
    --arms ssa_off ssa_on ssa_shuffled ssa_constant)
$PY -m examples.study pair "${common[@]}" --seeds ${SEEDS_A:-0 1 2 3 4} >> runs/study/pairA.log 2>&1 &
$PY -m examples.study pair "${common[@]}" --seeds ${SEEDS_B:-5 6 7 8 9} >> runs/study/pairB.log 2>&1 &
wait
echo "pairs done $(date -u)" >> $log
