"""Which BLAS the process uses, read from the loaded libraries (not from a timing)."""

import os
import re
import subprocess
import sys

import pytest

PROBE = (
    "import mlx_musicviz, mlx.core as mx; from mlx_musicviz._blas import blas_provider; "
    "mx.set_default_device(mx.cpu); a = mx.ones((64, 64)); mx.eval(a @ a); print(blas_provider())"
)
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"


def provider(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="macOS uses Accelerate")
def test_openblas_serves_mlx_matmul():
    if not os.path.exists(OPENBLAS):
        pytest.fail("OpenBLAS is not installed: apt-get install libopenblas0-pthread (see README)")
    assert "openblas" in provider().lower()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="macOS uses Accelerate")
def test_env_var_turns_it_off():
    p = provider(MLX_MUSICVIZ_BLAS="0")
    # the BLAS bundled in mlx's backend wheel: mlx_cpu.libs (mlx-cuda-13's is mlx_cuda_13.libs)
    assert "openblas" not in p.lower() and re.search(r"mlx_[a-z0-9_]+\.libs", p), p


# A 64 MiB result computed twice: the second reuses the freed pages unless glibc unmapped them.
# On the CPU device: a GPU backend's arrays come from its own allocator, not from malloc.
FAULTS = (
    "import resource, mlx_musicviz, mlx.core as mx; from mlx_musicviz._malloc import keep_freed_memory; "
    "mx.set_default_device(mx.cpu); "
    "x = mx.ones((16 << 20,)); mx.eval(x); y = x * 2; mx.eval(y); del y; "
    "r = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; y = x * 3; mx.eval(y); "
    "print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r, y[-1].item())"
)


def page_faults(**env):
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    applied, faults, value = out.stdout.split()
    assert float(value) == 3.0
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_large_arrays_reuse_freed_pages():
    applied, faults = page_faults()
    assert applied and faults < 1000, faults  # 16,384 pages when each array is a fresh mmap
    applied, faults = page_faults(MLX_MUSICVIZ_MALLOC="0")
    assert not applied and faults > 16000, faults
