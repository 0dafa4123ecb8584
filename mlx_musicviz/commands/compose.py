"""`musicviz-mlx compose`: audio from a prompt, through generated mel-spectrogram tiles."""

from __future__ import annotations

import click

from ..cli import LORA_OPTION, SCHEDULER_OPTION, friendly_errors, main


@main.command()
@click.option("-p", "--prompt", required=True, help="What to hear, as the tiles' LoRA was captioned.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .wav or .flac.")
@click.option("--model", default="IDKiro/sdxs-512-0.9", show_default=True,
              help="Hub repo id, diffusers folder, converted folder, or random:NAME.")
@LORA_OPTION
@SCHEDULER_OPTION
@click.option("--seconds", type=float, default=30.0, show_default=True, help="Length of the audio.")
@click.option("--preset", type=click.Choice(["default", "riffusion"]), default="default", show_default=True,
              help="The tiles' mel parameters: those the LoRA's tiles were made with.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overlap", type=int, default=64, show_default=True,
              help="Pixel columns each tile shares with the one before (a multiple of 8; 0: tiles side by side).")
@click.option("--iterations", type=int, default=64, show_default=True, help="Griffin-Lim rounds (more: better phase).")
@friendly_errors
def compose(prompt, output, model, loras, scheduler, steps, dtype, seconds, preset, seed, overlap, iterations):
    """Compose audio from a prompt: consecutive mel-spectrogram tiles, each continuing the one before,
    turned into sound as `spec2audio` does (peak at -1 dBFS).

    \b
    Examples:
      musicviz-mlx compose -p "a mel spectrogram of piano" --lora piano.safetensors --seconds 30 -o piano.wav
      musicviz-mlx compose -p "riffusion jazz" --preset riffusion --model my-riffusion/ -o jazz.flac
    """
    from ..cli import _warn_random
    from ..composing import compose as make

    _warn_random(model)

    def progress(done, total):
        click.echo(f"\r  tile {done}/{total}", nl=False, err=True)

    result = make(prompt, output, model, seconds=seconds, preset=preset, seed=seed, overlap=overlap,
                  iterations=iterations, loras=loras, scheduler=scheduler, steps=steps, dtype=dtype, progress=progress)
    click.echo("", err=True)
    click.echo(f"{result.output}: {result.seconds:.2f} s from {result.tiles} tile{'s' if result.tiles != 1 else ''}")
