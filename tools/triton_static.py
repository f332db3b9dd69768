"""Static evidence for the triton kernels, without a GPU: compile every kernel x autotune
config x operand dtype for sm_80 and sm_90 (triton's own AOT path, its bundled ptxas and
cuobjdump) and check what the machine code does.

    python tools/triton_static.py [--jobs N] [--arch 80 90] [--quick] [--markdown FILE] [--json FILE]

Exit status 0 when every check holds, 1 otherwise (the failing rows are printed).

What is compiled: each @triton.jit kernel of mtut_ops/triton with the autotune configs it
ships (the launcher lists of direct.py and gram.py: tensor-core configs for float16,
bfloat16 and TF32 operands, exact-fp32 configs, the one float64 config), for the operand
dtypes fp32 (exact IEEE), tf32, bf16, fp16 and fp64, with the constexprs the launchers
pass for that dtype and the argument specialization triton's runtime gives at the I3D
shapes (pointers 16-byte aligned; integers as triton specializes them: a multiple of 16,
or 1). Each kernel is compiled at the shape where algo="auto" runs it (direct: Mixed_5c;
gram: Mixed_4f, whose specialization Mixed_3c shares), and at the other class of sizes
(SPECIALIZATIONS).

What is checked, per compiled kernel:
  * tensor cores in every GEMM-shaped loop: for the fp16, bf16 and tf32 paths every tl.dot
    of a GEMM kernel is lowered to an MMA layout in the TTGIR (mma.sync or wgmma, none to
    FMAs), the PTX has mma.sync or wgmma on the operand type (f16, bf16, tf32) and the SASS
    HMMA or HGMMA; the exact fp32 path has none of them (it must stay IEEE); fp64 runs
    every dot on DMMA (fp64 mma.sync);
  * no register spills: ptxas reports 0 bytes of spill stores and loads, and the SASS
    holds no local-memory access (STL/LDL);
  * shared memory within the device limit: 166912 bytes (163 KiB, the per-block opt-in
    maximum of sm_80, A100) and 232448 bytes (227 KiB, sm_90, H100); above 101376 bytes
    (99 KiB, sm_86/sm_89) is reported, not failed.
Also reported: registers per thread, cp.async / TMA (pipelined loads), ldmatrix (LDSM).

By default a sample of the full cross product is compiled (``jobs``: every config of every
dtype on both archs where each kernel runs at the I3D shapes, float16 sampled where its
code is bfloat16's with another MMA type; one config per dtype at the other argument
specialization); --full compiles everything, --quick one config per (kernel, dtype, arch).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("tools/triton_static.py compiles for GPUs: unset TRITON_INTERPRET")

SHARED_LIMIT = {80: 166912, 90: 232448}
SHARED_SMALL_GPU = 101376  # sm_86 / sm_89: 99 KiB per block
MODES = ("fp32", "tf32", "bf16", "fp16", "fp64")
TC_TYPE = {"fp16": "f16", "bf16": "bf16", "tf32": "tf32"}
# mode -> (storage dtype of the staged operands, compute dtype, launcher kind, ROUND code, PRECISION)
MODE = {
    "fp32": ("fp32", "fp32", "ieee", 0, "ieee"),
    "tf32": ("fp32", "fp32", "tf32", 3, "tf32"),
    "bf16": ("bf16", "fp32", "tc16", 2, "ieee"),
    "fp16": ("fp16", "fp32", "tc16", 1, "ieee"),
    "fp64": ("fp64", "fp64", "fp64", 0, "ieee"),
}
# I3D shapes (N = 6): d = prod(T, H, W), channels per modality; and one whose sizes are
# no multiples of 16 (the GEMM kernels see d padded to a multiple of 16 whatever d is, but C
# can be anything)
SHAPES = {"Mixed_5c": (392, 1024), "Mixed_4f": (3136, 832), "Mixed_3c": (25088, 480), "odd": (999, 333)}


def padded(n: int) -> int:
    return (n + 15) // 16 * 16


@dataclass
class Job:
    kernel: str
    mode: str
    arch: int
    shape: str
    M: int
    config: dict  # kwargs, num_warps, num_stages


@dataclass
class Result:
    job: Job
    ok: bool = True
    problems: list = field(default_factory=list)
    tensor_core: str = ""  # e.g. "wgmma.bf16", "mma.sync.f16", "" (none)
    sass_mma: dict = field(default_factory=dict)
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack: int = -1
    local_sass: int = -1
    shared: int = -1
    cp_async: bool = False
    tma: bool = False
    dots: int = 0  # tl.dot ops in the TTGIR
    mma_dots: int = 0  # of which on tensor cores
    ldmatrix: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------ the kernels and their arguments


def kernels():
    """name -> (jit function, {kind: autotuned launcher} or None, argument builder, is a GEMM kernel)."""
    from mtut_ops.triton import _common, direct, gram

    # the GEMM kernels take the padded row length for d (mtut_ops/triton/_common.py)
    def direct_forward(mode, d, Cm, M):
        op, cd, kind, *_ = MODE[mode]
        P = M * (M - 1) // 2
        n_slots = -((-padded(d) // _common.min_block(direct._FORWARD[kind], "BLOCK_D")) ** 2)
        return (
            dict(z="*" + op, offsets="*i32", pairs="*i32", partial="*fp64"),
            dict(d=padded(d), C=M * Cm, P=P, n_slots=n_slots),
        )

    def direct_backward(mode, d, Cm, M):
        op, cd, *_ = MODE[mode]
        return dict(z="*" + op, offsets="*i32", weight="*" + cd, out="*" + cd), dict(d=padded(d), C=M * Cm, M=M)

    def gram_forward(mode, d, Cm, M):
        op, cd, kind, *_ = MODE[mode]
        n_slots = -((-Cm // _common.min_block(gram._FORWARD[kind], "BLOCK_C")) ** 2)
        return (
            dict(z="*" + op, offsets="*i32", blocks="*i32", partial="*fp64"),
            dict(d=padded(d), C=M * Cm, C_max=Cm, n_slots=n_slots),
        )

    def gram_coef(mode, d, Cm, M):
        op, cd, *_ = MODE[mode]
        return (
            dict(z="*" + op, offsets="*i32", needed="*i32", h="*" + op),
            dict(d=padded(d), C=M * Cm, ldh=padded(M * Cm), M=M, C_max=Cm),
        )

    def gram_apply(mode, d, Cm, M):
        op, cd, *_ = MODE[mode]
        return (
            dict(z="*" + op, h="*" + op, offsets="*i32", needed="*i32", weight="*" + cd, out="*" + cd),
            dict(d=padded(d), C=M * Cm, ldh=padded(M * Cm), M=M, C_max=Cm),
        )

    def stage_rows(mode, d, Cm, M):
        op, cd, *_ = MODE[mode]
        # contiguous [N, C_m, d] input: stride_d = 1; the second modality starts at row C_m
        return (
            dict(x="*" + op, z="*" + op, norm="*" + cd, inv="*" + cd),
            dict(stride_n=Cm * d, stride_c=d, stride_d=1, row0=Cm, C=M * Cm, C_m=Cm, d=d, ld=padded(d)),
        )

    return {
        "direct_forward": (direct._direct_forward, direct._FORWARD, direct_forward, True),
        "direct_backward": (direct._direct_backward, direct._BACKWARD, direct_backward, True),
        "gram_forward": (gram._gram_forward, gram._FORWARD, gram_forward, True),
        "gram_coef": (gram._gram_coef, gram._COEF, gram_coef, True),
        "gram_apply": (gram._gram_apply, gram._APPLY, gram_apply, True),
        "stage_rows": (_common._stage_rows, None, stage_rows, False),
    }


def constexprs(kernel: str, mode: str, fn) -> dict:
    """What the launchers pass (direct.py / gram.py / _common.pack) for that operand dtype."""
    _, _, _, round_code, precision = MODE[mode]
    from mtut_ops.triton import _common

    if kernel == "stage_rows":
        return dict(ROUND=round_code, BLOCK=_common._STAGE_BLOCK)
    out = dict(PRECISION=precision, UPCAST=False)
    if "ROUND" in fn.arg_names:
        out["ROUND"] = round_code
    if "SCALED" in fn.arg_names:
        out["SCALED"] = mode == "fp16"
    return out


def configs_of(kernel: str, mode: str, launchers, quick: bool) -> list:
    if launchers is None:
        from mtut_ops.triton import _common

        return [dict(kwargs={}, num_warps=_common._STAGE_WARPS, num_stages=1)]
    kind = MODE[mode][2]
    cfgs = [
        dict(kwargs=dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages) for c in launchers[kind].configs
    ]
    return cfgs[:1] if quick else cfgs


#: (shape, M) per kernel: first its home (where algo="auto" runs it at M = 2; every I3D shape
#: specializes alike: d padded, C_m and C multiples of 16, P = 1 a constant), then the other
#: specialization class: C not a multiple of 16, M = 3 (P = 3). The staging kernel sees
#: the unpadded d: 392 (Mixed_5c) is no multiple of 16, 3136 and 25088 are.
SPECIALIZATIONS = {
    "direct_forward": [("Mixed_5c", 2), ("odd", 3)],
    "direct_backward": [("Mixed_5c", 2), ("odd", 3)],
    "gram_forward": [("Mixed_4f", 2), ("odd", 3)],
    "gram_coef": [("Mixed_4f", 2), ("odd", 3)],
    "gram_apply": [("Mixed_4f", 2), ("odd", 3)],
    "stage_rows": [("Mixed_5c", 2), ("Mixed_4f", 2)],
}


#: Kernels whose float16 code differs from their bfloat16 code by more than the MMA
#: instruction's type: float16 rounds E / H after a power-of-two scale, bfloat16 by bits.
FP16_OWN_CODE = {"direct_backward", "gram_coef", "gram_apply"}


def jobs(archs, quick: bool = False, full: bool = False, only=None) -> list:
    """What to compile. full: every kernel x config x dtype x arch x specialization. The
    default (the sample): at each kernel's home specialization every config of every dtype
    for every arch, except float16 in the kernels whose float16 code is their bfloat16 code
    with another MMA type (direct_forward, gram_forward; stage_rows has one config): there
    one config per arch shows the instruction; at the other specialization the first config
    of each dtype for the newest arch. quick: one config per kernel, dtype and arch, home
    specialization only."""
    out = []
    for name, (_fn, launchers, _, _) in kernels().items():
        if only and name not in only:
            continue
        for i, (shape, M) in enumerate(SPECIALIZATIONS[name]):
            if i > 0 and quick:
                continue
            for mode in MODES:
                cfgs = configs_of(name, mode, launchers, quick)
                arch_list = list(archs)
                if not full:
                    if i == 0 and mode == "fp16" and name not in FP16_OWN_CODE:
                        cfgs = cfgs[:1]
                    if i > 0:
                        cfgs, arch_list = cfgs[:1], [max(archs)]
                for cfg in cfgs:
                    for arch in arch_list:
                        out.append(Job(name, mode, arch, shape, M, cfg))
    return out


# ------------------------------------------------------------------ compiling and reading the code


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _signature(fn, ptr_types: dict, ints: dict, consts: dict):
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    signature, constants, attrs = {}, dict(consts), {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name in ptr_types:
            signature[name] = ptr_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in ints:
            ty, spec = native_specialize_impl(CUDABackend, ints[name], False, True, True)
            if ty == "constexpr":
                signature[name] = "constexpr"
                constants[name] = spec
            else:
                signature[name] = ty
                if spec == "D":
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "eps":
            signature[name] = "fp64"
        else:
            raise KeyError(f"{fn.__name__}: no type for argument {name}")
    return signature, constants, attrs


def compile_and_read(
    fn, signature: dict, constants: dict, attrs: dict, arch: int, num_warps: int, num_stages: int, res: Result
) -> Result:
    """AOT-compile one kernel for sm_<arch> and fill ``res`` with what its code does."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    log = io.StringIO()
    triton.knobs.nvidia.dump_ptxas_log = True  # triton prints ptxas -v's report: registers, spills
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": num_warps, "num_stages": num_stages},
            )
    except Exception as e:  # a config that does not compile is a failure of the check
        res.problems.append(f"does not compile: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return res
    ptx, ttgir, text = k.asm["ptx"], k.asm["ttgir"], log.getvalue()
    m = re.search(r"Used (\d+) registers", text)
    res.registers = int(m.group(1)) if m else -1
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        res.stack, res.spill_stores, res.spill_loads = map(int, m.groups())
    res.shared = int(k.metadata.shared)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    try:
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    ops = collections.Counter(re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass))
    res.sass_mma = {op: n for op, n in ops.items() if op in ("HMMA", "HGMMA", "DMMA")}
    res.local_sass = ops.get("STL", 0) + ops.get("LDL", 0)
    res.ldmatrix = ops.get("LDSM", 0)
    res.cp_async = "cp.async" in ptx
    res.tma = "cp.async.bulk.tensor" in ptx
    mma = re.findall(r"\b(mma\.sync\.aligned\.[\w.]+|wgmma\.mma_async\.sync\.aligned\.[\w.]+)", ptx)
    res.tensor_core = ",".join(
        sorted({("wgmma" if s.startswith("wgmma") else "mma.sync") + "." + _operand_type(s) for s in mma})
    )
    res.dots, res.mma_dots = _dots(ttgir)
    return res


