// Test-only: the CUDA kernels of csrc/cuda/ssa_cuda.cu compiled for the CPU with the
// emulation of cuda_emulation.h, registered as torch.ops.mtut_emulated.* for CPU tensors.
// Built on demand by python_tests/test_cuda_emulated.py; never part of the package.
#define MTUT_CUDA_EMULATE 1
#include "cuda/ssa_cuda.cu"
