"""A picture of what the video will follow: features and walks on the frame grid (Pillow only)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .audio import NOTE_NAMES, AudioFeatures, beat_summary
from .errors import MusicvizError
from .files import atomic_output, check_output_path
from .walkers import NoiseWalkConfig, PromptWalkConfig, angle_schedule, note_weights

WIDTH = 1400
LANE = 70
LEFT = 110


def check_chart_path(path: str | os.PathLike) -> Path:
    """`path` as a Path when a chart can be written there (a .png in an existing folder); else MusicvizError."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise MusicvizError(f"the chart is a PNG: give a path ending in .png, not {path.name}")
    return check_output_path(path, "features.png")


def features_chart(features: AudioFeatures, path: str | os.PathLike, title: str = "",
                   noise: NoiseWalkConfig | None = None, prompt: PromptWalkConfig | None = None) -> Path:
    """Draw the features of `features` and the two walks they drive into a PNG at `path`.

    Lanes, top to bottom: loudness, percussive onset strength with beats (red) and onsets (grey),
    bass / mid / treble energy, chroma (C at the bottom), the prompt walk's note weights, and the
    noise walk's angular speed (radians per second). Section starts are vertical blue lines. The
    title says "no steady beat" for music without one (the noise walk then flows with the loudness).
    Written atomically.
    """
    from PIL import Image, ImageDraw

    path = check_chart_path(path)
    n = max(features.n_frames, 1)
    angles = angle_schedule(features, noise or NoiseWalkConfig())
    speed = np.abs(np.diff(angles, prepend=angles[:1])) * features.fps
    weights = note_weights(features, prompt or PromptWalkConfig())
    lanes = [("loudness", "curve", features.loudness), ("onsets", "curve", features.onset_strength),
             ("bass", "curve", features.bands.get("bass")), ("mid", "curve", features.bands.get("mid")),
             ("treble", "curve", features.bands.get("treble")), ("chroma", "heat", features.chroma),
             ("notes", "heat", weights / max(float(weights.max()), 1e-9)),
             ("speed rad/s", "curve", speed / max(float(speed.max()), 1e-9))]
    heat_rows = 2 * LANE
    height = 50 + sum(heat_rows if kind == "heat" else LANE for _, kind, _ in lanes) + 30
    img = Image.new("RGB", (WIDTH, height), "white")
    d = ImageDraw.Draw(img)
    plot_w = WIDTH - LEFT - 20

    def x_of(frame):
        return LEFT + plot_w * np.asarray(frame, dtype=float) / n

    d.text((10, 10), title or f"{features.duration:.1f} s, {features.fps:g} fps, {beat_summary(features)}, "
           f"{len(features.onset_times)} onsets", fill="black")
    y = 40
    for name, kind, data in lanes:
        h = heat_rows if kind == "heat" else LANE
        d.text((10, y + h / 2 - 6), name, fill="black")
        d.rectangle([LEFT, y, LEFT + plot_w, y + h - 6], outline=(200, 200, 200))
        if data is None:
            pass
        elif kind == "curve":
            xs = x_of(np.arange(len(data)))
            ys = y + (h - 8) * (1 - np.clip(data, 0, 1)) + 1
            d.line(list(zip(xs.tolist(), ys.tolist())), fill=(30, 30, 30), width=1)
        else:
            cells = np.clip(np.asarray(data), 0, 1)  # (n, 12)
            columns = min(plot_w, len(cells))
            idx = np.linspace(0, len(cells) - 1, columns).astype(int)
            shade = (255 * (1 - cells[idx].T[::-1])).astype(np.uint8)  # C at the bottom
            tile = Image.fromarray(shade, mode="L").resize((plot_w, h - 6), Image.NEAREST)
            img.paste(tile.convert("RGB"), (LEFT, y))
            for i, note in enumerate(NOTE_NAMES):
                d.text((LEFT - 22, y + (h - 6) * (11 - i + 0.2) / 12 - 4), note, fill=(90, 90, 90))
        if name == "onsets":
            for t in features.onset_times:
                xx = float(x_of(t * features.fps))
                d.line([(xx, y + h - 16), (xx, y + h - 7)], fill=(150, 150, 150))
            for t in features.beat_times:
                xx = float(x_of(t * features.fps))
                d.line([(xx, y), (xx, y + 10)], fill=(200, 0, 0), width=2)
        y += h
    for t in features.section_times:
        xx = float(x_of(t * features.fps))
        d.line([(xx, 40), (xx, y)], fill=(40, 90, 220), width=2)
    for s in range(0, int(features.duration) + 1, max(1, int(features.duration // 10) or 1)):
        xx = float(x_of(s * features.fps))
        d.text((xx, y + 5), f"{s}s", fill="black")
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return path