def _dots(ttgir: str) -> tuple:
    """(dots, dots on tensor cores) of a kernel's TTGIR: every tl.dot left in the code, and
    those lowered to an MMA layout (mma.sync or wgmma) rather than to FMAs (a blocked layout)."""
    layouts = dict(re.findall(r"^#(\w+) = #ttg\.(\w+)<", ttgir, flags=re.M))
    dots = re.findall(r"= (?:tt\.dot|ttng\.warp_group_dot) .*-> tensor<[^>]*?, #(\w+)>", ttgir)
    return len(dots), sum(layouts.get(enc) == "nvidia_mma" for enc in dots)


def check(res: Result, mode: str, is_gemm: bool, arch: int) -> Result:
    """The checks of the module docstring, as problems on ``res``."""
    if res.problems:  # did not compile
        res.ok = False
        return res
    kinds = [k for k in res.tensor_core.split(",") if k]
    if res.registers < 0 or res.spill_stores < 0:
        res.problems.append("no ptxas resource report")
    if res.spill_stores > 0 or res.spill_loads > 0:
        res.problems.append(f"spills: {res.spill_stores} B stored, {res.spill_loads} B loaded")
    if res.local_sass > 0:
        res.problems.append(f"{res.local_sass} local-memory instructions (STL/LDL) in the SASS")
    if res.shared > SHARED_LIMIT[arch]:
        res.problems.append(f"shared memory {res.shared} B > {SHARED_LIMIT[arch]} B (sm_{arch})")
    if is_gemm:
        if res.dots == 0:
            res.problems.append("no tl.dot in the code")
        if mode in TC_TYPE:
            want = TC_TYPE[mode]
            if res.mma_dots < res.dots:
                res.problems.append(f"{res.dots - res.mma_dots} of {res.dots} dots not on tensor cores (FMA)")
            if not any(k.endswith("." + want) for k in kinds):
                res.problems.append(
                    f"no tensor-core instruction on {want} operands in the PTX (found: {kinds or 'none'})"
                )
            if not (res.sass_mma.get("HMMA") or res.sass_mma.get("HGMMA")):
                res.problems.append("no HMMA/HGMMA in the SASS")
        elif mode == "fp32":
            if kinds or res.sass_mma or res.mma_dots:
                res.problems.append(f"the exact fp32 path uses tensor cores: {kinds} {res.sass_mma}")
        elif mode == "fp64":
            if res.mma_dots < res.dots or kinds != ["mma.sync.f64"] or not res.sass_mma.get("DMMA"):
                res.problems.append(f"fp64 dots not all on DMMA: {res.mma_dots}/{res.dots} {kinds} {res.sass_mma}")
    res.ok = not res.problems
    return res


