"""`musicviz-mlx render`, `demo`, `preview` and `note-prompts`."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.core import ParameterSource

from ..cli import _image_options, _render_options, _warn_random, friendly_errors, main
from ..note_writer import DEFAULT_NOTE_WRITER
from ..walkers import NoiseWalkConfig


def _run_render(song, prompt, output, model, note_prompts, section_prompts, beat_grid, motion, restart, **kw):
    from ..audio import counted
    from ..note_prompts import read_note_prompts
    from ..pipeline import DEFAULT_MODEL
    from ..rendering import default_output, render, same_file
    from ..sharing import is_helper

    model = model or DEFAULT_MODEL
    if note_prompts is not None:
        note_prompts = read_note_prompts(note_prompts)
    target = Path(output or default_output(song)).expanduser()
    if target.is_file() and not same_file(target, song) and not is_helper():
        click.echo(f"warning: {target} exists; the new video replaces it when the render finishes", err=True)
    from ..checks import check_dtype, dtype_name

    bar, dtype = {}, dtype_name(check_dtype(kw.get("dtype")))

    def progress(done, total):
        import time

        # Rates count from the first finished batch on: the first one also paid for warm-up.
        now = time.perf_counter()
        if not bar:
            bar.update(t0=now, done0=done)
            click.echo(f"\r  {done}/{total} frames ({dtype})", nl=False, err=True)
            return
        fps = (done - bar["done0"]) / max(now - bar["t0"], 1e-9)
        rtf = fps / kw["fps"]
        eta = (total - done) / max(fps, 1e-9)
        click.echo(f"\r  {done}/{total} frames ({dtype})  {fps:5.2f} fps  {rtf:5.3f}x real time  ETA {eta:6.0f} s",
                   nl=False, err=True)

    try:
        result = render(song, prompt, output=output, model=model, note_prompts=note_prompts,
                        section_prompts=list(section_prompts) or None,
                        noise=NoiseWalkConfig(grid=beat_grid, distance=motion), resume=not restart, progress=progress,
                        **kw)
    finally:
        if bar:  # end the progress line, also before an error or "interrupted"
            click.echo("", err=True)
    if is_helper():  # rank 0 of an mlx.launch group speaks for all
        return
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    t = result.times
    keyframes = f", {result.keyframes} of them generated" if result.keyframes < result.frames else ""
    keyframes += f", continued after {result.resumed} kept frames" if result.resumed else ""
    click.echo(f"wrote {result.output}: {counted(result.frames, 'frame')} at {result.fps:g} fps ({result.duration:.1f} s{keyframes}); "
               f"analysis {t['analysis']:.1f} s, model {t['model']:.1f} s, encode {t['encode']:.1f} s, "
               f"total {t['total']:.1f} s; peak mlx memory {result.peak_memory / 2**20:.0f} MiB")
    if "transfer" in t:  # shared by mlx.launch's processes
        click.echo(f"shared: {counted(t['units'], 'unit')} made here; {t['waiting']:.2f} s waiting for the others, "
                   f"{t['transfer']:.3f} s moving {t['moved'] / 2**20:.1f} MiB of segments")


@main.command(name="render")
@click.argument("songs", nargs=-1, required=True, type=click.Path())
@click.option("-p", "--prompt", required=True, help="What the video shows; 12 note prompts are derived from it.")
@_render_options
@friendly_errors
def render_command(songs, prompt, output, model, **kw):
    """Render a music video of SONG driven by PROMPT; of several songs (or a folder of them) into the
    folder -o names, one video each. Under `mlx.launch` the processes share the work.

    \b
    Examples:
      musicviz-mlx render song.mp3 -p "a coral reef, oil painting"
      musicviz-mlx render song.ogg -p "neon city" --start 30 --duration 20 -o clip.mp4
      musicviz-mlx render song.wav -p "test" --model random:tiny --size 256
      musicviz-mlx render song.mp3 -p "neon city" --cadence 3     # UNet on every 3rd frame
      musicviz-mlx note-prompts -p "neon city" > notes.txt   # edit, then:
      musicviz-mlx render song.mp3 -p "neon city" --note-prompts notes.txt --beat-grid half
      musicviz-mlx render album/ -p "neon city" -o videos/    # every song; those done are skipped
      mlx.launch --hostfile macs.json -- -m mlx_musicviz.cli render song.mp3 -p "neon city"
    """
    from pathlib import Path

    if len(songs) > 1 or Path(songs[0]).is_dir() or (output and output.endswith(("/", os.sep))):
        _render_many(songs, prompt, output, model, **kw)
    else:
        _run_render(songs[0], prompt, output, model, **kw)


def _render_many(songs, prompt, output, model, restart, **kw):
    """Each song (or each audio file under a folder) into FOLDER/NAME.mp4, skipping those that exist
    (unless --restart) and going on past failures, which are listed at the end (exit 1)."""
    from ..audio import find_audio, output_stem
    from ..errors import MusicvizError
    from ..sharing import is_helper, launched_group, rank0_says
    from ..video import CONTAINERS

    folder = Path(output or ".").expanduser()
    if folder.suffix.lower() in CONTAINERS and not folder.is_dir():
        raise MusicvizError(f"several songs make several videos: -o names a folder for them (e.g. videos/), "
                            f"not {output}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MusicvizError(f"cannot create the folder {folder}: {e.strerror or e}") from None
    files, failures = [], []
    for song in songs:
        try:
            files += find_audio(Path(song))
        except MusicvizError as e:
            failures.append((song, str(e)))
    unique = {}
    for song in files:  # a song named twice is made once
        unique.setdefault(Path(song).resolve(), Path(song))
    files = list(unique.values())
    targets = {song: folder / f"{output_stem(song)}.mp4" for song in files}
    clash = _first_clash(targets)
    if clash:
        raise MusicvizError(f"{clash[0]} and {clash[1]} would both make {targets[clash[0]]}: render them apart")
    group, made, skipped = launched_group(), 0, 0
    for song in files:
        target = targets[song]
        if rank0_says(group, target.exists() and not restart):
            if not is_helper():
                click.echo(f"{song}: {target} is there already, skipped (--restart renders it again)")
            skipped += 1
            continue
        if not is_helper():
            click.echo(f"{song} -> {target}")
        try:
            _run_render(str(song), prompt, str(target), model, restart=restart, **kw)
            made += 1
        except MusicvizError as e:
            failures.append((song, str(e)))
            if not is_helper():
                click.echo(f"error: {song}: {e}", err=True)
    if is_helper():  # rank 0 reports (a helper that exits first with 1 would make mlx.launch stop it)
        return
    click.echo(f"{made} rendered, {skipped} skipped, {len(failures)} failed")
    for song, why in failures:
        click.echo(f"failed: {song}: {why}", err=True)
    if failures:
        raise MusicvizError(f"{len(failures)} of {made + skipped + len(failures)} songs failed")


def _first_clash(targets: dict) -> tuple | None:
    """Two songs of `targets` ({song: video}) with the same video, or None."""
    seen = {}
    for song, target in targets.items():
        if target in seen:
            return seen[target], song
        seen[target] = song
    return None


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
    from ..rendering import DEMO_AUDIO

    _run_render(str(DEMO_AUDIO), prompt, output or "demo.mp4", model, **kw)


@main.command()
@click.option("-p", "--prompt", required=True, help="What the video shows.")
@click.option("-o", "--output", type=click.Path(dir_okay=True), default="preview.png", show_default=True,
              help="Output image (.png, .jpg, ...).")
@click.option("--notes", is_flag=True, help="A sheet of the prompt and its 12 note prompts (13 images; so does --note-prompts).")
@_image_options
@friendly_errors
def preview(prompt, output, notes, note_prompts, model, **kw):
    """Stills of PROMPT before a long render, from the noise where the video's walk starts (same seed
    and size); with --notes a captioned sheet of the prompt and the 12 note prompts the video walks to.

    \b
    Examples:
      musicviz-mlx preview -p "a coral reef, oil painting"
      musicviz-mlx preview -p "neon city" --notes -o sheet.jpg --size 256
      musicviz-mlx preview -p "neon city" --note-prompts notes.txt -o sheet.png
    """
    import time

    from ..note_prompts import read_note_prompts
    from ..pipeline import DEFAULT_MODEL
    from ..stills import preview as run

    model = model or DEFAULT_MODEL
    if note_prompts is not None:
        note_prompts = read_note_prompts(note_prompts)
    t = time.perf_counter()
    path = run(prompt, output, notes=notes, note_prompts=note_prompts, model=model, **kw)
    _warn_random(model)
    count = 13 if notes or note_prompts is not None else 1
    click.echo(f"wrote {path}: {count} image{'s' if count > 1 else ''} in {time.perf_counter() - t:.1f} s")


@main.command(name="note-prompts")
@click.option("-p", "--prompt", required=True, help="The prompt the 12 note prompts are derived from.")
@click.option("--lm", "lm_model", is_flag=False, flag_value=DEFAULT_NOTE_WRITER, default=None, metavar="[MODEL]",
              help=f"Have a language model write them (mlx-lm; an mlx-lm folder or hub id, "
                   f"default {DEFAULT_NOTE_WRITER}).")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="With --lm: 0 writes the same prompts every time; above 0 samples, by --seed.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --lm: the sampling seed.")
@friendly_errors
def note_prompts_command(prompt, lm_model, temperature, seed):
    """Print the 12 note prompts `render -p PROMPT` uses, as a file for `render --note-prompts`.

    Without --lm they are the prompt in Scriabin's colour for each note; with --lm a small language
    model writes them (pip install "mlx-musicviz[lm]"; downloaded once).

    \b
    Examples:
      musicviz-mlx note-prompts -p "a coral reef, oil painting" > notes.txt
      musicviz-mlx note-prompts -p "a coral reef, oil painting" --lm > notes.txt
      musicviz-mlx render song.mp3 -p "a coral reef, oil painting" --note-prompts notes.txt
    """
    from ..checks import check_prompt
    from ..note_prompts import default_note_prompts, note_prompts_text

    check_prompt(prompt)
    if lm_model is None:
        given = [f"--{name}" for name in ("temperature", "seed")
                 if click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{' and '.join(given)} go{'es' if len(given) == 1 else ''} with --lm")
        prompts = default_note_prompts(prompt)
    else:
        from ..note_writer import write_note_prompts

        click.echo(f"writing the note prompts with {lm_model} ...", err=True)
        prompts = write_note_prompts(prompt, lm_model, temperature=temperature, seed=seed)
    click.echo(note_prompts_text(prompts), nl=False)
