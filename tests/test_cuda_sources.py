"""Every CUDA source compiles with nvcc for sm_80 and sm_90 (so a syntax error cannot land), and the backend
choice works without CuPy or a GPU."""
import shutil
import subprocess

import pytest
import torch

from onmt_structdrop import cuda_kernels

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


def test_backend_choice(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("ONMT_STRUCTDROP_BACKEND", raising=False)
    assert cuda_kernels.backend(cpu) == "torch"
    monkeypatch.setenv("ONMT_STRUCTDROP_BACKEND", "torch")
    assert cuda_kernels.backend() == "torch"
    monkeypatch.setenv("ONMT_STRUCTDROP_BACKEND", "triton")
    with pytest.raises(ValueError, match="must be torch or cupy, got 'triton'"):
        cuda_kernels.backend()
    monkeypatch.setattr(cuda_kernels, "_cupy", lambda: None)
    monkeypatch.setenv("ONMT_STRUCTDROP_BACKEND", "cupy")
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        cuda_kernels.backend()
    monkeypatch.delenv("ONMT_STRUCTDROP_BACKEND")
    assert cuda_kernels.backend() == "torch"
