"""`musicviz-mlx analyze`: what a video follows, offline or as live mode hears it."""

from __future__ import annotations

import click

from ..cli import _walk_options, friendly_errors, main
from ..walkers import NoiseWalkConfig


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
    from ..audio import analyze as run
    from ..audio import beat_summary, counted, short_window
    from ..walkers import PromptWalkConfig

    noise = NoiseWalkConfig(grid=beat_grid, distance=motion)
    if chart:  # before the analysis, which takes seconds to minutes
        from ..charts import check_chart_path

        check_chart_path(chart)
    f = run(song, fps=fps, start=start, duration=duration)
    click.echo(f"{song}: {f.duration:.2f} s, {counted(f.n_frames, 'frame')} at {fps:g} fps, {beat_summary(f)}, "
               f"{counted(len(f.onset_times), 'onset')}, sections at " + ", ".join(f"{s:.1f}" for s in f.section_times) + " s")
    if short_window(f, duration):
        click.echo(f"warning: {short_window(f, duration)}", err=True)
    if chart:
        from ..charts import features_chart

        click.echo(f"chart: {features_chart(f, chart, noise=noise, prompt=PromptWalkConfig(mode=mode))}")


def _analyze_live(song, live, json_out, chart) -> None:
    """`analyze --live [--json OUT]`: the causal analyzer over SONG in live mode's blocks."""
    import json
    from pathlib import Path

    from ..files import atomic_output, check_output_path
    from ..realtime.analyzer import analyze_live

    if not live:
        raise click.UsageError("--json goes with --live")
    if chart:
        raise click.UsageError("--out charts the offline analysis: drop --live or --out")
    if json_out:
        check_output_path(json_out, "live.json")
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
