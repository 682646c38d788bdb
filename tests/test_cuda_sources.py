"""Every CUDA source compiles with nvcc for sm_80 and sm_90, so that a syntax error cannot land."""
import shutil
import subprocess

import pytest

from onmt_structdrop.ops import cupy_backend as cuda_kernels

NVCC = shutil.which("nvcc")


def test_every_kernel_has_a_source():
    assert set(cuda_kernels.KERNELS) == set(cuda_kernels.sources())
    for name, functions in cuda_kernels.KERNELS.items():
        text = cuda_kernels.sources()[name].read_text()
        assert all(f'extern "C" __global__ void {f}(' in text for f in functions)


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(cuda_kernels.sources()))
def test_source_compiles(name, arch, tmp_path):
    result = subprocess.run([NVCC, f"-arch={arch}", "-cubin", "-Werror", "all-warnings", "-o",
                             str(tmp_path / f"{name}.cubin"), str(cuda_kernels.sources()[name])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
