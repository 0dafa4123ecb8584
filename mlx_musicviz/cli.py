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


if __name__ == "__main__":
    main()
