"""The start-up a short render or live mode pays: a fresh process importing the analysis and analysing a clip."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from ..errors import MusicvizError

_CODE = ("import sys, time\n"
         "t0 = time.perf_counter()\n"
         "from mlx_musicviz.audio import analyze\n"
         "t1 = time.perf_counter()\n"
         "f = analyze(sys.argv[1], fps=24, duration=float(sys.argv[2]))\n"
         "t2 = time.perf_counter()\n"
         "heavy = [m for m in ('librosa', 'scipy', 'sklearn', 'numba') if m in sys.modules]\n"
         "print(f.duration, t1 - t0, t2 - t1, ','.join(heavy) or '-')\n")


def bench_startup(audio, seconds: float, runs: int = 3) -> dict:
    """Seconds a fresh Python process takes to import `mlx_musicviz.audio` and to analyse the first
    `seconds` of `audio` (medians over `runs` processes), the seconds analysed (less where the song is
    shorter), and the heavy modules the analysis imported."""
    imports, analyses, heavy, clip = [], [], "", seconds
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", _CODE, str(audio), str(seconds)], capture_output=True, text=True)
        if r.returncode != 0:
            raise MusicvizError(f"the start-up run failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        clip, i, a, heavy = r.stdout.split()
        imports.append(float(i))
        analyses.append(float(a))
    return {"seconds": float(clip), "runs": runs, "import_s": float(np.median(imports)),
            "analysis_s": float(np.median(analyses)),
            "total_s": float(np.median(np.add(imports, analyses))), "heavy_modules": heavy.split(",") if heavy != "-" else []}


def startup_summary(r: dict) -> str:
    """One line of the start-up figures."""
    return (f"a fresh process analyses {r['seconds']:.1f} s of audio in {r['total_s']:.2f} s (import {r['import_s']:.2f} s, "
            f"analysis {r['analysis_s']:.2f} s; median of {r['runs']})")
