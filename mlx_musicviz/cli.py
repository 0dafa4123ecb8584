"""The `musicviz-mlx` command: a thin layer over the library.

Every command turns a MusicvizError (or an unreadable file) into one line on stderr and exit 1.
"""

from __future__ import annotations

import functools
import sys

import click

from . import __version__
from .errors import MusicvizError


def friendly_errors(fn):
    """Run a command; turn expected failures into `error: ...` and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MusicvizError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("error: out of memory; try a smaller --batch-size or --size", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="musicviz-mlx")
def main():
    """Music videos from a song and a prompt, with SDXS one-step diffusion in MLX.

    \b
    Examples:
      musicviz-mlx convert IDKiro/sdxs-512-0.9 weights/sdxs-512-0.9
      musicviz-mlx convert path/to/diffusers-folder weights/my-model --dtype float16
    """


@main.command()
@click.argument("src")
@click.argument("dst", required=False)
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="Storage dtype of the converted weights (auto keeps the source's).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) when SRC is a repo id.")
@friendly_errors
def convert(src, dst, dtype, revision):
    """Convert SRC (a diffusers folder, a hub repo id, or an MLX checkpoint) into an MLX checkpoint DST.

    DST defaults to weights/<name of SRC>.

    \b
    Examples:
      musicviz-mlx convert IDKiro/sdxs-512-0.9
      musicviz-mlx convert ./sdxs-512-dreamshaper weights/dreamshaper --dtype float16
    """
    from pathlib import Path

    from .convert import convert_checkpoint

    if dst is None:
        dst = Path("weights") / Path(src.rstrip("/")).name
    out = convert_checkpoint(src, dst, dtype=dtype, revision=revision)
    click.echo(f"converted {src} -> {out}")


def _render_options(fn):
    options = [
        click.option("-o", "--output", type=click.Path(dir_okay=True), default=None,
                     help="Output .mp4 (default: <song name>.mp4)."),
        click.option("--model", default=None, show_default="IDKiro/sdxs-512-0.9",
                     help="Hub repo id, diffusers folder, converted folder, or random:NAME (tiny, sdxs-512-0.9, ...)."),
        click.option("--fps", type=float, default=30, show_default=True),
        click.option("--size", type=int, default=512, show_default=True, help="Frame width and height (multiple of 64)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--start", type=float, default=None, help="Start of the song window (seconds)."),
        click.option("--duration", type=float, default=None, help="Length of the song window (seconds)."),
        click.option("--mode", type=click.Choice(["focus", "cumulative"]), default="focus", show_default=True,
                     help="Prompt walk: focus on one note, or blend the top notes."),
        click.option("--batch-size", type=int, default=2, show_default=True),
        click.option("--crf", type=int, default=18, show_default=True, help="H.264 quality (lower is better)."),
        click.option("--vae", type=click.Choice(["tiny", "large"]), default="tiny", show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_render(song, prompt, output, model, **kw):
    from .pipeline import DEFAULT_MODEL
    from .rendering import render

    model = model or DEFAULT_MODEL
    if str(model).startswith("random:"):
        click.echo("warning: random weights: the images mean nothing (for trying the pipeline only)", err=True)
    bar = {"t0": None}

    def progress(done, total):
        import time

        if bar["t0"] is None:
            bar["t0"] = time.perf_counter()
        elapsed = max(time.perf_counter() - bar["t0"], 1e-9)
        fps = done / elapsed
        rtf = fps / kw["fps"]
        eta = (total - done) / max(fps, 1e-9)
        click.echo(f"\r  {done}/{total} frames  {fps:5.2f} fps  {rtf:5.3f}x real time  ETA {eta:6.0f} s", nl=False,
                   err=True)

    result = render(song, prompt, output=output, model=model, progress=progress, **kw)
    click.echo("", err=True)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    t = result.times
    click.echo(f"wrote {result.output}: {result.frames} frames at {result.fps:g} fps ({result.duration:.1f} s); "
               f"analysis {t['analysis']:.1f} s, model {t['model']:.1f} s, encode {t['encode']:.1f} s, "
               f"total {t['total']:.1f} s; peak mlx memory {result.peak_memory / 2**20:.0f} MiB")


@main.command(name="render")
@click.argument("song", type=click.Path())
@click.option("-p", "--prompt", required=True, help="What the video shows; 12 note prompts are derived from it.")
@_render_options
@friendly_errors
def render_command(song, prompt, output, model, **kw):
    """Render a music video of SONG driven by PROMPT.

    \b
    Examples:
      musicviz-mlx render song.mp3 -p "a coral reef, oil painting"
      musicviz-mlx render song.ogg -p "neon city" --start 30 --duration 20 -o clip.mp4
      musicviz-mlx render song.wav -p "test" --model random:tiny --size 256
    """
    _run_render(song, prompt, output, model, **kw)


@main.command()
@click.option("-p", "--prompt", default="a jazz trumpet player in a smoky neon club, oil painting", show_default=True)
@_render_options
@friendly_errors
def demo(prompt, output, model, **kw):
    """Render the bundled 5-second trumpet loop (Mihai Sorohan, CC BY 3.0).

    \b
    Examples:
      musicviz-mlx demo                        # the default model (downloads once)
      musicviz-mlx demo --model random:tiny    # no download; random weights
    """
    from .rendering import DEMO_AUDIO

    _run_render(str(DEMO_AUDIO), prompt, output or "demo.mp4", model, **kw)


@main.command()
@click.argument("song", type=click.Path())
@click.option("--fps", type=float, default=30, show_default=True)
@click.option("--start", type=float, default=None)
@click.option("--duration", type=float, default=None)
@friendly_errors
def analyze(song, fps, start, duration):
    """Print what the video will follow: tempo, beats, onsets, sections.

    \b
    Example:
      musicviz-mlx analyze song.mp3 --fps 30
    """
    from .audio import analyze as run

    f = run(song, fps=fps, start=start, duration=duration)
    click.echo(f"{song}: {f.duration:.2f} s, {f.n_frames} frames at {fps:g} fps, tempo {f.tempo:.1f} BPM, "
               f"{len(f.beat_times)} beats, {len(f.onset_times)} onsets, sections at "
               + ", ".join(f"{s:.1f}" for s in f.section_times) + " s")


if __name__ == "__main__":
    main()
