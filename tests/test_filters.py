"""The analysis's numpy stand-ins for librosa's windows, filter banks and conversions equal librosa's
(bit for bit where the arithmetic is the same; the CQT wavelets to float32 rounding), and a fresh process
analyses a clip without importing librosa, scipy, scikit-learn or numba."""

import subprocess
import sys

import numpy as np
import pytest
from reference import DATA

from mlx_musicviz.audio import filters

librosa = pytest.importorskip("librosa")


def test_hann_is_scipys():
    from scipy.signal import get_window

    for n in (1, 2, 37, 689, 2048):
        assert np.array_equal(filters.hann(n), get_window("hann", n)), n


@pytest.mark.parametrize("sr, n_fft", [(22050, 2048), (44100, 4096), (16000, 1024), (48000, 1024)])
def test_mel_and_chroma_filters_are_librosas(sr, n_fft):
    assert np.array_equal(filters.mel(sr, n_fft), librosa.filters.mel(sr=sr, n_fft=n_fft))
    assert np.array_equal(filters.chroma(sr, n_fft), librosa.filters.chroma(sr=sr, n_fft=n_fft))


@pytest.mark.parametrize("tuning", [0.0, -0.31, 0.17])
def test_cqt_filters_are_librosas(tuning):
    from librosa.core import constantq

    assert filters.C1 == librosa.note_to_hz("C1")
    fmin = filters.C1 * 2.0 ** (tuning / 36)
    freqs = filters.cqt_frequencies(252, fmin, 36)
    assert np.array_equal(freqs, librosa.interval_frequencies(n_bins=252, fmin=fmin, intervals="equal",
                                                              bins_per_octave=36))
    alpha = filters.relative_bandwidth(freqs)
    assert np.array_equal(alpha, librosa.filters._relative_bandwidth(freqs=freqs))
    for sr in (22050, 5512.5):
        lengths, cutoff = filters.wavelet_lengths(freqs, sr, alpha)
        theirs = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, window="hann", gamma=0, alpha=alpha)
        assert np.array_equal(lengths, theirs[0]) and cutoff == theirs[1]
    vqt_filter_fft = getattr(constantq, "__vqt_filter_fft")
    for octave, sr in ((slice(-36, None), 22050), (slice(-108, -72), 11025 / 4)):
        mine, n_fft = filters.wavelet_basis_fft(freqs[octave], sr, alpha[octave])
        theirs, their_n_fft, _ = vqt_filter_fft(sr, freqs[octave], 1, 1, 0.01, window="hann", gamma=0,
                                                dtype=np.complex64, alpha=alpha[octave])
        theirs = theirs.toarray()
        assert n_fft == their_n_fft and mine.dtype == theirs.dtype
        assert np.array_equal(mine != 0, theirs != 0)  # the same entries dropped as too small
        assert np.abs(mine - theirs).max() <= 1e-6 * np.abs(theirs).max()
    assert np.array_equal(filters.cq_to_chroma(252, 36),
                          librosa.filters.cq_to_chroma(252, bins_per_octave=36, fmin=filters.C1))


def test_cqt_chroma_is_librosas():
    from mlx_musicviz.audio import chroma, load_audio

    y = load_audio(DATA / "audio" / "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).ogg",
                   22050, start=3.0, duration=12.0)[0]
    for tuning in (0.0, -0.2):
        mine = chroma._CQTChroma(22050, 256, tuning)(y)
        theirs = librosa.feature.chroma_cqt(y=y, sr=22050, hop_length=256, tuning=tuning)
        assert mine.shape == theirs.shape
        assert np.abs(mine - theirs).max() < 1e-4, tuning


def test_conversions_are_librosas():
    rng = np.random.default_rng(0)
    power = rng.random((128, 60)) ** 4 * 100
    assert np.array_equal(filters.power_to_db(power), librosa.power_to_db(power))
    x = (rng.random((12, 50)) - 0.3).astype(np.float32)
    x[:, 3] = 0  # a silent column stays as it is
    assert np.array_equal(filters.normalize_peak(x, axis=0), librosa.util.normalize(x, norm=np.inf, axis=0))
    assert np.array_equal(filters.normalize_peak(x, axis=1), librosa.util.normalize(x, norm=np.inf, axis=1))
    from scipy.fft import dct

    assert np.abs(filters.dct_ortho(128, 13) @ power - dct(power, axis=0, norm="ortho")[:13]).max() < 1e-9 * power.max()
    assert np.array_equal(filters.frames_to_time(np.arange(9), 22050, 256),
                          librosa.frames_to_time(np.arange(9), sr=22050, hop_length=256))
    y = rng.standard_normal(30001).astype(np.float32)
    for orig, target, scale in ((44100, 22050, False), (48000, 22050, False), (2, 1, True), (16000, 22050, False)):
        mine = filters.resample(y, orig, target, scale=scale)
        assert np.array_equal(mine, librosa.resample(y, orig_sr=orig, target_sr=target, res_type="soxr_hq",
                                                     scale=scale))


def test_a_fresh_process_analyses_a_clip_without_librosa_scipy_or_numba():
    """A clip of one analysis block (here 10 s) is analysed with numpy's kernels and filters: none of the
    heavy imports (librosa, scipy, scikit-learn, numba) that cost a fresh process seconds."""
    code = ("import sys; from mlx_musicviz.audio import analyze\n"
            "f = analyze(sys.argv[1], fps=24, start=20.0, duration=10.0)\n"
            "assert f.n_frames == 240 and len(f.beat_times) > 10 and len(f.onset_times) > 10\n"
            "print(' '.join(m for m in ('librosa', 'scipy', 'sklearn', 'numba') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code, str(DATA / "audio" / "Karissa_Hobbs_-_Lets_Go_Fishin.ogg")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported: {r.stdout.strip()}"
