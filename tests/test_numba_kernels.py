"""numpy's analysis kernels (a process's first short clip's, with no numba start-up) give numba's values: the HPSS median
filters and soft masks bit for bit, the beat tracker's score and programme bit for bit, and so the same
features of a whole analysis."""

import numpy as np
import pytest
from reference import DATA

from mlx_musicviz.audio import analyze, beats, hpss, load_audio, numba_kernels

KARISSA = DATA / "audio" / "Karissa_Hobbs_-_Lets_Go_Fishin.ogg"


def test_median_filters_and_masks_match():
    from scipy.ndimage import median_filter

    fast = numba_kernels.fast_kernels()
    rng = np.random.default_rng(0)
    for shape in ((7, 300), (40, 31), (3, 16), (200, 1025), (5, 4)):
        x = np.round(rng.random(shape) * 20).astype(np.float32)  # ties
        x[:, : shape[1] // 3] = 0  # runs of silence
        for transposed in (False, True):
            mine, theirs = (np.zeros(shape[::-1] if transposed else shape, np.float32) for _ in range(2))
            hpss._median_rows_np(x, hpss.KERNEL, mine, transposed)
            fast[0](x, hpss.KERNEL, theirs, transposed)
            assert np.array_equal(mine, theirs), (shape, transposed)
        assert np.array_equal(mine.T, median_filter(x, size=(1, hpss.KERNEL), mode="reflect"))
        harm, perc = x, np.round(rng.random(shape) * 20).astype(np.float32)
        masks = [np.zeros(shape, np.float32) for _ in range(4)]
        hpss._soft_masks_np(harm, perc, masks[0], masks[1])
        fast[1](harm, perc, masks[2], masks[3])
        assert np.array_equal(masks[0], masks[2]) and np.array_equal(masks[1], masks[3])


def test_beat_loops_match():
    from mlx_musicviz.audio import spectral

    y = load_audio(KARISSA, 22050, duration=30.0)[0]
    f, _ = spectral._feature_pass(spectral._Reader([y]), len(y), None, 22050, 10**9)
    fast = numba_kernels.fast_kernels()
    env = (f.percussive / f.percussive.std(ddof=1)).astype(np.float64)
    for period in (43.0, 30.0, 61.0):
        mine, theirs = np.zeros(len(env)), np.zeros(len(env))
        beats._beat_local_score_np(env, period, mine)
        fast[2](env, period, theirs)
        assert np.array_equal(mine, theirs), period
        links, cumulative = [np.zeros(len(env), np.int32) for _ in range(2)], [np.zeros(len(env)) for _ in range(2)]
        beats._beat_dp_np(mine, period, np.float32(100.0), links[0], cumulative[0])
        fast[3](mine, period, np.float32(100.0), links[1], cumulative[1])
        assert np.array_equal(links[0], links[1]) and np.array_equal(cumulative[0], cumulative[1]), period


@pytest.mark.parametrize("start, seconds", [(20.0, 10.0), (0.0, 29.0)])
def test_analysis_with_either_kernels_is_the_same(monkeypatch, start, seconds):
    numba_kernels.fast_kernels()
    with_numba = analyze(KARISSA, fps=30, start=start, duration=seconds)
    monkeypatch.setattr(numba_kernels, "_KERNELS", None)  # as in a fresh process
    monkeypatch.setattr(numba_kernels, "_FIRST", True)
    with_numpy = analyze(KARISSA, fps=30, start=start, duration=seconds)
    assert numba_kernels._KERNELS is None and not numba_kernels._FIRST  # numba was not loaded; next time it is
    assert with_numba.tempo == with_numpy.tempo and len(with_numba.beat_times) > 10
    for name in ("beat_times", "onset_times", "loudness", "mel_power", "onset_strength", "chroma", "section_times"):
        assert np.array_equal(getattr(with_numba, name), getattr(with_numpy, name)), name
