"""The `musicviz-mlx` command: a thin dispatcher over the library, one module a command in `commands/`.

Every command turns a MusicvizError (or an unreadable file) into one line on stderr and exit 1.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import warnings

import click

from . import __version__
from .errors import MusicvizError
from .walkers import GRID_BEATS, NoiseWalkConfig


def _with_notes(error: BaseException, text: str | None = None) -> str:
    """The error's message (or `text`) and its notes (such as where a render's kept frames are), one line."""
    return "; ".join([text if text is not None else str(error), *getattr(error, "__notes__", [])])


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the signal lands so that it unwinds like Ctrl-C: a render keeps
    its finished segments and says where."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _stop_signals_interrupt():
    """SIGTERM and SIGHUP (a closed terminal, `kill`, a service manager) end the command as Ctrl-C does."""
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]  # Windows has no SIGHUP
    try:
        previous = {name: signal.signal(getattr(signal, name), _raise_terminated) for name in names}
    except ValueError:  # not the main thread (a command called from a test's thread): leave them be
        yield
        return
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A library warning on the command line: `warning: ...`, as the commands' own, not a source line."""
    click.echo(f"warning: {message}", err=True)


def friendly_errors(fn):
    """Run a command; turn expected failures into `error: ...` and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _stop_signals_interrupt(), warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except MusicvizError as e:
            click.echo(f"error: {_with_notes(e)}", err=True)
            sys.exit(1)
        except Terminated as e:
            click.echo(_with_notes(e, f"stopped by {signal.Signals(e.signum).name}"), err=True)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt as e:
            click.echo(_with_notes(e, "interrupted"), err=True)
            sys.exit(130)
        except MemoryError:
            options = [f"--{name.replace('_', '-')}" for name in ("batch_size", "size") if name in kwargs]
            click.echo("error: out of memory" + (f"; try a smaller {' or '.join(options)}" if options else ""),
                       err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="musicviz-mlx")
def main():
    """Music videos from a song and a prompt, with one-step diffusion (SDXS, SD-Turbo, SDXL-Turbo) in MLX.

    \b
    Examples:
      musicviz-mlx demo --model random:tiny --size 128 -o demo.mp4
      musicviz-mlx render song.mp3 -p "a coral reef, oil painting"
      musicviz-mlx live song.mp3 -p "a coral reef"
      musicviz-mlx analyze song.mp3 --out features.png
      musicviz-mlx convert IDKiro/sdxs-512-0.9 weights/sdxs-512-0.9
    """


def _options(fn, options):
    for option in reversed(options):
        fn = option(fn)
    return fn


def _walk_options(fn):
    """The walks' options, shared by render and analyze (whose chart draws the walks)."""
    return _options(fn, [
        click.option("--mode", type=click.Choice(["focus", "cumulative"]), default="focus", show_default=True,
                     help="Prompt walk: focus on one note, or blend the top notes."),
        click.option("--beat-grid", type=click.Choice(sorted(GRID_BEATS, key=GRID_BEATS.get)), default="quarter",
                     show_default=True, help="The noise moves on every beat, every 2nd or every 4th."),
        click.option("--motion", type=float, default=NoiseWalkConfig.distance, show_default=True,
                     help="How far the noise moves on a loud beat: the fraction of a full turn, 0 to 1."),
    ])


LORA_OPTION = click.option("--lora", "loras", multiple=True, metavar="PATH[:SCALE]",
                           help="A LoRA file (diffusers or kohya safetensors) fused into the model, SCALE times "
                                "(default 1); repeat for several.")
_SCHEDULER = click.option("--scheduler", default=None, metavar="NAME[:T]",
                          help="Take the one step as another scheduler does: lcm (LCM-LoRA), tcd:800 (Hyper-SD's "
                               "1-step LoRA), euler, euler_a, ddim or pndm, at timestep T if given (default: the model's).")
