"""Which BLAS the process uses, read from the loaded libraries (not from a timing)."""

import os
import subprocess
import sys

import pytest

PROBE = (
    "import mlx_musicviz, mlx.core as mx; from mlx_musicviz._blas import blas_provider; "
    "a = mx.ones((64, 64)); mx.eval(a @ a); print(blas_provider())"
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
    assert "openblas" not in p.lower() and "mlx_cpu.libs" in p
