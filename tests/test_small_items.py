"""Small fixes: converting a random model, checkpoint modes, clear messages for bad input, warnings
said once and at the right time, the README's torch install."""

import os
import re
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from mlx_musicviz import cli, render
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.pipeline import Pipeline, load_pipeline
from mlx_musicviz.rendering import RANDOM_WEIGHTS_WARNING

RATE = 44100
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.random("tiny")


def beeps(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32)


def wav(path: Path, seconds: float) -> str:
    soundfile.write(path, beeps(seconds), RATE)
    return str(path)


def run_cli(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def umask_002():
    """A umask other than the usual 022, so that modes that follow it are told from fixed ones."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_convert_random_tiny_writes_a_checkpoint_with_its_weights_and_plain_modes(tmp_path, umask_002):
    dst = tmp_path / "random-tiny"
    result = run_cli("convert", "random:tiny", dst)
    assert result.exit_code == 0, result.output
    loaded, random = load_pipeline(dst), load_pipeline("random:tiny")
    assert loaded.record["source"] == "random:tiny" and loaded.is_random
    latents = mx.random.normal(random.latent_shape(64, 64, 2), key=mx.random.key(3))
    for vae in ("tiny", "large"):
        expected = np.array(random.generate(latents, random.encode_prompt("a red fox"), vae))
        assert np.array_equal(np.array(loaded.generate(latents, loaded.encode_prompt("a red fox"), vae)), expected)
    # as a plain mkdir / open with umask 002 makes them (mkdtemp made the checkpoint 0700)
    for folder, _, files in os.walk(dst):
        assert os.stat(folder).st_mode & 0o777 == 0o775, folder
        for name in files:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o664, name


def test_a_start_past_the_end_says_so_and_names_the_length(tmp_path, pipe):
    with pytest.raises(MusicvizError) as e:
        render((beeps(1.5), RATE), "x", output=tmp_path / "v.mp4", pipeline=pipe, size=64, start=7)
    assert "start 7 s is past the end of the song" in str(e.value) and "1.500 s long" in str(e.value)
    song = wav(tmp_path / "song.wav", 1.25)
    result = run_cli("render", song, "-p", "x", "--model", "random:tiny", "--size", "64", "--start", "3",
                     "-o", tmp_path / "v.mp4")
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert "past the end" in line and "1.250 s long" in line, line
    # a start inside the song but less than a frame before its end is still "less than one frame"
    with pytest.raises(MusicvizError, match="less than one frame"):
        render((beeps(1.5), RATE), "x", output=tmp_path / "v.mp4", pipeline=pipe, size=64, start=1.49)


def test_a_window_the_songs_end_cuts_short_is_said_and_counts_read_right(tmp_path, pipe):
    result = render((beeps(1.5), RATE), "x", output=tmp_path / "v.mp4", pipeline=pipe, size=64, fps=8, start=0.5,
                    duration=4)
    assert result.frames == 8
    assert "the song ends 1.00 s after the start: the window is that long, not 4 s" in result.warnings
    full = render((beeps(1.5), RATE), "x", output=tmp_path / "w.mp4", pipeline=pipe, size=64, fps=8, duration=1.5)
    assert not [w for w in full.warnings if "song ends" in w]
    song = wav(tmp_path / "song.wav", 1.5)
    out = run_cli("analyze", song, "--start", "0.5", "--duration", "4")
    assert out.exit_code == 0 and "warning: the song ends 1.00 s after the start" in out.output
    assert "song ends" not in run_cli("analyze", song, "--duration", "1.5").output
    late = run_cli("analyze", song, "--start", "5")
    assert late.exit_code == 1 and "start 5 s is past the end of the song, which is 1.500 s long" in late.output
    live = run_cli("analyze", song, "--live", "--start", "0.5")
    assert live.exit_code == 2 and "drop --start and --duration" in live.output
    from mlx_musicviz.audio import counted

    assert (counted(1, "onset"), counted(0, "onset"), counted(2, "beat")) == ("1 onset", "0 onsets", "2 beats")


@pytest.fixture(scope="module")
def long_prompt_render(tmp_path_factory, pipe):
    out = tmp_path_factory.mktemp("long") / "long.mp4"
    return render((beeps(0.25), RATE), "a cat " * 1700, output=out, pipeline=pipe, size=64, fps=8)


def test_a_long_prompt_warns_once_naming_how_many_prompts_were_cut(long_prompt_render):
    cut = [w for w in long_prompt_render.warnings if "truncated" in w]
    assert len(cut) == 1 and cut[0].startswith("13 of the 13 prompts are longer than 75 tokens"), cut


def test_random_weights_are_in_the_results_warnings(long_prompt_render, tmp_path):
    assert RANDOM_WEIGHTS_WARNING in long_prompt_render.warnings
    trained = Pipeline.random("tiny")
    trained.record = {"source": str(tmp_path / "a-trained-model")}  # what a converted checkpoint's record says
    real = render((beeps(0.25), RATE), "x", output=tmp_path / "real.mp4", pipeline=trained, size=64, fps=8)
    assert RANDOM_WEIGHTS_WARNING not in real.warnings


def test_the_random_warning_is_said_after_the_render_not_before_an_input_error(tmp_path):
    song = wav(tmp_path / "song.wav", 0.25)
    bad = run_cli("render", song, "-p", "x", "--model", "random:tiny", "--size", "64", "-o", tmp_path / "v.avi")
    assert bad.exit_code == 1 and len(error_lines(bad)) == 1
    assert "random weights" not in bad.stderr, bad.stderr
    good = run_cli("render", song, "-p", "x", "--model", "random:tiny", "--size", "64", "--fps", "8",
                   "-o", tmp_path / "v.mp4")
    assert good.exit_code == 0, good.output
    assert good.stderr.count(f"warning: {RANDOM_WEIGHTS_WARNING}") == 1, good.stderr
    assert good.stderr.index("random weights") > good.stderr.index("frames"), good.stderr  # after the progress


def test_note_prompts_naming_a_folder_is_one_line_and_exit_1(tmp_path):
    song = wav(tmp_path / "song.wav", 0.25)
    result = run_cli("render", song, "-p", "x", "--model", "random:tiny", "--note-prompts", tmp_path,
                     "-o", tmp_path / "v.mp4")
    assert result.exit_code == 1, result.output
    [line] = error_lines(result)
    assert f"cannot read note prompts from {tmp_path}" in line, line


@pytest.mark.parametrize("change, needle", [
    ({"fps": "30"}, "fps must be a number (frames per second), not str '30'"),
    ({"audio": beeps(0.5)}, "audio must be a file's path or a (samples, sample_rate) pair, not an array of shape"),
    ({"prompt": 5}, "the prompt must be text (a str), not int"),
])
def test_api_inputs_of_the_wrong_type_are_one_clear_error(tmp_path, pipe, change, needle):
    args = {"audio": (beeps(0.5), RATE), "prompt": "x", "fps": 8, **change}
    with pytest.raises(MusicvizError) as e:
        render(args.pop("audio"), args.pop("prompt"), output=tmp_path / "v.mp4", pipeline=pipe, size=64, **args)
    assert needle in str(e.value)


def test_mels_of_a_file_shorter_than_the_fft_warns_nothing(tmp_path):
    (tmp_path / "songs").mkdir()
    wav(tmp_path / "songs" / "short.wav", 1500 / RATE)  # the default preset's n_fft is 4096
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli("mels", tmp_path / "songs", tmp_path / "tiles")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "tiles").iterdir()] == ["short_0000.png"]
    assert not [str(w.message) for w in caught if "n_fft" in str(w.message)]
    assert "n_fft" not in result.stderr


def test_readme_installs_the_pinned_torch_from_the_cpu_index():
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"pip install torch==(\S+)([^`\n]*)", readme)
    assert commands, "the README names no torch install"
    for version, rest in commands:
        assert version == pin and "--index-url https://download.pytorch.org/whl/cpu" in rest, (version, rest)


def test_api_progress_and_sample_rates_that_cannot_work_are_one_line(tmp_path):
    """A progress that is not a function, a (rate, samples) pair the wrong way round and a rate that is
    not a whole number are refused before any work, in one line (no array dumped into it)."""
    y = np.zeros(22050, np.float32)
    for kwargs, audio, needle in ((dict(progress=False), (y, 22050), "progress must be a function"),
                                  ({}, (22050, y[None]), "got an array of shape (1, 22050)"),
                                  ({}, (y, 44100.5), "got 44100.5")):
        with pytest.raises(MusicvizError) as e:
            render(audio, "x", output=tmp_path / "v.mp4", model="random:tiny", size=64, **kwargs)
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "v.mp4").exists()
