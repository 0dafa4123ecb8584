"""The code passes ruff's pyflakes and pycodestyle checks (pyproject.toml's [tool.ruff]): no unused
imports, undefined names or shadowed definitions, in the package, the tests and the benchmarks."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "mlx_musicviz", "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
