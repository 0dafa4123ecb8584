"""Audio features on the frame grid, and the two walkers, on synthesized and real recordings."""

import warnings

import mlx.core as mx
import numpy as np
import pytest
from reference import DATA

from mlx_musicviz.audio import NOTE_NAMES, analyze, frame_count
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.walkers import NoiseWalkConfig, NoiseWalker, PromptWalker

SR = 22050
RECORDINGS = sorted((DATA / "audio").glob("*.ogg"))
warnings.filterwarnings("ignore", message="Trying to estimate tuning")


def clicks(bpm, seconds=16.0, sr=SR, start=0.5):
    y = np.zeros(int(seconds * sr), np.float32)
    times = np.arange(start, seconds - 0.3, 60.0 / bpm)
    for t in times:
        i = int(round(t * sr))
        y[i:i + 200] += np.hanning(400)[200:] * np.sin(np.arange(200) * 0.9)
    return y, times


def stepped_tones(seconds_per_note=0.6, sr=SR):
    notes, parts = list(range(12)), []
    for n in notes:
        f = 261.63 * 2 ** (n / 12)
        t = np.arange(int(seconds_per_note * sr)) / sr
        parts.append(0.5 * np.sin(2 * np.pi * f * t) * np.minimum(1, np.minimum(t, t[::-1]) * 50))
    return np.concatenate(parts).astype(np.float32), notes


@pytest.mark.parametrize("bpm", [60, 90, 120, 150, 180])
@pytest.mark.parametrize("fps", [24, 30, 60])
def test_beats_within_one_frame_of_clicks(bpm, fps):
    y, times = clicks(bpm)
    f = analyze((y, SR), fps=fps)
    assert len(f.beat_times) >= 0.8 * len(times)
    err = np.array([np.min(np.abs(times - b)) for b in f.beat_times])
    assert err.max() <= 1.0 / fps, f"worst beat {err.max() * 1000:.1f} ms off at {fps} fps"
    assert abs(f.tempo - bpm) / bpm < 0.05 or abs(f.tempo - 2 * bpm) / bpm < 0.1 or abs(2 * f.tempo - bpm) / bpm < 0.1


def test_frame_grid_is_exact_for_any_fps():
    y = np.zeros(int(3.7 * SR), np.float32) + 0.01 * np.random.default_rng(0).standard_normal(int(3.7 * SR)).astype(np.float32)
    for fps in (24, 25, 29.97, 30, 60, 7.5):
        f = analyze((y, SR), fps=fps)
        assert f.n_frames == frame_count(3.7, fps)
        assert np.allclose(f.times, np.arange(f.n_frames) / fps)
        assert f.chroma.shape == (f.n_frames, 12) and f.loudness.shape == (f.n_frames,)


@pytest.mark.slow
def test_ten_minute_grid_ends_within_one_frame():
    seconds = 600.0
    y = (0.05 * np.random.default_rng(1).standard_normal(int(seconds * 8000))).astype(np.float32)
    f = analyze((y, 8000), fps=30)
    assert abs(f.n_frames / 30 - seconds) <= 1 / 30
    assert abs((f.n_frames - 1) / 30 - seconds) <= 2 / 30


