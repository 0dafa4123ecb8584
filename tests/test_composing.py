"""compose: consecutive generated tiles, each held to the one before, joined and inverted into one file;
the seams measured by spectral flux against the tiles' insides."""

import numpy as np
import pytest
import soundfile as sf
from render_helpers import error_lines, run_cli

from mlx_musicviz import load_pipeline
from mlx_musicviz.composing import compose, join_tiles, seam_flux
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.spectrogram import PRESETS


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("random:tiny")


def test_twelve_seconds_are_one_file_and_the_seams_are_no_rougher_than_the_tiles(tiny, tmp_path):
    """12 s from random:tiny: one file of exactly 12 s at 44.1 kHz, 3 tiles, peak -1 dBFS; the spectral
    flux over the seams is no larger than within the tiles, while tiles set side by side (overlap 0)
    give seams rougher than their insides (the measure sees a seam)."""
    p = PRESETS["default"]
    flux = {}
    for overlap in (64, 0):
        result = compose("a piano", tmp_path / f"o{overlap}.wav", pipeline=tiny, seconds=12, overlap=overlap,
                         iterations=32)
        y, rate = sf.read(result.output, dtype="float32")
        assert rate == 44100 and len(y) == 12 * 44100 and y.ndim == 1
        assert abs(20 * np.log10(np.abs(y).max()) + 1) < 0.01
        flux[overlap] = seam_flux(y, p, result.seams)
        print(f"overlap {overlap}: {result.tiles} tiles, seams at {[round(a, 2) for a, _ in result.seams]} s; "
              f"flux at the seams {flux[overlap][0]:.3f} dB, within the tiles {flux[overlap][1]:.3f} dB")
    assert result.tiles == 3 and len(result.seams) == 2
    assert flux[64][0] <= flux[64][1]
    assert flux[0][0] > 1.1 * flux[0][1]


def test_each_tile_is_held_to_the_one_before(tiny):
    """The second tile's first latent column is the first tile's at the same time, exactly; across the
    overlap it fades to its own content, which starts from the same noise (so it is alike: the last
    overlap column, 7/8 its own, still correlates), and beyond the overlap it is unrelated. The joined
    spectrogram holds the overlap once."""
    from mlx_musicviz.composing import generate_latents

    p = PRESETS["default"]
    a, b = (np.array(x)[0] for x in generate_latents(tiny, "a violin", 2, p, overlap=64))
    assert a.shape == (64, 64, 4) and np.array_equal(b[:, 0], a[:, -8])

    def corr(x, y):
        return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])

    print(f"correlation with the first tile: last overlap column {corr(b[:, 7], a[:, -1]):.3f}, "
          f"beyond the overlap {corr(b[:, 20:28], a[:, 20:28]):.3f}")
    assert corr(b[:, 7], a[:, -1]) > 0.5 and abs(corr(b[:, 20:28], a[:, 20:28])) < 0.2
    a, b = np.random.default_rng(0).random((2, 4, 16))
    joined, starts = join_tiles([a, b], 4)
    assert joined.shape == (4, 28) and starts == [12]
    assert np.allclose(joined[:, :12], a[:, :12]) and np.allclose(joined[:, 16:], b[:, 4:])
    assert np.allclose(joined[:, 12], a[:, 12]) and np.allclose(joined[:, 13], a[:, 13] * 3 / 4 + b[:, 1] / 4)


def test_the_api_and_bad_input(tmp_path):
    import mlx_musicviz

    assert mlx_musicviz.compose is compose
    out = str(tmp_path / "x.wav")
    cases = [
        (["-o", str(tmp_path / "x.mp3")], "must end in .wav or .flac"),
        (["-o", out, "--seconds", "0"], "seconds must be at least 0.09 (one 4096-sample window)"),
        (["-o", out, "--seconds", "0.05"], "seconds must be at least 0.09"),
        (["-o", out, "--preset", "riffusion", "--seconds", "0.2"], "seconds must be at least 0.40"),
        (["-o", out, "--overlap", "12"], "multiple of 8"),
        (["-o", out, "--iterations", "0"], "iterations must be at least 1"),
        (["-o", out, "--lora", str(tmp_path / "none.safetensors")], "not found"),
        (["-o", str(tmp_path / "missing" / "x.wav")], "does not exist"),
    ]
    for args, message in cases:
        result = run_cli("compose", "-p", "a cello", "--model", "random:tiny", *args)
        lines = error_lines(result)
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], (args, result.stderr[-400:])
    with pytest.raises(MusicvizError, match="seconds must be a number, got str '3'"):
        compose("a cello", out, "random:tiny", seconds="3")
    result = run_cli("compose", "-p", " ", "--model", "random:tiny", "-o", out)
    assert result.exit_code == 1 and "the prompt is empty" in error_lines(result)[0]
    assert not list(tmp_path.iterdir())
