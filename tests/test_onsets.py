"""Onset peak picking and backtracking equal librosa's onset_detect and onset_backtrack, on the test
recordings' onset envelopes and on random ones with ties."""

import numpy as np
import pytest
from reference import DATA

from mlx_musicviz.audio import load_audio, onsets

librosa = pytest.importorskip("librosa")
SR, HOP = 22050, 256


@pytest.mark.parametrize("path", sorted((DATA / "audio").glob("*.ogg")), ids=lambda p: p.stem[:12])
def test_onsets_of_recordings_are_librosas(path):
    y = load_audio(path, SR, duration=40.0)[0]
    mag = np.abs(librosa.stft(y, n_fft=2048, hop_length=HOP))
    env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(mag, ref=np.max), sr=SR, hop_length=HOP)
    rms = librosa.feature.rms(S=mag)[0]
    mine = onsets.onset_detect(env, SR, HOP)
    theirs = librosa.onset.onset_detect(onset_envelope=env, sr=SR, hop_length=HOP)
    assert len(theirs) > 5 and np.array_equal(mine, theirs)
    assert np.array_equal(onsets.onset_backtrack(mine, rms), librosa.onset.onset_backtrack(theirs, rms))


def test_random_envelopes_with_ties_are_librosas():
    rng = np.random.default_rng(0)
    for i in range(300):
        env = rng.random(int(rng.integers(1, 300))).astype(np.float32) ** 3
        if i % 3 == 0:
            env = np.round(env * 4) / 4  # plateaus and equal peaks
        mine = onsets.onset_detect(env, SR, HOP)
        assert np.array_equal(mine, librosa.onset.onset_detect(onset_envelope=env, sr=SR, hop_length=HOP)), i
        if len(mine):
            energy = np.round(rng.random(len(env)) * 3) if i % 2 else rng.random(len(env))
            assert np.array_equal(onsets.onset_backtrack(mine, energy), librosa.onset.onset_backtrack(mine, energy))


def test_silence_has_no_onsets():
    assert len(onsets.onset_detect(np.zeros(100, np.float32), SR, HOP)) == 0
