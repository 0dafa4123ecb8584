"""`musicviz-mlx mels` and `spec2audio`: audio to mel-spectrogram tiles and back."""

from __future__ import annotations

import click

from ..cli import friendly_errors, main
from ..errors import MusicvizError


def _mel_overrides(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


@main.command()
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--preset", type=click.Choice(["default", "riffusion"]), default="default", show_default=True)
@click.option("--tile-width", type=int, default=None, help="Columns per image (default 512).")
@click.option("--n-mels", type=int, default=None, help="Mel bands = image height (default 512).")
@click.option("--hop", "hop_length", type=int, default=None, help="Samples per column.")
@click.option("--stereo", is_flag=True, default=None, help="Left channel in red, right in green.")
@friendly_errors
def mels(src, out, preset, tile_width, n_mels, hop_length, stereo):
    """Turn every audio file under SRC into mel-spectrogram PNG tiles in OUT.

    Unreadable files are reported and skipped. Each PNG carries the parameters that invert it.

    \b
    Examples:
      musicviz-mlx mels music/ spectrograms/
      musicviz-mlx mels song.ogg tiles/ --preset riffusion
    """
    from dataclasses import replace

    from ..spectrogram import PRESETS, folder_to_images

    params = replace(PRESETS[preset], **_mel_overrides(tile_width=tile_width, n_mels=n_mels, hop_length=hop_length,
                                                        stereo=stereo))

    def progress(done, total, path):
        click.echo(f"\r  {done}/{total} files  {path.name[:50]:<50}", nl=False, err=True)

    written, skipped = folder_to_images(src, out, params, progress)
    click.echo("", err=True)
    for path, why in skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    from ..audio import counted

    click.echo(f"{counted(len(written), 'image')} in {out}" + (f"; {counted(len(skipped), 'file')} skipped" if skipped else ""))
    if not written:
        raise MusicvizError(f"no file under {src} could be read")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .wav or .flac.")
@click.option("--iterations", type=int, default=64, show_default=True, help="Griffin-Lim rounds (more: better phase).")
@click.option("--preset", type=click.Choice(["default", "riffusion"]), default=None,
              help="Parameters for images without metadata (overrides the metadata).")
@click.option("--sample-rate", type=int, default=None)
@click.option("--n-fft", type=int, default=None)
@click.option("--hop", "hop_length", type=int, default=None)
@click.option("--win-length", type=int, default=None)
@click.option("--f-max", type=float, default=None)
@click.option("--normalize", is_flag=True, help="Peak at -1 dBFS instead of the level the tiles record.")
@friendly_errors
def spec2audio(images, output, iterations, preset, sample_rate, n_fft, hop_length, win_length, f_max, normalize):
    """Turn spectrogram IMAGES (consecutive tiles, in order) back into one audio file, at the level
    the tiles record (--normalize: peak at -1 dBFS).

    \b
    Examples:
      musicviz-mlx spec2audio tiles/song_0000.png tiles/song_0001.png -o song.wav
      musicviz-mlx spec2audio riffusion.png --preset riffusion -o clip.flac
    """
    import warnings
    from pathlib import Path

    import numpy as np

    from ..spectrogram import check_audio_output, images_to_audio, write_audio

    if iterations < 1:
        raise MusicvizError("iterations must be at least 1")
    overrides = _mel_overrides(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                               f_max=f_max)
    check_audio_output(output)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        samples, rate = images_to_audio([Path(i) for i in images], iterations, overrides, preset, normalize)
    for warning in said:
        click.echo(f"warning: {warning.message}", err=True)
    write_audio(Path(output), samples, rate)
    peak = float(np.abs(samples).max())
    level = f"peak {20 * np.log10(peak):.1f} dBFS" if peak > 0 else "silence"
    click.echo(f"{output}: {samples.shape[-1] / rate:.2f} s at {rate} Hz, {level}")
