"""The `musicviz-mlx` command: a thin layer over the library.

Every command turns a MusicvizError (or an unreadable file) into one line on stderr and exit 1.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from . import __version__
from .errors import MusicvizError
from .note_writer import DEFAULT_NOTE_WRITER
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


def friendly_errors(fn):
    """Run a command; turn expected failures into `error: ...` and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _stop_signals_interrupt():
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
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="Quantize to 4 or 8 bits.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Weights sharing one scale and bias.")
@click.option("--quantize", "quantize_components", default="text_encoder,unet,vae_large", show_default=True,
              help="Comma-separated components to quantize (add vae for the tiny VAE).")
@click.option("--mixed", is_flag=True, help="Keep conv_in, conv_out and the time embedding at 8 bits.")
@friendly_errors
def convert(src, dst, dtype, revision, bits, group_size, quantize_components, mixed):
    """Convert SRC (a diffusers folder, a hub repo id, or an MLX checkpoint) into an MLX checkpoint DST.

    DST defaults to weights/<name of SRC>.

    \b
    Examples:
      musicviz-mlx convert IDKiro/sdxs-512-0.9
      musicviz-mlx convert ./sdxs-512-dreamshaper weights/dreamshaper --dtype float16
      musicviz-mlx convert weights/sdxs-512-0.9 weights/sdxs-512-0.9-q4 --bits 4 --mixed
    """
    from pathlib import Path

    from .convert import convert_checkpoint

    if dst is None:
        dst = Path("weights") / Path(src.rstrip("/")).name.replace(":", "-")  # random:tiny -> random-tiny
    quantize = tuple(c.strip() for c in quantize_components.split(",") if c.strip())
    out = convert_checkpoint(src, dst, dtype=dtype, revision=revision, bits=int(bits) if bits else None,
                             group_size=int(group_size), quantize=quantize, mixed=mixed)
    click.echo(f"converted {src} -> {out}" + (f" ({bits}-bit, group size {group_size})" if bits else ""))


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


