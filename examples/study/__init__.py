"""The paired MTUT study: branched SSA-on / SSA-off runs per seed, and their aggregate.

    python -m examples.study pair --data-root DATA --out runs/study --preset cpu-small --seeds 0 1 2
    python -m examples.study aggregate runs/study --split test

See :mod:`examples.study.pairs` (the runs), :mod:`examples.study.aggregate` (the table,
statistics and plot) and :mod:`examples.study.stats` (the t-test and the bootstrap, on
scipy.stats).
"""
