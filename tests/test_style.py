"""The repository's own text: the code passes ruff's checks (pyproject.toml's [tool.ruff]: no unused
imports, undefined names or shadowed definitions, imports sorted) in the package, the tests and the
benchmarks; the README's torch install is the pinned CPU build."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_installs_the_pinned_torch_from_the_cpu_index():
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"pip install torch==(\S+)([^`\n]*)", readme)
    assert commands, "the README names no torch install"
    for version, rest in commands:
        assert version == pin and "--index-url https://download.pytorch.org/whl/cpu" in rest, (version, rest)
