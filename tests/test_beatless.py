"""Music without a steady beat: no beat grid, a noise walk that flows with the loudness; music with a
beat (click tracks, the test recordings) keeps its beats."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from reference import DATA
from test_audio_walkers import clicks

from mlx_musicviz.audio import analyze, beat_confidence
from mlx_musicviz.walkers import NoiseWalkConfig, angle_schedule

SR = 22050
RECORDINGS = sorted((DATA / "audio").glob("*.ogg"))
warnings.filterwarnings("ignore", message="Trying to estimate tuning")
# tempo and beats of the test recordings before beat confidence existed (librosa's tracker, refined)
RECORDED_BEATS = {"Hungarian": (126.0, 88), "Karissa": (117.5, 251), "Kevin": (110.0, 212), "sorohanro": (120.2, 5)}


def drone(seconds=40.0, seed=0):
    """A low drone (55 Hz and three partials) swelling and fading over 9 s and 23 s cycles, in noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * t / 9.0 - 1.2) * np.sin(2 * np.pi * t / 23.0)
    partials = ((55, 0.3, 0), (82.5, 0.2, 1), (110, 0.15, 2), (165, 0.1, 0.5))
    tone = sum(a * np.sin(2 * np.pi * f * t + p) for f, a, p in partials)
    return ((swell * tone + 0.02 * rng.standard_normal(len(t))) * 0.7).astype(np.float32)


def calls(seconds=60.0, seed=5):
    """Whale-like calls: gliding tones of 1 to 3.5 s with their octave, swelling in and out, at irregular
    gaps of 0.5 to 4 s, in sea noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.03 * rng.standard_normal(len(t))
    at = 0.0
    while at < seconds - 3:
        length, f0 = rng.uniform(1.0, 3.5), rng.uniform(150, 600)
        f1 = f0 * rng.uniform(0.6, 1.8)
        sel = (t >= at) & (t < at + length)
        u = t[sel] - at
        phase = 2 * np.pi * np.cumsum(f0 + (f1 - f0) * u / length) / SR
        y[sel] += 0.4 * np.sin(np.pi * u / length) ** 2 * (np.sin(phase) + 0.3 * np.sin(2 * phase))
        at += length + rng.uniform(0.5, 4.0)
    return y.astype(np.float32)


def chord(freqs, seconds=30.0):
    """Pure tones held from the first sample, no noise: their close partials beat slowly (the
    percussive envelope, in dB below its own faint peak, once read this as a steady beat)."""
    t = np.arange(int(seconds * SR)) / SR
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def fifths():
    return chord((110.0, 165.0, 220.5))


def sweep(seconds):
    """A sine gliding from 100 Hz upward, 0.3 peak."""
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (100 * t + 50 * t**2))).astype(np.float32)


def triad():
    return chord((220.0, 261.63, 329.63))  # A minor


def noise(seconds=30.0):
    return (0.3 * np.random.default_rng(1).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.mark.parametrize("name,signal", [("drone", drone), ("whale-like calls", calls), ("noise", noise),
                                         ("held fifths", fifths), ("held A minor triad", triad)])
def test_no_beat_grid_without_a_pulse(name, signal):
    f = analyze((signal(), SR), fps=30)
    assert not f.steady_beat and f.tempo == 0.0 and len(f.beat_times) == 0, (f.tempo, len(f.beat_times))
    assert f.beat_confidence < 0.2


@pytest.mark.parametrize("name,signal", [("held A minor triad", lambda: triad()[:10 * SR]),
                                         ("a sine sweep", lambda: sweep(10.0)), ("a steady tone", lambda: chord((440.0,), 1.2))])
def test_short_signals_without_a_pulse_get_no_beat_grid(name, signal):
    """Under 16 s the evidence is thinner and short clips of music can read as low as noise, so only a
    confidence near 0 drops the grid: a 10 s held chord, a 10 s sweep, a 1.2 s tone."""
    f = analyze((signal(), SR), fps=10)
    assert not f.steady_beat and len(f.beat_times) == 0, (f.tempo, len(f.beat_times), f.beat_confidence)


def test_held_chords_have_no_onsets_and_music_keeps_its_own():
    """The slow beating of a held chord's partials (a rise of 0.04 to 0.1 dB) made hundreds of onsets,
    many of them one frame counted several times; music's onsets are kept, each once."""
    t = np.arange(30 * SR) / SR
    for held in (fifths(), triad() * np.minimum(1.0, t / 0.5).astype(np.float32)):  # one fading in
        assert len(analyze((held, SR), fps=10).onset_times) == 0
    song = analyze(RECORDINGS[1], fps=10, duration=30.0)
    assert len(song.onset_times) > 100 and np.all(np.diff(song.onset_times) > 0)


def test_walk_speed_follows_loudness_without_a_beat():
    """The drone's walk has no clock: its angular speed rises and falls with the loudness, and its
    spurious onsets (noise) barely move it; with a steady beat the speed pulses on the beats instead."""
    fps = 30
    f = analyze((drone(), SR), fps=fps)
    config = NoiseWalkConfig()
    speed = np.diff(angle_schedule(f, config)) * fps
    r = np.corrcoef(speed, f.loudness[:-1])[0, 1]
    print(f"drone: walk speed vs loudness r = {r:.3f}, {len(f.onset_times)} onsets, salience "
          f"max {f.onset_salience.max():.2f}")
    assert r > 0.9
    assert speed.min() >= config.drift - 1e-9 and speed.max() <= config.max_speed + 1e-9
    assert f.onset_salience.max() < 0.3  # the noise's onsets
    beats = analyze((clicks(120, 20)[0], SR), fps=fps)
    beat_speed = np.diff(angle_schedule(beats, config)) * fps
    assert np.corrcoef(beat_speed, beats.loudness[:-1])[0, 1] < 0.5


