"""Long songs in bounded memory: a window of a file decodes to exactly the samples of a whole decode,
features computed block by block equal those of the whole signal, and a 60-minute song is analysed,
and a window of it rendered, in memory that does not grow with the file."""

import subprocess
import sys
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
from reference import DATA

from mlx_musicviz.audio import analyze, chroma, decode_file, features, hpss, load_audio, numba_kernels, spectral
from mlx_musicviz.audio import beats as audio_beats
from mlx_musicviz.video import soundtrack

SR = 22050
KARISSA = DATA / "audio" / "Karissa_Hobbs_-_Lets_Go_Fishin.ogg"
warnings.filterwarnings("ignore", message="Trying to estimate tuning")


def song(first: int, n: int, rate: int, channels: int = 1) -> np.ndarray:
    """Samples first..first + n of a song at `rate` Hz: a kick on every beat (120 BPM), a hi-hat between,
    a bass note and a chord that change every bar, the key moving a fifth up every two minutes."""
    t = (first + np.arange(n)) / rate
    phase = np.mod(t, 0.5)
    y = 0.6 * np.sin(2 * np.pi * (50 + 60 * np.exp(-phase * 30)) * phase) * np.exp(-phase * 12)
    y += 0.08 * np.random.default_rng(first).standard_normal(n) * np.exp(-np.mod(t - 0.25, 0.5) * 60)
    key = (np.floor(t / 120.0).astype(int) * 7) % 12
    root = 110.0 * 2.0 ** (((key + np.array([0, 5, 7, 9])[np.floor(t / 2.0).astype(int) % 4]) % 12) / 12)
    for ratio, amp in ((1.0, 0.2), (2 ** (4 / 12), 0.1), (2 ** (7 / 12), 0.1), (2.0, 0.08)):
        y += amp * np.sin(2 * np.pi * root * ratio * t)
    y = (0.5 * y).astype(np.float32)
    return np.stack([y, np.roll(y, 7)]) if channels == 2 else y[None]


CODECS = {  # extension, sample format, options
    "libmp3lame": ("mp3", "fltp", {"compression_level": "9"}), "libmp3lame vbr": ("mp3", "fltp", {}),
    "vorbis": ("ogg", "fltp", {"strict": "experimental"}),
    "aac": ("m4a", "fltp", {}), "libopus": ("opus", "flt", {}), "flac": ("flac", "s16", {}),
    "pcm_s16le": ("wav", "s16", {}),
}