def compile_job(job: Job) -> Result:
    t0 = time.time()
    res = Result(job)
    fn, _, build, is_gemm = kernels()[job.kernel]
    d, Cm = SHAPES[job.shape]
    ptr_types, ints = build(job.mode, d, Cm, job.M)
    consts = dict(job.config["kwargs"], **constexprs(job.kernel, job.mode, fn))
    signature, constants, attrs = _signature(fn, ptr_types, ints, consts)
    compile_and_read(fn, signature, constants, attrs, job.arch, job.config["num_warps"], job.config["num_stages"], res)
    check(res, job.mode, is_gemm, job.arch)
    res.seconds = time.time() - t0
    return res


def _operand_type(instr: str) -> str:
    """The A/B operand type of an mma.sync / wgmma PTX instruction name."""
    parts = instr.split(".")
    if parts[0] == "wgmma":  # wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16
        return parts[-1]
    # mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (D, A, B, C types)
    types = [p for p in parts if p in ("f16", "bf16", "tf32", "f32", "f64", "s8", "u8", "e4m3", "e5m2")]
    return types[1] if len(types) >= 3 else types[0]


def _worker_init():
    os.environ.setdefault("MTUT_REGISTER_TRITON", "0")


def run(archs=(80, 90), jobs_n=1, quick=False, full=False, only=None, progress=True) -> tuple:
    todo = jobs(archs, quick, full, only)
    t0 = time.time()
    results = []
    if jobs_n <= 1:
        for i, job in enumerate(todo):
            results.append(compile_job(job))
            if progress:
                _progress(i + 1, len(todo), results[-1], t0)
    else:
        with cf.ProcessPoolExecutor(jobs_n, initializer=_worker_init) as pool:
            for i, r in enumerate(pool.map(compile_job, todo)):
                results.append(r)
                if progress:
                    _progress(i + 1, len(todo), r, t0)
    return results, time.time() - t0


