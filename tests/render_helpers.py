"""Helpers shared by the render tests: the bundled trumpet loop, the CLI in a subprocess, a video's
frames, and a pipeline that counts its UNet calls."""

import subprocess
import sys

import av
import numpy as np
from reference import DATA

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
