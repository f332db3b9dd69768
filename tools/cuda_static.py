"""Static evidence about the compiled CUDA kernels, without a GPU (part of make gpu-static).

Reads the extension's embedded device code with cuobjdump (PyPI: nvidia-cuda-cuobjdump, or
the one triton ships) and checks:
  * machine code (SASS) for every architecture asked for, and PTX for the newest one when
    asked for ("+PTX"), so that newer GPUs can JIT it;
  * every mtut kernel: no local-memory spills or stack frame, registers within the budget
    that keeps full occupancy at 256 threads per block.
The GEMM-shaped work is not in these kernels: it runs in cuBLAS (csrc/cuda/ssa_cuda.cu), and
python_tests/test_cuda_emulated.py::test_products_run_in_the_input_precision checks which
operand dtypes (tensor-core eligible) every product gets.

  python tools/cuda_static.py mtut_ops/_C.abi3.so [--arch "8.0;9.0+PTX"]

(--arch defaults to the TORCH_CUDA_ARCH_LIST the library was built with, recorded in
mtut_ops/_build_info.py by setup.py.)

  python tools/cuda_static.py --launches

prints every launch of ours at the named shapes (I3D Mixed_3c, Mixed_4f, Mixed_5c at 224
and 112 input; N = 1 and 6; M = 2 and 3; bf16 and fp32; both algorithms): its grid, and
whether it fills a 132-SM H100 for two waves at full occupancy (8 blocks of 256 threads an
SM: 2112 blocks). The grids come from the host code itself: the CUDA emulation
(python_tests/cuda_emulation, a CPU build) runs the forward, backward and loss with the GPU
build's budgets and logs each launch instead of running it. A launch short of two waves
fails the check unless its kernel is small by design (below, with the reason); needs no
CUDA toolkit. Given a library as well, both checks run.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

MAX_REGISTERS = 64  # 65536 registers per SM / (256 threads x 4 blocks): full occupancy
ROOT = Path(__file__).resolve().parents[1]

SMS, BLOCKS_PER_SM = 132, 8  # H100 SXM; 2048 threads an SM in blocks of 256
TWO_WAVES = 2 * SMS * BLOCKS_PER_SM
# name: (C, spatial) at 224 input (64 frames) and 112 input (32 frames)
SHAPES = {
    "Mixed_3c@224": (480, (32, 28, 28)),
    "Mixed_4f@224": (832, (16, 14, 14)),
    "Mixed_5c@224": (1024, (8, 7, 7)),
    "Mixed_3c@112": (480, (16, 14, 14)),
    "Mixed_4f@112": (832, (8, 7, 7)),
    "Mixed_5c@112": (1024, (2, 3, 3)),
}
# Kernels small by design: what one launch reads at these shapes, and why that is its size.
SMALL = {
    "loss_from_sqdist_kernel": "one block by design: reads S and ce, N M^2 + M N values (< 64 KB for N < 600)",
    "loss_from_sqdist_backward_kernel": "one block by design: reads S and ce, N M^2 + M N values",
    "pair_coefficients_kernel": "a thread per (sample, modality): reads the N M^2 weights",
    "student_pointers_kernel": "a thread per sample: writes 3 N L pointers",
    "combine_gram_kernel": "a thread per (sample, pair): reads the N M (M + 1) / 2 square sums",
    "sum_partials_kernel": "a block per (sample, block): reads its chunks' fp64 sums (<= 2112: 17 KB)",
    "sum_pair_partials_kernel": "a block per (sample, pair): reads its strips' and chunks' fp64 sums",
    "row_scale_kernel": "a thread per row: sums its segments' fp64 partials (N sum C x segments values)",
}
# Kernels whose blocks take whole rows by design (a row's reduction in one block, or whole rows
# a chunk): the grid is at most the rows, (N, C, M, d) -> rows. Short of two waves only where
# there are fewer rows than that.
ROWS = {
    "normalize_backward_kernel": (
        "a block a row: the row's <x, graw> and its projection in one pass",
        lambda N, C, M, d: N * C,
    ),
    "folded_blocks_kernel": ("a block a row of B_m: the row's t_c over its M C entries", lambda N, C, M, d: N * C),
    "scaled_strip_kernel": ("whole rows a chunk", lambda N, C, M, d: N * M * C),
    "strip_sqdiff_kernel": ("whole strip rows a chunk", lambda N, C, M, d: N * d),
}
# Kernels whose chunks are sized by the fill rules (fill_chunks, row_split, row_segments):
# two waves, or every thread its least share of the pass (entries a thread). Short of two
# waves only where the pass has fewer entries than that: (N, C, M, d) -> entries (a bound).
PASS = {
    "block_sqnorm_kernel": (1, lambda N, C, M, d: N * C * C),
    "combine_strips_kernel": (1, lambda N, C, M, d: N * d * d),
    "folded_finish_kernel": (4, lambda N, C, M, d: N * C * d),
    "stack_strip_kernel": (4, lambda N, C, M, d: N * M * C * d),
    "row_sqsum_kernel": (4, lambda N, C, M, d: N * M * C * d),
    "scaled_strip_kernel": (1, lambda N, C, M, d: N * M * C * d),
    "strip_sqdiff_kernel": (1, lambda N, C, M, d: N * d * d),
}


def cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import importlib.util

    for package in ("nvidia", "triton"):
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for candidate in Path(root).rglob("cuobjdump"):
                if candidate.is_file():
                    return str(candidate)
    sys.exit("cuda_static: no cuobjdump (pip install nvidia-cuda-cuobjdump)")


def run(*args) -> str:
    return subprocess.run([cuobjdump(), *args], check=True, capture_output=True, text=True).stdout


def expected_archs(arch_list: str) -> tuple[set[str], str | None]:
    sass, ptx = set(), None
    for item in re.split(r"[;\s]+", arch_list.strip()):
        if not item:
            continue
        sm = "sm_" + item.replace("+PTX", "").replace(".", "")
        sass.add(sm)
        if item.endswith("+PTX"):
            ptx = sm.replace("sm_", "compute_")
    return sass, ptx


def check(library: Path, arch_list: str) -> list[str]:
    problems = []
    sass, ptx = expected_archs(arch_list)
    elves = run("--list-elf", str(library))
    have = set(re.findall(r"sm_\d+a?", elves))
    for sm in sorted(sass - have):
        problems.append(f"no machine code for {sm} (has {sorted(have)})")
    if ptx:
        ptxs = run("--list-ptx", str(library))
        if ptx.replace("compute_", "sm_") not in ptxs and ptx not in ptxs:
            problems.append(f"no PTX for {ptx} (has: {ptxs.strip() or 'none'})")
    usage = run("--dump-resource-usage", str(library))
    kernels = 0
    for name, line in re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", usage):
        if "mtut" not in name:
            continue
        kernels += 1
        fields = dict(re.findall(r"(\w+):(\d+)", line))
        regs, stack, local = int(fields["REG"]), int(fields["STACK"]), int(fields["LOCAL"])
        if local or stack:
            problems.append(f"{name}: spills (LOCAL {local} B, STACK {stack} B)")
        if regs > MAX_REGISTERS:
            problems.append(f"{name}: {regs} registers > {MAX_REGISTERS}")
    if kernels == 0:
        problems.append("no mtut kernel found: was the extension built with its CUDA kernels?")
    print(f"cuda_static: {library.name}: {kernels} kernel images checked, SASS {sorted(have)}")
    return problems


def built_arch_list(library: Path) -> str:
    record = library.parent / "_build_info.py"
    values: dict = {}
    if record.exists():
        exec(record.read_text(), values)  # a file setup.py wrote next to the library
    if not values.get("CUDA_ARCH_LIST"):
        sys.exit(f"cuda_static: {record} records no CUDA architectures: was the library built with CUDA?")
    return values["CUDA_ARCH_LIST"]


def emulated_ops():
    """torch.ops.mtut_emulated: the CUDA code built for the CPU (as python_tests/test_cuda_emulated.py builds it)."""
    import torch
    from torch.utils import cpp_extension

    here = ROOT / "python_tests" / "cuda_emulation"
    build = ROOT / "build" / "cuda_emulated"
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="mtut_cuda_emulated",
        sources=[str(here / "ssa_cuda_emulated.cpp"), str(ROOT / "csrc" / "ssa_common.cpp")],
        extra_include_paths=[str(ROOT / "csrc"), str(here)],
        extra_cflags=["-O2", "-std=c++20"],
        build_directory=str(build),
        is_python_module=False,
    )
    return torch.ops.mtut_emulated


def launch_rows(ops, N: int, C: int, spatial, M: int, dtype, algo: str) -> list[tuple]:
    """(pass, kernel, grid, launches) of one forward, backward and loss, repeated launches counted once."""
    import torch

    feats = [torch.empty(N, C, *spatial, dtype=dtype) for _ in range(M)]  # never written nor read
    counts: dict[tuple, int] = {}
    for line in ops.launch_plan(feats, algo, M - 1):
        phase, kernel, gx, gy, gz, threads = line.split()
        assert int(threads) == 256, line
        key = (phase, kernel, (int(gx), int(gy), int(gz)))
        counts[key] = counts.get(key, 0) + 1
    return [(*key, n) for key, n in counts.items()]


def verdict(kernel: str, grid: tuple, shape: tuple) -> tuple[str, bool]:
    """(what the table says, whether it passes) for a launch at shape (N, C, M, d)."""
    blocks = grid[0] * grid[1] * grid[2]
    if blocks >= TWO_WAVES:
        return f"{blocks / (SMS * BLOCKS_PER_SM):.1f} waves", True
    if kernel in SMALL:
        return "small: " + SMALL[kernel], True
    if kernel in ROWS and blocks >= ROWS[kernel][1](*shape):
        why, rows = ROWS[kernel]
        return f"rows: {why}; {rows(*shape)} rows", True
    if kernel in PASS:
        share, entries = PASS[kernel]
        if entries(*shape) < TWO_WAVES * 256 * share:
            return f"small pass: <= {entries(*shape)} entries, {share} a thread", True
    return f"UNDER-FILLED: {blocks} blocks < {TWO_WAVES}", False


def check_launches() -> list[str]:
    import torch

    sys.path.insert(0, str(ROOT))
    from mtut_ops import _validation as V

    ops = emulated_ops()
    problems = []
    print(
        f"cuda_static: launches at the named shapes, two waves = {TWO_WAVES} blocks of 256 threads "
        f"({SMS} SMs x {BLOCKS_PER_SM} blocks)"
    )
    print(
        f"{'shape':13} {'N':>2} {'M':>2} {'dtype':5} {'algo':6} {'pass':8} {'kernel':34} {'grid':>18} {'n':>4}  verdict"
    )
    for name, (C, spatial) in SHAPES.items():
        for N in (1, 6):
            for M in (2, 3):
                for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
                    d = math.prod(spatial)
                    auto = V.resolve_algo("auto", d, [C] * M, "cuda", dtype)
                    for algo in ("gram", "direct"):
                        for phase, kernel, grid, n in launch_rows(ops, N, C, spatial, M, dtype, algo):
                            says, ok = verdict(kernel, grid, (N, C, M, d))
                            if not ok and algo != auto:  # (reported, not failed: auto never runs it here)
                                says, ok = says + f" (auto picks {auto} here)", True
                            g = "x".join(map(str, grid))
                            print(
                                f"{name:13} {N:>2} {M:>2} {dname:5} {algo:6} {phase:8} {kernel:34} {g:>18} {n:>4}"
                                f"  {says}"
                            )
                            if not ok:
                                problems.append(f"{name} N={N} M={M} {dname} {algo} {phase}: {kernel} {g}: {says}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path, nargs="?")
    parser.add_argument(
        "--arch", help='what TORCH_CUDA_ARCH_LIST asked for, e.g. "8.0;9.0+PTX" (default: the build record)'
    )
    parser.add_argument("--launches", action="store_true", help="the launch table (no CUDA toolkit needed)")
    args = parser.parse_args()
    if args.library is None and not args.launches:
        parser.error("give the library, --launches, or both")
    problems = []
    if args.library is not None:
        problems += check(args.library, args.arch or built_arch_list(args.library))
    if args.launches or args.library is not None:
        problems += check_launches()
    for p in problems:
        print("cuda_static: FAIL:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