def test_dominant_notes_of_stepped_tones():
    y, notes = stepped_tones()
    f = analyze((y, SR), fps=30)
    per = int(0.6 * 30)
    got = [int(np.argmax(f.chroma[i * per + per // 3: (i + 1) * per - per // 3].mean(axis=0))) for i in range(12)]
    assert got == notes, [NOTE_NAMES[g] for g in got]
    mx_notes = PromptWalker(f, mx.zeros((1, 77, 8)), mx.zeros((12, 77, 8))).dominant_notes()
    seen = [n for n in mx_notes if n]
    assert seen[0] == "C" and "B" in seen


def _check_latents(f):
    walker = NoiseWalker(f, (16, 16, 4), seed=3)
    for start in range(0, f.n_frames, 256):
        lat = walker.latents(np.arange(start, min(start + 256, f.n_frames)))
        mean, std = np.array(lat.mean(axis=(1, 2, 3))), np.array(lat.std(axis=(1, 2, 3)))
        assert np.all(np.abs(mean) <= 0.05) and np.all(np.abs(std - 1) <= 0.05)
        assert not np.isnan(np.array(lat)).any()
    return walker


def _signals():
    rng = np.random.default_rng(2)
    y, _ = clicks(128, 6)
    return {
        "clicks": (y, SR),
        "tones": (stepped_tones()[0], SR),
        "silence": (np.zeros(3 * SR, np.float32), SR),
        "white noise": ((0.3 * rng.standard_normal(3 * SR)).astype(np.float32), SR),
        "0.5 s clip": (clicks(120, 0.5, start=0.1)[0], SR),
        "96 kHz 6 channels": ((0.2 * rng.standard_normal((6, 2 * 96000))).astype(np.float32), 96000),
    }


@pytest.mark.parametrize("name", list(_signals()))
def test_walks_are_finite_and_unit_variance_on_synthetic_signals(name):
    f = analyze(_signals()[name], fps=30)
    walker = _check_latents(f)
    assert np.all(np.isfinite(walker.theta))
    assert walker.theta[-1] > walker.theta[0]  # it moves, even in silence
    emb = PromptWalker(f, mx.random.normal((1, 77, 8)), mx.random.normal((12, 77, 8))).embeddings(np.arange(f.n_frames))
    assert not np.isnan(np.array(emb)).any()


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem[:24])
def test_real_recordings(path):
    f = analyze(path, fps=30)
    assert abs(f.n_frames - round(f.duration * 30)) <= 1
    _check_latents(f)
    for mode in ("focus", "cumulative"):
        from mlx_musicviz.walkers import PromptWalkConfig

        pw = PromptWalker(f, mx.random.normal((2, 77, 8)), mx.random.normal((12, 77, 8)), PromptWalkConfig(mode=mode))
        assert not np.isnan(np.array(pw.embeddings(np.arange(0, f.n_frames, 7)))).any()
        assert pw.weights.sum(axis=1).max() <= pw.config.max_alpha + 1e-6


def test_faster_music_is_capped():
    cfg = NoiseWalkConfig(max_speed=1.2)
    for bpm in (90, 180, 240):
        f = analyze((clicks(bpm, 10)[0], SR), fps=60)
        speed = np.abs(np.diff(NoiseWalker(f, (8, 8, 4), config=cfg).theta)) * 60
        assert speed.max() <= cfg.max_speed + 1e-6, (bpm, speed.max())


@pytest.mark.parametrize("bad,msg", [(None, "fps"), (0, "fps"), (-30, "fps")])
def test_bad_fps(bad, msg):
    with pytest.raises(MusicvizError, match=msg):
        analyze((np.zeros(SR, np.float32), SR), fps=bad)


def test_shorter_than_one_frame():
    with pytest.raises(MusicvizError, match="too short"):
        analyze((np.zeros(100, np.float32), SR), fps=30)


def test_analyze_cli_draws_the_features_chart(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    out = tmp_path / "features.png"
    song = str(DATA / "audio" / "sorohanro_-_solo-trumpet-06.ogg")
    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", song, "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    image = Image.open(out)
    assert image.size[0] == 1400 and image.size[1] > 600
    pixels = np.asarray(image.convert("L"))
    assert (pixels < 128).mean() > 0.02  # curves and heat maps were drawn, not a blank canvas
    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", song, "--out", str(tmp_path / "x.jpg")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: the chart is a PNG") and r.stdout == ""  # before the analysis
    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", song, "--out",
                        str(tmp_path / "missing" / "f.png")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: output folder does not exist") and r.stdout == ""
    # the chart draws the walks that render's options would make
    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", song, "--out", str(tmp_path / "calm.png"),
                        "--beat-grid", "whole", "--motion", "0.05"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "calm.png")), np.asarray(image))
    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", song, "--motion", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: motion must be") and r.stdout == ""  # before the analysis