def _image_options(fn):
    """What render and preview share: the model, the frames' size and noise seed, the batch, the VAE and
    the note prompts."""
    return _options(fn, [
        click.option("--model", default=None, show_default="IDKiro/sdxs-512-0.9",
                     help="Hub repo id, diffusers folder, converted folder, or random:NAME (tiny, sdxs-512-0.9, ...)."),
        click.option("--size", default="512", show_default=True,
                     help="Frame size: 512 (square) or WIDTHxHEIGHT, e.g. 768x448; multiples of 64, at most 1024x1024 pixels."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--batch-size", type=int, default=2, show_default=True),
        click.option("--vae", type=click.Choice(["tiny", "large"]), default="tiny", show_default=True),
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
    from .rendering import RANDOM_WEIGHTS_WARNING

    if str(model).startswith("random:"):
        click.echo(f"warning: {RANDOM_WEIGHTS_WARNING}", err=True)


def _run_render(song, prompt, output, model, note_prompts, section_prompts, beat_grid, motion, restart, **kw):
    from .pipeline import DEFAULT_MODEL
    from .note_prompts import read_note_prompts
    from .rendering import default_output, render

    model = model or DEFAULT_MODEL
    if note_prompts is not None:
        note_prompts = read_note_prompts(note_prompts)
    target = Path(output or default_output(song)).expanduser()
    if target.is_file() and target.resolve() != Path(song).expanduser().resolve():
        click.echo(f"warning: {target} exists; the new video replaces it when the render finishes", err=True)
    bar = {}

    def progress(done, total):
        import time

        # Rates count from the first finished batch on: the first one also paid for warm-up.
        now = time.perf_counter()
        if not bar:
            bar.update(t0=now, done0=done)
            click.echo(f"\r  {done}/{total} frames", nl=False, err=True)
            return
        fps = (done - bar["done0"]) / max(now - bar["t0"], 1e-9)
        rtf = fps / kw["fps"]
        eta = (total - done) / max(fps, 1e-9)
        click.echo(f"\r  {done}/{total} frames  {fps:5.2f} fps  {rtf:5.3f}x real time  ETA {eta:6.0f} s", nl=False,
                   err=True)

    try:
        result = render(song, prompt, output=output, model=model, note_prompts=note_prompts,
                        section_prompts=list(section_prompts) or None,
                        noise=NoiseWalkConfig(grid=beat_grid, distance=motion), resume=not restart, progress=progress,
                        **kw)
    finally:
        if bar:  # end the progress line, also before an error or "interrupted"
            click.echo("", err=True)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    t = result.times
    keyframes = f", {result.keyframes} of them generated" if result.keyframes < result.frames else ""
    keyframes += f", continued after {result.resumed} kept frames" if result.resumed else ""
    click.echo(f"wrote {result.output}: {result.frames} frames at {result.fps:g} fps ({result.duration:.1f} s{keyframes}); "
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
      musicviz-mlx render song.mp3 -p "neon city" --cadence 3     # UNet on every 3rd frame
      musicviz-mlx note-prompts -p "neon city" > notes.txt   # edit, then:
      musicviz-mlx render song.mp3 -p "neon city" --note-prompts notes.txt --beat-grid half
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

    from .pipeline import DEFAULT_MODEL
    from .stills import preview as run
    from .note_prompts import read_note_prompts

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
    from .checks import check_prompt
    from .note_prompts import default_note_prompts, note_prompts_text

    check_prompt(prompt)
    if lm_model is None:
        given = [f"--{name}" for name in ("temperature", "seed")
                 if click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{' and '.join(given)} go{'es' if len(given) == 1 else ''} with --lm")
        prompts = default_note_prompts(prompt)
    else:
        from .note_writer import write_note_prompts

        click.echo(f"writing the note prompts with {lm_model} ...", err=True)
        prompts = write_note_prompts(prompt, lm_model, temperature=temperature, seed=seed)
    click.echo(note_prompts_text(prompts), nl=False)


@main.command()
@click.argument("song", type=click.Path())
@click.option("--fps", type=float, default=30, show_default=True, help="Frames per second, 1 to 240.")
@click.option("--start", type=float, default=None)
@click.option("--duration", type=float, default=None)
@click.option("--out", "chart", type=click.Path(), default=None,
              help="Also draw the features and both walks into this PNG.")
@click.option("--live", is_flag=True, help="Run live mode's causal analyzer instead (no look-ahead, in blocks).")
@click.option("--json", "json_out", type=click.Path(), default=None,
              help="With --live: write its beats, tempo over time and onsets to this JSON file.")
@_walk_options
@friendly_errors
def analyze(song, fps, start, duration, chart, live, json_out, mode, beat_grid, motion):
    """Print what the video will follow: tempo and beats (or "no steady beat"), onsets, sections (and
    chart it with --out).

    \b
    Examples:
      musicviz-mlx analyze song.mp3 --fps 30
      musicviz-mlx analyze song.mp3 --out features.png
      musicviz-mlx analyze song.mp3 --out features.png --beat-grid half --motion 0.1
      musicviz-mlx analyze song.mp3 --live --json live.json   # what live mode would see, as it plays
    """
    if live or json_out:
        if start is not None or duration is not None:
            raise click.UsageError("--live follows the whole song as it plays: drop --start and --duration")
        return _analyze_live(song, live, json_out, chart)
    from .audio import analyze as run
    from .audio import beat_summary, counted, short_window
    from .checks import check_start
    from .walkers import PromptWalkConfig

    noise = NoiseWalkConfig(grid=beat_grid, distance=motion)
    if chart:  # before the analysis, which takes seconds to minutes
        from .charts import check_chart_path

        check_chart_path(chart)
    try:
        f = run(song, fps=fps, start=start, duration=duration)
    except MusicvizError:
        check_start(song, start)  # an empty window: say that the start is past the song's end
        raise
    click.echo(f"{song}: {f.duration:.2f} s, {f.n_frames} frames at {fps:g} fps, {beat_summary(f)}, "
               f"{counted(len(f.onset_times), 'onset')}, sections at " + ", ".join(f"{s:.1f}" for s in f.section_times) + " s")
    if short_window(f, duration):
        click.echo(f"warning: {short_window(f, duration)}", err=True)
    if chart:
        from .charts import features_chart

        click.echo(f"chart: {features_chart(f, chart, noise=noise, prompt=PromptWalkConfig(mode=mode))}")


def _analyze_live(song, live, json_out, chart) -> None:
    """`analyze --live [--json OUT]`: the causal analyzer over SONG in live mode's blocks."""
    import json
    from pathlib import Path

    from .files import atomic_output, check_output_path
    from .realtime.analyzer import analyze_live

    if not live:
        raise click.UsageError("--json goes with --live")
    if chart:
        raise click.UsageError("--out charts the offline analysis: drop --live or --out")
    if json_out:
        check_output_path(json_out)
    found = analyze_live(song)
    tempo = [b for b in found["tempo_bpm"] if b > 0]
    click.echo(f"{song}: {found['duration']:.2f} s in blocks of {found['block']} samples (look-ahead "
               f"{found['lookahead_s'] * 1000:.1f} ms): {len(found['beat_times'])} beats, tempo "
               + (f"{min(tempo):.1f}-{max(tempo):.1f} BPM" if tempo else "not found")
               + f", {len(found['onset_times'])} onsets")
    if json_out:
        with atomic_output(json_out) as tmp:
            Path(tmp).write_text(json.dumps(found, indent=1))
        click.echo(f"json: {json_out}")


def _torch_reference(config):
    """The PyTorch reference from benchmarks/ in this checkout, when torch and diffusers are installed.
    It builds and saves the model in a child process now; the child times it when the benchmark asks."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        return None
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py"
    if not path.exists():  # an installed package, not a checkout
        return None
    spec = importlib.util.spec_from_file_location("musicviz_torch_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    from .benchmark import reference_device, tf32_enabled

    return module.TorchReference(config.model, config.size, vae=config.vae, device=reference_device(),
                                 tf32=tf32_enabled())


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

    from .spectrogram import PRESETS, folder_to_images

    params = replace(PRESETS[preset], **_mel_overrides(tile_width=tile_width, n_mels=n_mels, hop_length=hop_length,
                                                        stereo=stereo))

    def progress(done, total, path):
        click.echo(f"\r  {done}/{total} files  {path.name[:50]:<50}", nl=False, err=True)

    written, skipped = folder_to_images(src, out, params, progress)
    click.echo("", err=True)
    for path, why in skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"{len(written)} images in {out}" + (f"; {len(skipped)} files skipped" if skipped else ""))
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
@friendly_errors
def spec2audio(images, output, iterations, preset, sample_rate, n_fft, hop_length, win_length, f_max):
    """Turn spectrogram IMAGES (consecutive tiles, in order) back into one audio file.

    \b
    Examples:
      musicviz-mlx spec2audio tiles/song_0000.png tiles/song_0001.png -o song.wav
      musicviz-mlx spec2audio riffusion.png --preset riffusion -o clip.flac
    """
    from pathlib import Path

    from .spectrogram import check_audio_output, images_to_audio, write_audio

    if iterations < 1:
        raise MusicvizError("iterations must be at least 1")
    overrides = _mel_overrides(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                               f_max=f_max)
    check_audio_output(output)
    samples, rate = images_to_audio([Path(i) for i in images], iterations, overrides, preset)
    write_audio(Path(output), samples, rate)
    click.echo(f"{output}: {samples.shape[-1] / rate:.2f} s at {rate} Hz")


# The options `bench --quick` replaces with its own values (naming one of them with --quick is an error).
_QUICK_SETS = ("model", "size", "levels", "batches", "runs", "render_seconds", "live_seconds", "live_fps")


@main.command()
@click.option("--model", default="random:sdxs-512-0.9", show_default=True, help="Model to time (random:NAME needs no download).")
@click.option("--size", type=int, default=512, show_default=True)
@click.option("--levels", default="float32,8bit,4bit", show_default=True,
              help="Comma-separated: float32, float16, bfloat16, 8bit, 4bit.")
@click.option("--batches", default="1,4", show_default=True, help="Comma-separated batch sizes.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
@click.option("--runs", type=int, default=3, show_default=True, help="Timed rounds; in each, every level and PyTorch run each component once, taking turns (median).")
@click.option("--render-seconds", type=float, default=10.0, show_default=True,
              help="Length of the end-to-end render (0: skip).")
@click.option("--audio", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Audio for the end-to-end render (default: the bundled 5 s trumpet clip, so a render covers at most 5 s).")
@click.option("--live-seconds", type=float, default=0.0, show_default=True,
              help="Also play this much of the audio through live mode with a simulated page: frames shown a second, "
                   "sync error, stalls, latency (0: skip).")
@click.option("--live-fps", type=float, default=24.0, show_default=True, help="The live scenario's frames per second.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time PyTorch on the same weights (needs the dev extra and a checkout).")
@click.option("--layers", is_flag=True,
              help="Also time every convolution and linear-layer shape of the float32 UNet and VAE alone (beside PyTorch).")
@click.option("--profile", is_flag=True,
              help="Also split the float32 frame's time by kind of work (convolutions, linear layers, attention, "
                   "norms and activations, other), beside PyTorch's.")
@click.option("--vae", type=click.Choice(["tiny", "large"]), default="tiny", show_default=True,
              help="The VAE that decodes: SDXS's tiny one, or the model's large (KL) VAE; quantized levels quantize the large one.")
@click.option("--quick", is_flag=True,
              help="A small run for CI: random:tiny at 128 px, batch 1 and 2, one run, with --layers, --profile and 3 s of live "
                   "at 8 fps (--vae and --group-size apply).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="benchmarks/results", show_default=True,
              help="Folder for results.json, results.md and fps.png.")
@friendly_errors
def bench(model, size, levels, batches, group_size, runs, render_seconds, audio, live_seconds, live_fps, reference, layers,
          profile, vae, quick, out_dir):
    """Frames per second by precision level and batch size, beside PyTorch and the matmul peak.

    \b
    Examples:
      musicviz-mlx bench --quick
      musicviz-mlx bench --model random:sdxs-512-0.9 --levels float32,8bit,4bit --batches 1,4
      musicviz-mlx bench --vae large --levels float32,8bit --batches 1 --render-seconds 0
      musicviz-mlx bench --levels float32 --batches 1 --render-seconds 0 --profile
      musicviz-mlx bench --model random:tiny --size 128 --levels float32 --batches 1 --live-seconds 10 --live-fps 12
    """
    from .benchmark import BenchConfig, run_benchmark, write_outputs

    try:
        config = BenchConfig(model=model, size=size, levels=tuple(v.strip() for v in levels.split(",") if v.strip()),
                             batches=tuple(int(b) for b in batches.split(",") if b.strip()),
                             group_size=int(group_size), runs=runs, render_seconds=render_seconds, audio=audio,
                             live_seconds=live_seconds, live_fps=live_fps, layers=layers, profile=profile, vae=vae)
    except ValueError:
        raise click.UsageError(f"--batches must be comma-separated integers, not {batches!r}") from None
    if quick:
        overridden = [f"--{name.replace('_', '-')}" for name in _QUICK_SETS
                      if click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if overridden:
            raise click.UsageError(f"--quick sets its own {', '.join(overridden)}: drop "
                                  f"{'it' if len(overridden) == 1 else 'them'} or drop --quick")
        config = BenchConfig(model="random:tiny", size=128, levels=("float32", "8bit", "4bit"), batches=(1, 2), runs=1,
                             group_size=int(group_size), render_seconds=2.0, audio=audio, live_seconds=3.0,
                             live_fps=8.0, layers=True, profile=True, vae=vae)
    config.check()
    ref = _torch_reference(config) if reference else None
    if reference and ref is None:
        click.echo("note: no PyTorch reference (install the dev extra and run from a checkout)", err=True)
    try:
        result = run_benchmark(config, reference=ref, log=lambda line: click.echo(line, err=True))
    finally:
        if ref is not None:
            ref.close()
    for path in write_outputs(result, out_dir):
        click.echo(str(path))


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
@_walk_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; any other than loopback needs the token printed with the URL.")
@click.option("--port", type=int, default=8765, show_default=True, help="HTTP port (0: any free one).")
@click.option("--osc", "osc_port", type=int, default=None, help="Also take /prompt, /motion, /seed, /mode over OSC on this UDP port.")
@click.option("--no-open", is_flag=True, help="Do not open the page in the browser.")
@friendly_errors
def live_command(song, prompt, input_device, model, size, fps, seed, mode, beat_grid, motion, host, port, osc_port,
                 no_open):
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
    """
    from .realtime import live
    from .pipeline import DEFAULT_MODEL

    if input_device == "list":
        from .realtime.audio_input import list_devices

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
             host=host, port=port, open_browser=not no_open, osc_port=osc_port)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a live session ends
        click.echo("live: stopped", err=True)


if __name__ == "__main__":
    main()