def test_flowing_walk_surges_on_salient_onsets():
    """Without a steady beat, a salient onset (a note) pushes the walk on for ACCENT_SECONDS; one that
    is not (noise) does not; and the speed stays under max_speed."""
    from mlx_musicviz.audio import AudioFeatures
    from mlx_musicviz.walkers import ACCENT_SECONDS

    fps, n = 30, 300
    onsets = np.array([2.0, 5.0])
    flat = np.full(n, 0.5)

    def features(salience):
        return AudioFeatures(fps=fps, duration=n / fps, n_frames=n, tempo=0.0, beat_times=np.zeros(0),
                             onset_times=onsets, loudness=flat, mel_power=flat, onset_strength=flat,
                             chroma=np.zeros((n, 12)), chroma_delta=np.zeros((n, 12)), bands={},
                             onset_salience=np.asarray(salience, dtype=float))

    config = NoiseWalkConfig()
    quiet = np.diff(angle_schedule(features([0.0, 0.0]), config)) * fps
    loud = np.diff(angle_schedule(features([1.0, 0.05]), config)) * fps
    assert np.allclose(quiet, quiet[0])  # no clock: a steady flow at this loudness
    surge = slice(int(2.0 * fps), int((2.0 + ACCENT_SECONDS) * fps))
    assert loud[surge].max() > 2 * quiet[0] and loud.max() <= config.max_speed + 1e-9
    weak = slice(int(5.0 * fps), int((5.0 + ACCENT_SECONDS) * fps))
    assert loud[weak].max() < 1.2 * quiet[0]
    assert np.allclose(loud[int(3 * fps):int(5 * fps)], quiet[0])


@pytest.mark.parametrize("bpm", [60, 90, 120, 150, 180])
def test_click_tracks_keep_their_beats(bpm):
    y, times = clicks(bpm)
    f = analyze((y, SR), fps=30)
    assert f.steady_beat and f.beat_confidence > 0.6
    assert len(f.beat_times) >= 0.8 * len(times)
    assert max(np.min(np.abs(times - b)) for b in f.beat_times) <= 1 / 30


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem[:24])
def test_real_recordings_keep_their_beats(path):
    f = analyze(path, fps=30)
    tempo, count = next(v for k, v in RECORDED_BEATS.items() if path.name.startswith(k))
    print(f"{path.name}: {f.tempo:.1f} BPM, {len(f.beat_times)} beats, beat confidence {f.beat_confidence:.3f}")
    assert f.steady_beat and round(f.tempo, 1) == tempo and len(f.beat_times) == count


def test_beat_tracker_is_librosas():
    """track_beats (librosa's dynamic programme with cached kernels: librosa.beat compiles its own at
    every import) finds librosa.beat.beat_track's beats, on real and random envelopes, at any tempo."""
    import librosa

    from mlx_musicviz.audio import beats as audio_beats
    from mlx_musicviz.audio import load_audio, spectral, track_beats

    rng = np.random.default_rng(0)
    envelopes = [(rng.random(3000 + 700 * i) ** 4).astype(np.float32) for i in range(6)]
    envelopes.append(np.where(rng.random(5000) > 0.98, 5.0, 0.0).astype(np.float32))  # sparse hits
    envelopes.append(np.concatenate([np.zeros(800), rng.random(4000) ** 3, np.zeros(500)]).astype(np.float32))
    y = load_audio(RECORDINGS[0], SR, duration=60.0)[0]
    envelopes.append(spectral._feature_pass(spectral._Reader([y]), len(y), None, SR, 10**9)[0].percussive)
    for env in envelopes:
        for bpm in (audio_beats._tempo(env, SR), 61.0, 97.0, 180.0):
            _, expected = librosa.beat.beat_track(onset_envelope=env, sr=SR, hop_length=256, bpm=bpm, units="frames")
            assert np.array_equal(track_beats(env, bpm, SR / 256), expected), bpm


def test_beat_confidence_scale():
    """A click track's envelope is nearly all pulse; an envelope with no onsets at all scores 0."""
    frames = int(20 * SR / 256)
    env = np.zeros(frames)
    env[:: int(round(0.5 * SR / 256))] = 5.0
    assert beat_confidence(env) > 0.8
    assert beat_confidence(np.full(frames, 1.0)) == 0.0
    assert beat_confidence(np.zeros(0)) == 0.0
    assert beat_confidence(np.random.default_rng(0).random(frames) * 3) < 0.2


def test_analyze_says_no_steady_beat(tmp_path):
    """The CLI's summary line and the chart's title say "no steady beat"."""
    import soundfile

    song = tmp_path / "drone.wav"
    soundfile.write(song, drone(30.0), SR)
    chart = tmp_path / "drone.png"
    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", str(song), "--out", str(chart)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "no steady beat" in r.stdout.splitlines()[0] and "BPM" not in r.stdout
    assert chart.exists()
    r = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", str(RECORDINGS[1])],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "BPM" in r.stdout and "no steady beat" not in r.stdout


def test_chart_title_says_no_steady_beat(tmp_path, monkeypatch):
    from PIL import ImageDraw

    from mlx_musicviz.charts import features_chart

    texts = []
    draw_text = ImageDraw.ImageDraw.text
    def text(self, xy, text, *args, **kwargs):
        texts.append(text)
        return draw_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    features_chart(analyze((drone(20.0), SR), fps=10), tmp_path / "a.png")
    assert "no steady beat" in texts[0] and "BPM" not in texts[0]
    texts.clear()
    features_chart(analyze((clicks(120)[0], SR), fps=10), tmp_path / "b.png")
    assert "120" in texts[0] and "BPM" in texts[0] and "no steady beat" not in texts[0]