def _progress(i, n, r, t0):
    j = r.job
    flag = "ok  " if r.ok else "FAIL"
    print(
        f"[{i:3d}/{n}] {time.time() - t0:6.1f}s {flag} {j.kernel:15s} {j.mode:4s} sm_{j.arch} {j.shape}/M{j.M} "
        f"{_cfg(j.config)}",
        file=sys.stderr,
        flush=True,
    )


def _cfg(c) -> str:
    kw = ",".join(f"{k.split('_')[-1]}{v}" for k, v in c["kwargs"].items())
    return f"{kw} w{c['num_warps']} s{c['num_stages']}"


def markdown(results, seconds, archs) -> str:
    lines = [
        "| kernel | dtype | config | shape | arch | dots on TC | tensor cores (PTX / SASS) | regs | spills (st/ld B) "
        "| STL+LDL | smem B | cp.async | ok |",
        "|---|---|---|---|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in results:
        j = r.job
        sass = " ".join(f"{k}x{v}" for k, v in sorted(r.sass_mma.items())) or "-"
        lines.append(
            f"| {j.kernel} | {j.mode} | {_cfg(j.config)} | {j.shape} M={j.M} | sm_{j.arch} | {r.mma_dots}/{r.dots} "
            f"| {r.tensor_core or '-'} / {sass} "
            f"| {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.local_sass} | {r.shared}"
            f"{' (>99K)' if r.shared > SHARED_SMALL_GPU else ''}"
            f" | {'TMA' if r.tma else ('yes' if r.cp_async else 'no')} "
            f"| {'yes' if r.ok else 'NO: ' + '; '.join(r.problems)} |"
        )
    n_bad = sum(not r.ok for r in results)
    lines.append("")
    lines.append(
        f"{len(results)} kernels compiled for {', '.join(f'sm_{a}' for a in archs)} in {seconds:.0f} s; "
        f"{n_bad} failing."
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    p.add_argument("--jobs", "-j", type=int, default=1, help="parallel compiler processes (default 1)")
    p.add_argument("--quick", action="store_true", help="one config per kernel and dtype, home shape only")
    p.add_argument("--full", action="store_true", help="every kernel x config x dtype x arch x specialization")
    p.add_argument("--kernels", nargs="+", help="only these kernels")
    p.add_argument("--markdown", help="write the results table here")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # compile for real: ptxas must run to report
        import triton

        triton.knobs.cache.dir = cache
        results, seconds = run(tuple(a.arch), a.jobs, a.quick, a.full, a.kernels)
    table = markdown(results, seconds, a.arch)
    if a.markdown:
        Path(a.markdown).write_text(table + "\n")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                [dict(asdict(r.job), **{k: v for k, v in asdict(r).items() if k != "job"}) for r in results], indent=1
            )
        )
    bad = [r for r in results if not r.ok]
    for r in bad:
        j = r.job
        print(f"FAIL {j.kernel} {j.mode} sm_{j.arch} {j.shape}/M{j.M} {_cfg(j.config)}: {'; '.join(r.problems)}")
    print(f"{len(results)} compiled in {seconds:.0f} s, {len(bad)} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
