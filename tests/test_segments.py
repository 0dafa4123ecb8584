"""Sections: the MFCC sequence and Ward clustering into contiguous segments equal librosa's mfcc and
segment.agglomerative (scikit-learn's clustering), on the test recordings and on random data."""

import numpy as np
import pytest
from reference import DATA

from mlx_musicviz.audio import load_audio, segments

librosa = pytest.importorskip("librosa")


@pytest.mark.parametrize("path", sorted((DATA / "audio").glob("*.ogg")), ids=lambda p: p.stem[:12])
def test_sections_of_recordings_are_librosas(path):
    mel = librosa.feature.melspectrogram(y=load_audio(path, 22050)[0], sr=22050, n_fft=2048, hop_length=256)
    for pool in (3, 8):
        pooled = np.add.reduceat(mel, np.arange(0, mel.shape[1], pool), axis=1)
        mine = segments.mfcc_sequence(pooled)
        theirs = librosa.util.normalize(librosa.feature.mfcc(S=librosa.power_to_db(pooled), n_mfcc=13), axis=1)
        assert np.abs(mine - theirs).max() < 1e-5
        for k in (2, 4, 8):
            assert np.array_equal(segments.agglomerative(mine, k), librosa.segment.agglomerative(theirs, k)), (pool, k)


def test_random_sequences_are_librosas_ties_too():
    """Random columns, and columns with equal merge costs (repeats, few values, periods, constants: a
    steady tone's MFCCs), where the order the heap breaks ties in decides the segments."""
    rng = np.random.default_rng(1)
    assert np.array_equal(segments.agglomerative(np.zeros((1, 5)), 2), [0, 2])
    for i in range(500):
        n, k = int(rng.integers(2, 120)), int(rng.integers(1, 9))
        x = [rng.standard_normal((5, n)), rng.integers(0, 3, (3, n)).astype(float),
             np.tile(rng.standard_normal((3, int(rng.integers(1, 6)))), (1, n))[:, :n],
             np.where(rng.random((2, n)) < 0.05, 1.0, 0.0), np.round(rng.standard_normal((13, n)), 1)][i % 5]
        assert np.array_equal(segments.agglomerative(x, k), librosa.segment.agglomerative(x, min(k, n))), (i, n, k)
