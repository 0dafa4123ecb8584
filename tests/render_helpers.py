"""Helpers shared by the render tests: the bundled trumpet loop, a beeping test tone, the CLI in a
subprocess or in this process, a video's frames, and a pipeline that counts its UNet calls."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import soundfile
from click.testing import CliRunner
from reference import DATA

from mlx_musicviz import cli as cli_module

RATE = 44100
TRUMPET = DATA / "audio" / "sorohanro_-_solo-trumpet-06.ogg"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", *args], capture_output=True, text=True, cwd=cwd)


def decoded_frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def unet_counting_pipeline():
    """A random tiny pipeline whose UNet calls append their batch sizes to the list returned with it."""
    from mlx_musicviz.pipeline import Pipeline

    pipe, unet_frames = Pipeline.random("tiny"), []
    denoise = pipe.denoise

    def counting_denoise(latents, prompt_embeds):
        unet_frames.append(latents.shape[0])
        return denoise(latents, prompt_embeds)

    pipe.denoise = counting_denoise
    return pipe, unet_frames


def refused(tmp_path, args, needle):
    """`render ARGS` (random:tiny, 64 px unless given) exits non-zero with one error line naming `needle`,
    no traceback and no output or partial file."""
    target = tmp_path / "out.mp4"
    model = [] if "--model" in args else ["--model", "random:tiny"]
    size = [] if "--size" in args else ["--size", "64"]
    r = cli("render", *args, *model, *size, "-o", str(target))
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial.mp4")]


def beeps(seconds: float) -> np.ndarray:
    """A 440 Hz tone switched on and off 4 times a second, at RATE."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32)


def wav(path: Path, seconds: float) -> str:
    soundfile.write(path, beeps(seconds), RATE)
    return str(path)


def run_cli(*args):
    """The CLI in this process (click's runner): .exit_code, .output, .stderr."""
    return CliRunner().invoke(cli_module.main, [str(a) for a in args])


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]
