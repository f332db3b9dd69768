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
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

MAX_REGISTERS = 64  # 65536 registers per SM / (256 threads x 4 blocks): full occupancy


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path)
    parser.add_argument("--arch", help='what TORCH_CUDA_ARCH_LIST asked for, e.g. "8.0;9.0+PTX" (default: the build record)')
    args = parser.parse_args()
    arch = args.arch or built_arch_list(args.library)
    problems = check(args.library, arch)
    for p in problems:
        print("cuda_static: FAIL:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
