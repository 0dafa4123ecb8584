"""The causal analyzer of live mode: beats of click tracks (steady and with a tempo jump), no
dependence on the block size, no look-ahead, features, and agreement with the offline beats on
real recordings."""

import warnings

import numpy as np
import pytest
from reference import DATA

from mlx_musicviz.audio import SAMPLE_RATE, analyze
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.realtime.analyzer import CausalAnalyzer, analyze_live, beat_f_measure

SR = SAMPLE_RATE
RECORDINGS = sorted((DATA / "audio").glob("*.ogg"))
TOLERANCE = 0.07  # seconds: the standard beat-evaluation window


def click_track(times, seconds, sr=SR):
    """Short decaying clicks at `times` (seconds) in `seconds` of silence."""
    y = np.zeros(int(seconds * sr), np.float32)
    click = np.hanning(400)[200:] * np.sin(np.arange(200) * 0.9)
    for t in times:
        i = int(round(t * sr))
        y[i:i + 200] += click[: len(y) - i]
    return y


def clicks_at(bpm, seconds=20.0, start=0.5):
    times = np.arange(start, seconds, 60.0 / bpm)
    return click_track(times, seconds), times


def clicks_jumping(first_bpm, second_bpm, jump=15.0, seconds=30.0):
    """Clicks at first_bpm up to `jump` seconds, then at second_bpm; also returns the jump's time."""
    before = np.arange(0.5, jump, 60.0 / first_bpm)
    after = np.arange(before[-1] + 60.0 / second_bpm, seconds, 60.0 / second_bpm)
    times = np.concatenate([before, after])
    return click_track(times, seconds), times


def f_between(reference, estimated, start, end):
    """F-measure of the beats in [start, end) seconds (estimates within the tolerance of the
    interval count: a beat just outside is not a false positive)."""
    ref, est = np.asarray(reference), np.asarray(estimated)
    return beat_f_measure(ref[(ref >= start) & (ref < end)],
                          est[(est >= start - TOLERANCE) & (est < end + TOLERANCE)])


def test_f_measure():
    ref = np.arange(10.0)
    assert beat_f_measure(ref, ref + 0.05) == 1.0
    assert beat_f_measure(ref, ref + 0.1) == 0.0
    assert beat_f_measure(ref, np.arange(0, 10, 0.5)) == pytest.approx(2 / 3)  # double tempo: precision 1/2
    assert beat_f_measure(ref, ref[::2]) == pytest.approx(2 / 3)  # half tempo: recall 1/2
    assert beat_f_measure([], []) == 1.0 and beat_f_measure(ref, []) == 0.0


@pytest.mark.parametrize("bpm", [60, 90, 120, 150, 180])
def test_beats_of_steady_clicks(bpm):
    y, times = clicks_at(bpm)
    live = analyze_live((y, SR), block=1024)
    f = f_between(times, live["beat_times"], 5.0, times[-1] + 0.01)
    tempo = np.array(live["tempo_bpm"])[np.array(live["tempo_times"]) >= 5.0]
    print(f"{bpm} BPM clicks: F = {f:.3f}, tempo {np.median(tempo):.2f}")
    assert f >= 0.9
    assert np.all(np.abs(tempo / bpm - 1) < 0.02), (tempo.min(), tempo.max())


@pytest.mark.parametrize("first, second", [(100, 140), (140, 100)])
def test_follows_a_tempo_jump(first, second):
    y, times = clicks_jumping(first, second)
    live = analyze_live((y, SR), block=512)
    before = f_between(times, live["beat_times"], 5.0, 15.0)
    after = f_between(times, live["beat_times"], 20.0, times[-1] + 0.01)
    tempo_times, tempo = np.array(live["tempo_times"]), np.array(live["tempo_bpm"])
    print(f"{first} -> {second} BPM: F = {before:.3f} before the jump, {after:.3f} from 5 s after it")
    assert before >= 0.9 and after >= 0.9
    assert np.all(np.abs(tempo[(tempo_times >= 5) & (tempo_times < 15)] / first - 1) < 0.02)
    assert np.all(np.abs(tempo[tempo_times >= 20] / second - 1) < 0.02)


def test_same_beats_for_any_block_size():
    y, _ = clicks_jumping(100, 140)
    small, large = analyze_live((y, SR), block=256), analyze_live((y, SR), block=4096)
    hop_s = small["hop"] / small["rate"]
    assert len(small["beat_times"]) == len(large["beat_times"]) > 40
    assert np.max(np.abs(np.subtract(small["beat_times"], large["beat_times"]))) <= hop_s
    assert small["tempo_times"] == large["tempo_times"]
    assert np.allclose(small["tempo_bpm"], large["tempo_bpm"], rtol=1e-3)
    assert len(small["onset_times"]) == len(large["onset_times"])