def encode(path, codec: str, rate: int, channels: int, seconds: float, first_second: float = 0.0):
    """Encode `seconds` of `song` from `first_second` on into `path` with PyAV, ten seconds at a time."""
    _, fmt, options = CODECS[codec]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec.split()[0], rate=rate)
        stream.layout = "stereo" if channels == 2 else "mono"
        stream.format = fmt
        stream.codec_context.options = options
        if codec.endswith("vbr"):  # LAME's -V 4: frames of varying size, a seek table to estimate from
            stream.codec_context.flags |= av.codec.context.Flags.qscale
            stream.codec_context.global_quality = 4 * 118
        total, at = int(seconds * rate), 0
        while at < total:
            n = min(10 * rate, total - at)
            y = song(int(first_second * rate) + at, n, rate, channels)
            if fmt == "flt":
                y = np.ascontiguousarray(y.T).reshape(1, -1)
            elif fmt == "s16":
                y = np.round(np.ascontiguousarray(y.T).reshape(1, -1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(y, format=fmt, layout=stream.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = rate, at, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            at += n
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def join_minutes(path, minutes: list, count: int):
    """An MP3 of `count` minutes made of the encoded one-minute MP3s `minutes`, in turn, packets copied
    (each minute starts with the encoder's empty bit reservoir, so the joins decode cleanly)."""
    with av.open(str(path), "w") as out:
        with av.open(str(minutes[0])) as first:
            stream = out.add_stream_from_template(first.streams.audio[0])
        at = 0
        for m in range(count):
            with av.open(str(minutes[m % len(minutes)])) as part:
                end = 0
                for packet in part.demux(part.streams.audio[0]):
                    if packet.size == 0 or packet.pts is None:
                        continue
                    end = packet.pts + packet.duration
                    packet.pts = packet.dts = at + packet.pts
                    packet.stream = stream
                    out.mux(packet)
                at += end
    return path


@pytest.fixture(scope="session")
def formats(tmp_path_factory):
    """30 s of the song in each format, at the rates their users meet."""
    folder = tmp_path_factory.mktemp("formats")
    specs = {"mp3 22.05 kHz mono": ("libmp3lame", 22050, 1), "mp3 44.1 kHz stereo": ("libmp3lame", 44100, 2),
             "mp3 VBR 44.1 kHz stereo": ("libmp3lame vbr", 44100, 2),
             "vorbis 44.1 kHz stereo": ("vorbis", 44100, 2), "aac 48 kHz stereo": ("aac", 48000, 2),
             "opus 48 kHz mono": ("libopus", 48000, 1), "flac 32 kHz stereo": ("flac", 32000, 2),
             "wav 16 kHz mono": ("pcm_s16le", 16000, 1)}
    files = {name: encode(folder / f"{name.replace(' ', '_')}.{CODECS[codec][0]}", codec, rate, ch, 30.0)
             for name, (codec, rate, ch) in specs.items()}
    files["a real Ogg Vorbis (timestamps off at window switches)"] = KARISSA
    return files


@pytest.fixture(scope="session")
def long_songs(tmp_path_factory):
    """A 60-minute and a 1-minute MP3 (22.05 kHz mono) of the song, made of four encoded minutes."""
    folder = tmp_path_factory.mktemp("long")
    minutes = [encode(folder / f"minute{i}.mp3", "libmp3lame", SR, 1, 60.0, first_second=60.0 * i) for i in range(4)]
    return {"60": join_minutes(folder / "sixty.mp3", minutes, 60), "1": minutes[0]}


WINDOWS = [(0.3, 3.0), (7.77, 3.0), (21.1, 2.5), (25.0, None), (12.0, 100.0), (40.0, 1.0)]


@pytest.mark.parametrize("name", ["mp3 22.05 kHz mono", "mp3 44.1 kHz stereo", "mp3 VBR 44.1 kHz stereo",
                                  "vorbis 44.1 kHz stereo",
                                  "aac 48 kHz stereo", "opus 48 kHz mono", "flac 32 kHz stereo", "wav 16 kHz mono",
                                  "a real Ogg Vorbis (timestamps off at window switches)"])
def test_a_window_decodes_to_the_whole_decode_sliced(formats, name):
    """At the analysis rate (mono) and the soundtrack's (stereo), from near the start (no seek), from
    within, to the end, past the end: the same samples as a whole decode, sliced (bit-exact here; float
    rounding allowed). AAC is decoded from the start (its noise substitution's random state runs
    through the stream), the others seek."""
    path = formats[name]
    if "VBR" in name:  # frames of varying size: a seek can only estimate where a time is
        with av.open(str(path)) as container:
            assert len({p.size for p in container.demux(container.streams.audio[0]) if p.size}) > 3
    for rate, mono in ((SR, True), (44100, False)):
        whole = decode_file(path, rate, mono)
        for start, duration in WINDOWS:
            if path == KARISSA:
                start = start * 4
            first = int(round(start * rate))
            expected = whole[..., first:] if duration is None else whole[..., first:first + int(round(duration * rate))]
            got = decode_file(path, rate, mono, start, duration)
            assert got.shape == expected.shape, (rate, start, duration)
            assert np.abs(got - expected).max(initial=0.0) <= 1e-6, (rate, start, duration)


def test_soundtrack_and_analysis_read_only_the_window(formats):
    path = formats["mp3 44.1 kHz stereo"]
    whole, rate = soundtrack(path, None, None)
    part, _ = soundtrack(path, 12.5, 3.0)
    first = int(round(12.5 * rate))
    assert rate == 44100 and np.array_equal(part, whole[:, first:first + 3 * rate])
    y, _ = load_audio(path, SR, start=12.5, duration=3.0)
    assert np.array_equal(y, load_audio(path, SR)[0][int(round(12.5 * SR)):int(round(15.5 * SR))])
    assert decode_file(path, SR, True, 1e308).shape == (0,) and soundtrack(path, 1e300, 1.0)[0].shape == (2, 0)


def _same_features(a, b, tol=1e-6, chroma_tol=1e-5):
    assert a.n_frames == b.n_frames and a.tempo == b.tempo and a.steady_beat == b.steady_beat
    assert np.array_equal(a.beat_times, b.beat_times) and np.array_equal(a.onset_times, b.onset_times)
    assert np.array_equal(a.section_times, b.section_times)
    for name in ("loudness", "mel_power", "onset_strength"):
        assert np.abs(getattr(a, name) - getattr(b, name)).max() <= tol, name
    for name in a.bands:
        assert np.abs(a.bands[name] - b.bands[name]).max() <= tol, name
    assert np.abs(a.chroma - b.chroma).max() <= chroma_tol
    assert abs(a.beat_confidence - b.beat_confidence) <= 1e-9


def test_block_features_equal_whole_signal_features():
    """A 60 s clip analysed in blocks of 700 STFT frames (8.1 s: eight blocks, the HPSS, onset,
    inverse-STFT and CQT reaches across every join) gives the features of the whole clip in one block."""
    y = load_audio(KARISSA, SR, start=20.0, duration=60.0)[0]
    whole = analyze((y, SR), fps=30, block_frames=10**9)
    blocks = analyze((y, SR), fps=30, block_frames=700)
    assert len(whole.beat_times) > 100 and whole.steady_beat
    _same_features(whole, blocks)


def test_a_long_window_is_decoded_twice_not_held(monkeypatch):
    """A window longer than IN_MEMORY is decoded block by block, once for the whole-song quantities and
    once for the features, and gives the features of the window held in memory."""
    held = analyze(KARISSA, fps=24, start=10.0, duration=70.0, block_frames=1500)
    monkeypatch.setattr(features, "IN_MEMORY", 20.0)
    calls = []
    decode = features.decode_blocks
    monkeypatch.setattr(features, "decode_blocks", lambda *a, **k: (calls.append(a), decode(*a, **k))[1])
    streamed = analyze(KARISSA, fps=24, start=10.0, duration=70.0, block_frames=1500)
    assert len(calls) == 2
    _same_features(held, streamed)


def test_features_match_librosa_on_the_whole_signal():
    """The block-wise features are librosa's (as the analysis computed them before it went block-wise):
    loudness, mel power, band energy, percussive onset strength, beats and onsets."""
    import librosa

    y = load_audio(KARISSA, SR, start=30.0, duration=40.0)[0]
    f = analyze((y, SR), fps=30)
    stft = np.abs(librosa.stft(y, n_fft=2048, hop_length=256))
    ft = librosa.frames_to_time(np.arange(stft.shape[1]), sr=SR, hop_length=256)
    harmonic, percussive = librosa.decompose.hpss(stft)
    env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(percussive, ref=np.max), sr=SR, hop_length=256)
    rms = librosa.feature.rms(S=stft, frame_length=2048)[0]
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=stft**2, sr=SR).mean(axis=0), ref=1.0)
    grid = lambda x: features._norm(np.interp(f.times, ft, x))  # noqa: E731
    assert np.abs(f.loudness - grid(rms)).max() < 1e-5
    assert np.abs(f.mel_power - grid(mel_db)).max() < 1e-5
    assert np.abs(f.onset_strength - grid(env)).max() < 1e-4
    tempo, beats = librosa.beat.beat_track(onset_envelope=env, sr=SR, hop_length=256)
    assert f.tempo == pytest.approx(float(np.atleast_1d(tempo)[0]))
    expected = features.refine_to_attacks(librosa.frames_to_time(beats, sr=SR, hop_length=256), y, SR,
                                       *(2 * [min(0.16, 0.35 * float(np.median(np.diff(beats))) * 256 / SR)]))
    assert np.allclose(f.beat_times, expected, atol=1e-9)
    full = librosa.onset.onset_strength(S=librosa.amplitude_to_db(stft, ref=np.max), sr=SR, hop_length=256)
    peaks = librosa.onset.onset_detect(onset_envelope=full, sr=SR, hop_length=256)  # less held tones' ripples
    kept = (full[peaks] >= features.MIN_ONSET_RISE) | (full[peaks] >= features.STANDOUT * np.median(full))
    onsets = librosa.onset.onset_backtrack(peaks[kept], rms)
    assert np.array_equal(f.onset_times, librosa.frames_to_time(np.unique(onsets), sr=SR, hop_length=256))


