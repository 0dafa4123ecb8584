"""`musicviz-mlx live`: the live page for a song or an audio input."""

from __future__ import annotations

import click

from ..cli import LORA_OPTION, SCHEDULER_OPTION, _walk_options, _warn_random, friendly_errors, main
from ..errors import MusicvizError


@main.command(name="live")
@click.argument("song", type=click.Path(), required=False)
@click.option("-p", "--prompt", default=None, help="What the video shows; 12 note prompts are derived from it.")
@click.option("--input", "input_device", default=None, metavar="DEVICE",
              help="Follow a live audio input instead of a song: a device's index or name (`--input list` lists them).")
@click.option("--model", default=None, show_default="IDKiro/sdxs-512-0.9",
              help="Hub repo id, diffusers folder, converted folder, or random:NAME.")
@click.option("--size", default="256", show_default=True, help="Frame size: 256, 512 or WIDTHxHEIGHT (multiples of 64).")
@click.option("--fps", type=float, default=24, show_default=True, help="Frames per second of the song's timeline, 1 to 60.")
@click.option("--seed", type=int, default=0, show_default=True)
@LORA_OPTION
@SCHEDULER_OPTION
@_walk_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; any other than loopback needs the token printed with the URL.")
@click.option("--port", type=int, default=8765, show_default=True, help="HTTP port (0: any free one).")
@click.option("--osc", "osc_port", type=int, default=None, help="Also take /prompt, /motion, /seed, /mode over OSC on this UDP port.")
@click.option("--no-open", is_flag=True, help="Do not open the page in the browser.")
@friendly_errors
def live_command(song, prompt, input_device, model, size, fps, seed, loras, scheduler, steps, dtype, mode, beat_grid, motion, host, port,
                 osc_port, no_open):
    """Show the video of SONG in a browser page as it plays (frames made ahead of the music), or of a
    live audio input (--input: a microphone, line-in or a sound server's monitor) as it arrives.

    \b
    Examples:
      musicviz-mlx live song.mp3 -p "a coral reef, oil painting"
      musicviz-mlx live song.mp3 -p "neon city" --size 512 --osc 9000
      musicviz-mlx live song.mp3 -p "test" --model random:tiny --size 128 --no-open
      musicviz-mlx live song.mp3 -p "neon city" --host 0.0.0.0    # another screen: the URL carries a token
      musicviz-mlx live --input list                               # the audio inputs
      musicviz-mlx live --input "MacBook Pro Microphone" -p "neon city"
    OBS, VLC or a VJ program can take the video from http://127.0.0.1:8765/stream.mjpg.
    Frames decode with the fastest VAE the model has (the tiny one where it has one: render's --vae auto).
    """
    from ..pipeline import DEFAULT_MODEL
    from ..realtime import live

    if input_device == "list":
        from ..realtime.audio_input import list_devices

        inputs = list_devices()
        if not inputs:
            raise MusicvizError("no audio input device found (is a microphone, line input or sound server there?)")
        for index, name, channels in inputs:
            click.echo(f"{index}: {name} ({channels} channel{'s' if channels > 1 else ''})")
        return
    if prompt is None:
        raise click.UsageError("Missing option '-p' / '--prompt'.")
    model = model or DEFAULT_MODEL

    def ready(url):  # said once the server is up, not before an input error
        _warn_random(model)
        click.echo(f"live: {url}  (Ctrl-C stops)")

    try:
        live(song, prompt, input=input_device, model=model, on_ready=ready, size=size, fps=fps, seed=seed, motion=motion, mode=mode, grid=beat_grid,
             host=host, port=port, open_browser=not no_open, osc_port=osc_port, loras=loras,
             scheduler=scheduler, steps=steps, dtype=dtype)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a live session ends
        click.echo("live: stopped", err=True)