_STEPS = click.option("--steps", type=int, default=1, show_default=True,
                      help="Steps, 1 to 8, with LCM (--scheduler lcm) or Euler (euler: SD-Turbo's own; euler_a: "
                           "SDXL-Turbo's): each one more UNet call a frame.")


_DTYPE = click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
                      show_default=True, help="Compute dtype: auto is float16 on a GPU, float32 on the CPU.")


def SCHEDULER_OPTION(fn):  # noqa: N802 - used as a decorator, like the other options
    """--scheduler, --steps and --dtype: how the model samples."""
    return _SCHEDULER(_STEPS(_DTYPE(fn)))


def _image_options(fn):
    """What render and preview share: the model, the frames' size and noise seed, the batch, the VAE and
    the note prompts."""
    return _options(fn, [
        click.option("--model", default=None, show_default="IDKiro/sdxs-512-0.9",
                     help="Hub repo id, diffusers folder, converted folder, or random:NAME (tiny, tiny-sdxl, sdxs-512-0.9, sd-turbo, sdxl-turbo, ...)."),
        click.option("--size", default="512", show_default=True,
                     help="Frame size: 512 (square) or WIDTHxHEIGHT, e.g. 768x448; multiples of 64, at most 1024x1024 pixels."),
        LORA_OPTION,
        SCHEDULER_OPTION,
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--batch-size", type=int, default=2, show_default=True),
        click.option("--vae", type=click.Choice(["auto", "tiny", "large"]), default="auto", show_default=True,
                     help="The VAE that decodes: auto (the tiny one where the model has one, else its KL VAE), tiny or large (KL)."),
        click.option("--note-prompts", type=click.Path(), default=None,  # a folder: read_note_prompts says so
                     help="Text file of the 12 note prompts, C to B, one per line (template: `musicviz-mlx note-prompts`)."),
    ])


def _render_options(fn):
    fn = _walk_options(_image_options(fn))
    return _options(fn, [
        click.option("-o", "--output", type=click.Path(dir_okay=True), default=None,
                     help="Output .mp4, .m4v or .mov (default: <song name>.mp4)."),
        click.option("--fps", type=float, default=30, show_default=True, help="Frames per second, 1 to 240."),
        click.option("--start", type=float, default=None, help="Start of the song window (seconds)."),
        click.option("--duration", type=float, default=None, help="Length of the song window (seconds)."),
        click.option("--crf", type=int, default=18, show_default=True, help="H.264 quality, 0 (lossless) to 51; lower is better."),
        click.option("--restart", is_flag=True,
                     help="Start over, throwing away the frames an interrupted run of this render kept."),
        click.option("--cadence", type=int, default=1, show_default=True,
                     help="Run the UNet on every Nth frame only and blend the latents between: N times fewer UNet "
                          "calls (each frame still gets a VAE decode); smoother motion, softer beats."),
        click.option("--section-prompt", "section_prompts", multiple=True,
                     help="Base prompt for the song's sections in turn, repeated as needed (sections are found in "
                          "windows of 20 s and more; default: the prompt)."),
    ])


def _warn_random(model) -> None:
    """The random-weights warning, for commands with no result's warnings to print (a render has it
    in its result's warnings, printed once it is finished)."""
    from pathlib import Path

    from .checkpoint_format import read_record
    from .rendering import RANDOM_WEIGHTS_WARNING

    source = str(model)
    if not source.startswith("random:") and Path(source).is_dir():  # a checkpoint converted from random weights
        try:
            source = str((read_record(Path(source)) or {}).get("source", ""))
        except MusicvizError:
            return
    if source.startswith("random:"):
        click.echo(f"warning: {RANDOM_WEIGHTS_WARNING}", err=True)


from . import commands  # noqa: E402,F401  (registers the commands with `main`)

if __name__ == "__main__":  # python -m mlx_musicviz.cli: the group the commands registered with
    from mlx_musicviz.cli import main as registered

    registered()