def test_median_kernel_is_scipys():
    from scipy.ndimage import median_filter

    median_rows = numba_kernels.fast_kernels()[0]
    rng = np.random.default_rng(0)
    for shape in ((7, 300), (40, 31), (3, 16), (5, 2), (1, 1)):
        x = np.round(rng.random(shape) * 20).astype(np.float32)  # ties
        x[:, : shape[1] // 3] = 0  # runs of silence
        harm, perc = hpss._medians(x, median_rows)
        assert np.array_equal(harm, median_filter(x, size=(31, 1), mode="reflect")), shape
        assert np.array_equal(perc, median_filter(x, size=(1, 31), mode="reflect")), shape


def test_tempo_and_tuning_are_librosas():
    import librosa

    for y in (load_audio(KARISSA, SR, duration=45.0)[0], song(0, 20 * SR, SR)[0]):
        f, _ = spectral._feature_pass(spectral._Reader([y]), len(y), None, SR, 10**9)
        assert audio_beats._tempo(f.percussive, SR) == pytest.approx(
            float(librosa.feature.tempo(onset_envelope=f.percussive, sr=SR, hop_length=256)[0]))
    t = np.arange(10 * SR) / SR
    for cents in (-30, 0, 20):
        y = sum(np.sin(2 * np.pi * 220 * 2 ** (k / 12 + cents / 1200) * t) for k in (0, 4, 7)).astype(np.float32) * 0.2
        mag = np.abs(spectral._stft(np.pad(y, 1024)))
        mine = chroma._tuning(*chroma._pitch_peaks(mag[::2], SR))
        assert mine == pytest.approx(librosa.estimate_tuning(y=y, sr=SR, bins_per_octave=36)), cents


def _run(code: str, *args) -> tuple[float, float, str]:
    """Peak RSS (bytes) and time (s) of a fresh Python running `code` (sys.argv[1:] = args), and its output."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "r = subprocess.run([sys.executable, '-c', *sys.argv[1:]], capture_output=True, text=True)\n"
               "unit = 1 if sys.platform == 'darwin' else 1024  # ru_maxrss: bytes on macOS, KiB on Linux\n"
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit\n"
               "print(r.returncode, peak, time.perf_counter() - t)\n"
               "print(r.stdout + r.stderr, end='')\n")
    r = subprocess.run([sys.executable, "-c", wrapper, code, *map(str, args)], capture_output=True, text=True)
    head, _, output = r.stdout.partition("\n")
    returncode, peak, seconds = head.split()
    assert returncode == "0", output + r.stderr
    return float(peak), float(seconds), output


ANALYZE = "import sys; from mlx_musicviz.cli import main; main(['analyze', *sys.argv[1:]])"
WINDOW = ("import sys; from mlx_musicviz.audio import analyze; from mlx_musicviz.video import soundtrack\n"
          "start = float(sys.argv[2]); f = analyze(sys.argv[1], fps=30, start=start, duration=3.0)\n"
          "y, rate = soundtrack(sys.argv[1], start, 3.0); assert f.n_frames == 90 and y.shape == (1, 3 * rate)\n")


@pytest.mark.slow
def test_a_sixty_minute_song_in_bounded_memory(long_songs):
    """`musicviz-mlx analyze` of the 60-minute MP3 peaks under 1.5 GB (its samples at the analysis rate
    alone are 318 MB, its magnitude STFT 1.3 GB, librosa's tempogram of it 1.7 GB): blocks, two passes."""
    peak, seconds, output = _run(ANALYZE, long_songs["60"])
    print(f"\nanalyze, 60-minute MP3: {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB\n{output.strip()}")
    assert "3603" in output and "tempo 120.2 BPM" in output
    assert peak < 1.5e9


@pytest.mark.slow
def test_window_memory_does_not_grow_with_the_file(long_songs):
    """Analysis and soundtrack of 3 s from minute 50 of the 60-minute song take no more memory than 3 s of
    a 1-minute song (plus 15 %): only the window is decoded."""
    far, far_seconds, _ = _run(WINDOW, long_songs["60"], 3000.0)
    near, near_seconds, _ = _run(WINDOW, long_songs["1"], 30.0)
    print(f"\n3 s window from minute 50 of 60: peak RSS {far / 2**20:.0f} MiB, {far_seconds:.1f} s; "
          f"of a 1-minute file: {near / 2**20:.0f} MiB, {near_seconds:.1f} s")
    assert far < 1.15 * near