def run(y, block=777):
    analyzer = CausalAnalyzer(SR)
    frames = [f for start in range(0, len(y), block) for f in analyzer.process(y[start:start + block])]
    return analyzer, frames


def test_no_lookahead():
    """Frames up to time t are the same whatever follows t: here the clicks go on, or noise does."""
    y, _ = clicks_at(120, seconds=14.0)
    cut = int(9.3 * SR)
    other = y.copy()
    other[cut:] = 0.3 * np.random.default_rng(0).standard_normal(len(y) - cut)
    analyzer, frames = run(y)
    _, changed = run(other)
    known = [i for i, f in enumerate(frames) if f.time + analyzer.lookahead_s <= cut / SR]
    assert len(known) > 700
    for i in known:
        a, b = frames[i], changed[i]
        assert (a.time, a.rms, a.onset, a.tempo, a.phase, a.beat, a.onset_event) == \
               (b.time, b.rms, b.onset, b.tempo, b.phase, b.beat, b.onset_event), f"frame {i} at {a.time:.3f} s"
        assert a.bands == b.bands and np.array_equal(a.chroma, b.chroma)
    first_after = frames[known[-1] + 1]
    assert first_after.rms != changed[known[-1] + 1].rms  # the comparison can tell them apart


def test_next_beats_predict_the_coming_clicks():
    y, times = clicks_at(120, seconds=20.0)
    analyzer, _ = run(y[: int(10.2 * SR)])  # stop between two clicks
    predicted = analyzer.next_beats(analyzer.now, 4)
    coming = times[times > analyzer.now][:4]
    assert len(predicted) == 4 and np.all(predicted > analyzer.now)
    assert np.max(np.abs(predicted - coming)) <= TOLERANCE, (predicted, coming)
    later = analyzer.next_beats(analyzer.now + 1.0, 2)  # a moment further on: beats after it
    assert np.all(later > analyzer.now + 1.0) and np.max(np.abs(later - times[times > analyzer.now + 1.0][:2])) <= TOLERANCE


def test_onsets_of_clicks():
    y, times = clicks_at(150)
    live = analyze_live((y, SR))
    assert f_between(times, live["onset_times"], 0.0, 20.0) >= 0.95


def tone(freq, seconds=2.0, amplitude=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_held_chords_give_no_beats_or_onsets():
    """A held chord's partials beat slowly; the onset strength ripples (about 0.12 dB), which the beat
    tracker would follow as a steady beat (36 beats at 86 BPM in 30 s before the gate): nothing after the
    chord's start."""
    t = np.arange(30 * SR) / SR
    chord = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63)) * np.minimum(1.0, t / 0.5)
    live = analyze_live((chord.astype(np.float32), SR))  # only its start (a fade-in over 0.5 s) may count
    assert max(live["beat_times"], default=0.0) < 2.5 and max(live["onset_times"], default=0.0) < 1.0, live


def test_levels_bands_and_chroma():
    _, frames = run(np.concatenate([tone(110.0), tone(440.0 * 2 ** (3 / 12)), tone(6000.0), np.zeros(SR, np.float32)]))
    low, c5, high, quiet = (min(frames, key=lambda f: abs(f.time - t)) for t in (1.5, 3.5, 5.5, 6.9))
    assert low.bands["bass"] > 0.9 and low.bands["mid"] < 0.1 and low.bands["treble"] < 0.1
    assert c5.bands["mid"] > 0.9 and high.bands["treble"] > 0.9 and high.bands["bass"] < 0.1
    assert int(np.argmax(low.chroma)) == 9 and int(np.argmax(c5.chroma)) == 0  # A2, then C5
    assert low.rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02) and low.loudness == pytest.approx(1.0, abs=0.02)
    assert quiet.rms < 1e-6 and quiet.loudness == 0 and not quiet.chroma.any()
    assert all(0 <= f.loudness <= 1 and 0 <= f.onset <= 1 and 0 <= f.phase < 1 for f in frames)


def test_other_sample_rates():
    """At 48 kHz the hop keeps its duration, and the beats are the same."""
    import librosa

    y, times = clicks_at(120, seconds=12.0)
    y48 = librosa.resample(y, orig_sr=SR, target_sr=48000)
    live = analyze_live((y48, 48000))  # analysed at SAMPLE_RATE
    analyzer = CausalAnalyzer(48000)
    assert abs(analyzer.hop / 48000 - 256 / SR) < 0.2 / 1000
    beats = [f.time for start in range(0, len(y48), 1000) for f in analyzer.process(y48[start:start + 1000]) if f.beat]
    assert f_between(times, beats, 5.0, times[-1] + 0.01) >= 0.9
    assert f_between(times, live["beat_times"], 5.0, times[-1] + 0.01) >= 0.9


