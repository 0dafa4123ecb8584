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


def test_random_sequences_are_librosas():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 150))
        x, k = rng.standard_normal((5, n)), int(rng.integers(1, 10))
        assert np.array_equal(segments.agglomerative(x, k), librosa.segment.agglomerative(x, min(k, n)))