@pytest.mark.parametrize("bad, message", [
    (lambda: CausalAnalyzer(0), "sample rate"),
    (lambda: CausalAnalyzer(22050.5), "sample rate"),
    (lambda: CausalAnalyzer(SR, min_bpm=200, max_bpm=100), "tempo range"),
    (lambda: CausalAnalyzer(SR).process(np.zeros(100, np.int16)), "float samples"),
    (lambda: CausalAnalyzer(SR).process(np.zeros((2, 2, 2), np.float32)), "shape"),
    (lambda: analyze_live((np.zeros(SR, np.float32), SR), block=0), "block"),
    (lambda: analyze_live("/nonexistent/song.ogg"), "not found"),
])
def test_bad_input_is_one_line(bad, message):
    with pytest.raises(MusicvizError, match=message) as e:
        bad()
    assert "\n" not in str(e.value)


def test_silence_and_damaged_samples():
    live = analyze_live((np.zeros(5 * SR, np.float32), SR))
    assert live["beat_times"] == [] and live["onset_times"] == [] and set(live["tempo_bpm"]) == {0.0}
    y, times = clicks_at(120, seconds=12.0)
    y[SR:SR + 100] = np.nan  # non-finite samples are silence
    assert f_between(times, analyze_live((y, SR))["beat_times"], 5.0, times[-1] + 0.01) >= 0.9


@pytest.fixture(scope="module")
def agreement():
    """Per recording: F-measure of the live beats against the offline beats (audio.analyze), both
    counted from 5 s on (from 1 s on a clip shorter than 20 s), with both tempi."""
    if not RECORDINGS:
        pytest.fail(f"no recordings in {DATA / 'audio'}")
    rows = {}
    for path in RECORDINGS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            offline = analyze(path, fps=10)
        live = analyze_live(path)
        start = 5.0 if live["duration"] >= 20 else 1.0
        tempo = np.array(live["tempo_bpm"])
        rows[path.name] = dict(f=f_between(offline.beat_times, live["beat_times"], start, live["duration"]),
                               duration=live["duration"], offline_bpm=offline.tempo,
                               live_bpm=float(np.median(tempo[tempo > 0])) if tempo.any() else 0.0)
    print("\nlive beats vs offline beats (F-measure, ±70 ms):")
    for name, r in rows.items():
        print(f"  {name}: {r['duration']:.0f} s, F = {r['f']:.3f}, tempo offline {r['offline_bpm']:.1f} "
              f"live (median) {r['live_bpm']:.1f} BPM")
    return rows


@pytest.mark.slow
def test_real_recordings_agree_with_offline_beats(agreement):
    """Live beats must agree with the offline ones well beyond chance on songs (a beat grid of the
    right tempo at a random phase scores about 2 x 70 ms / period: 0.25 at 110 BPM); music without
    drums and with rubato keeps them apart (the offline beats are also moved to the attacks)."""
    songs = [r for r in agreement.values() if r["duration"] >= 20]
    assert len(songs) >= 3
    assert all(r["f"] >= 0.25 for r in songs), {n: round(r["f"], 3) for n, r in agreement.items()}
    assert np.mean([r["f"] for r in songs]) >= 0.4
    assert max(r["f"] for r in songs) >= 0.6


def test_analyze_live_writes_what_live_mode_sees(tmp_path):
    """`musicviz-mlx analyze SONG --live --json OUT`: the causal analyzer's beats, tempo over time and
    onsets of a file, as JSON (written atomically), and a summary line."""
    import json
    import subprocess
    import sys
    import wave

    y, _ = clicks_at(120, seconds=12.0)
    song = tmp_path / "clicks.wav"
    with wave.open(str(song), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(y, -1, 1) * 32767).astype("<i2").tobytes())
    out = tmp_path / "live.json"
    done = subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "analyze", str(song), "--live", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())
    assert found == analyze_live(str(song))
    assert {"beat_times", "tempo_times", "tempo_bpm", "onset_times", "block", "lookahead_s"} <= set(found)
    assert f"{len(found['beat_times'])} beats" in done.stdout and "look-ahead" in done.stdout
    assert abs(np.median(np.diff(found["beat_times"][4:])) - 0.5) < 0.01
