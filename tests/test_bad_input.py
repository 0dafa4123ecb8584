"""Bad input to render and its CLI (files, outputs, numbers, windows, sample arrays, prompts, models)
gives one clear line, exit 1 and no file."""

import os

import av
import numpy as np
import pytest
from render_helpers import RATE, TRUMPET, beeps, cli, error_lines, refused, run_cli, wav

from mlx_musicviz import render
from mlx_musicviz.audio import load_audio
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.rendering import RANDOM_WEIGHTS_WARNING
from mlx_musicviz.video import soundtrack


def test_missing_file(tmp_path):
    refused(tmp_path, [str(tmp_path / "nope.mp3"), "-p", "x"], "not found")


def test_empty_file(tmp_path):
    (tmp_path / "empty.ogg").write_bytes(b"")
    refused(tmp_path, [str(tmp_path / "empty.ogg"), "-p", "x"], "empty")


def test_not_audio(tmp_path):
    (tmp_path / "text.mp3").write_text("hello, I am not music\n" * 100)
    refused(tmp_path, [str(tmp_path / "text.mp3"), "-p", "x"], "decode")


def test_truncated_audio_still_renders_what_is_there(tmp_path):
    data = TRUMPET.read_bytes()
    (tmp_path / "cut.ogg").write_bytes(data[: len(data) // 2])
    r = cli("render", str(tmp_path / "cut.ogg"), "-p", "x", "--model", "random:tiny", "--size", "64", "--fps", "6",
            "-o", str(tmp_path / "cut.mp4"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cut.mp4").exists()


def test_shorter_than_one_frame(tmp_path):
    import wave

    with wave.open(str(tmp_path / "short.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
        w.writeframes(b"\0\0" * 100)
    refused(tmp_path, [str(tmp_path / "short.wav"), "-p", "x"], "too short")


def test_output_is_a_folder(tmp_path):
    r = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--size", "64", "-o", str(tmp_path))
    assert r.returncode == 1 and "folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["out.avi", "out.webm", "out.mkv", "out.gif", "out"])
def test_output_named_for_another_container_is_refused(tmp_path, name):
    # it would have been an MP4 under a name that tells players it is something else
    r = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--size", "64", "-o", str(tmp_path / name))
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1 and len(lines) == 1 and ".mp4, .m4v, .mov" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,container", [("clip.mov", "mov"), ("clip.M4V", "mp4")])
def test_mov_and_m4v_outputs_are_written_as_named(tmp_path, name, container):
    y = (0.1 * np.sin(np.arange(11025) / 10)).astype(np.float32)
    result = render((y, 22050), "x", output=tmp_path / name, model="random:tiny", size=64, fps=8)
    head = result.output.read_bytes()[:12]  # the ftyp box names the container: QuickTime or ISO MP4
    assert head[4:8] == b"ftyp" and head[8:12] == (b"qt  " if container == "mov" else b"isom")
    with av.open(str(result.output)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"] and len(list(c.decode(video=0))) == 4


def test_output_folder_missing_or_unwritable(tmp_path):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "missing" / "out.mp4", tmp_path / "file" / "out.mp4", "/proc/out.mp4"):
        r = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--size", "64", "-o", str(target))
        assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith("error: output folder"), r.stderr
        assert "Traceback" not in r.stderr and not os.path.exists(target)


@pytest.mark.parametrize("args,needle", [
    (["--fps", "0"], "fps"), (["--fps", "-5"], "fps"), (["--fps", "nan"], "fps"), (["--size", "100"], "64"),
    (["--size", "128x100"], "multiples of 64"), (["--size", "wide"], "WIDTHxHEIGHT"), (["--size", "64x64x64"], "64"), (["--motion", "1.5"], "motion must be"),
    (["--motion", "nan"], "motion must be"),
    # a negative start or duration would slice from the song's end; crf and seed beyond their ranges
    # reached libx264 and mlx (a traceback) unchecked
    (["--start", "-2"], "start must be"), (["--start", "nan"], "start must be"),
    (["--duration", "-1"], "duration must be"), (["--duration", "0"], "duration must be"),
    (["--crf", "52"], "crf must be"), (["--crf", "-1"], "crf must be"),
    (["--seed", "-1"], "seed must be"), (["--seed", str(2**64)], "seed must be"),
    (["--cadence", "0"], "cadence must be"),
    # beyond any sensible range: 1e308 seconds or fps overflowed int() (a traceback), a huge frame
    # was killed for memory
    (["--fps", "1e308"], "fps must be from 1 to 240"), (["--fps", "241"], "fps must be from 1 to 240"),
    (["--fps", "0.5"], "fps must be from 1 to 240"), (["--start", "1e308"], "audio is too short"),
    (["--size", "64x999999936"], "too large"), (["--size", "1088"], "too large"),
])
def test_bad_numbers(tmp_path, args, needle):
    refused(tmp_path, [str(TRUMPET), "-p", "x", *args], needle)


def test_out_of_memory_is_one_line_naming_the_options_that_lower_it(capsys):
    from mlx_musicviz.cli import friendly_errors

    @friendly_errors
    def command(**options):
        raise MemoryError

    for options, line in (({"batch_size": 2, "size": "512"}, "error: out of memory; try a smaller --batch-size or --size"),
                          ({"size": 512}, "error: out of memory; try a smaller --size"),
                          ({"src": "songs"}, "error: out of memory")):  # mels has neither option
        with pytest.raises(SystemExit) as exit_:
            command(**options)
        assert exit_.value.code == 1 and capsys.readouterr().err.strip() == line


def test_audio_window_is_checked_where_the_audio_is_read():
    """load_audio (the analysis) and soundtrack (the video's audio) refuse the same bad windows."""
    y = (np.zeros(22050, np.float32), 22050)
    for start, duration in ((-1.0, None), (None, -0.5), (float("inf"), None), (0.0, 0.0)):
        for read in (load_audio, soundtrack):
            with pytest.raises(MusicvizError, match="must be"):
                read(y, start=start, duration=duration)
    assert load_audio(y, 22050, start=0.5, duration=0.25)[0].shape == (5512,)
    assert soundtrack(y, 0.5, 0.25)[0].shape == (1, 5512)
    # windows past the end are clipped to the song, however far (no int overflow)
    for start, duration, kept in ((0.5, 1e308, 11025), (1e308, None, 0), (2.0, 1.0, 0), (None, 1e300, 22050)):
        assert load_audio(y, 22050, start=start, duration=duration)[0].shape == (kept,)
        assert soundtrack(y, start, duration)[0].shape == (1, kept)


def test_sample_arrays_of_any_common_type_read_the_same():
    """Integer samples (a WAV reader's int16) are scaled to [-1, 1] for the analysis and the soundtrack
    alike: read as they were, int16 came out clipped at full scale, a square wave."""
    t = np.arange(22050) / 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    pairs = {"float32": tone.astype(np.float32), "float64": tone,
             "int16": np.round(tone * 32767).astype(np.int16), "int32": np.round(tone * (2**31 - 1)).astype(np.int32),
             "uint8": np.round(tone * 127 + 128).astype(np.uint8), "stereo (n, 2)": np.stack([tone, tone], 1),
             "stereo (2, n)": np.stack([tone, tone])}
    for name, samples in pairs.items():
        y, _ = load_audio((samples, 22050), 22050)
        assert np.abs(y - tone).max() < 0.01, name
        track, rate = soundtrack((samples, 22050), None, None)
        assert rate == 22050 and track.shape[1] == 22050 and np.abs(track - tone).max() < 0.01, name
    for samples, rate, needle in ((tone.astype(np.complex64), 22050, "real numbers"), (tone, "fast", "sample rate"),
                                  (tone, 0, "sample rate"), (np.zeros((2, 2, 9)), 22050, "1-D or 2-D")):
        for read in (load_audio, soundtrack):
            with pytest.raises(MusicvizError, match=needle):
                read((samples, rate), None, None) if read is soundtrack else read((samples, rate))


def test_nan_and_infinite_samples_are_silence(tmp_path):
    """A damaged float WAV (NaN and infinite samples) renders, with those samples silent; NaN had
    reached the AAC encoder (an ffmpeg error) and infinity librosa (a traceback)."""
    import soundfile

    y = (0.3 * np.sin(np.arange(22050) * 0.1)).astype(np.float32)
    y[5000:5100], y[9000], y[9001] = np.nan, np.inf, -np.inf
    soundfile.write(tmp_path / "damaged.wav", y, 22050, subtype="FLOAT")
    clean = y.copy()
    clean[~np.isfinite(clean)] = 0
    soundfile.write(tmp_path / "clean.wav", clean, 22050, subtype="FLOAT")
    for damaged, repaired in (((y, 22050), (clean, 22050)), (str(tmp_path / "damaged.wav"), str(tmp_path / "clean.wav"))):
        assert np.array_equal(load_audio(damaged, 22050)[0], load_audio(repaired, 22050)[0])
        (a, rate), (b, _) = soundtrack(damaged, None, None), soundtrack(repaired, None, None)
        # a file's soundtrack is resampled (to 44.1 kHz) before the repair, so the resampler's filter
        # spreads the damage a little: compare away from it (samples 5000 to 9001 at 22.05 kHz)
        near = slice(int(0.2 * rate), int(0.45 * rate))
        a[:, near], b[:, near] = 0, 0
        assert np.array_equal(a, b)
    r = cli("render", str(tmp_path / "damaged.wav"), "-p", "x", "--model", "random:tiny", "--size", "64", "--fps", "4",
            "-o", str(tmp_path / "damaged.mp4"))
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "damaged.mp4")) as c:
        sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert np.isfinite(sound).all() and np.abs(sound).max() > 0.1


def test_empty_prompt(tmp_path):
    refused(tmp_path, [str(TRUMPET), "-p", "  "], "prompt")


def test_missing_model(tmp_path):
    refused(tmp_path, [str(TRUMPET), "-p", "x", "--model", str(tmp_path / "no-model")], "model not found")


def test_long_prompt_warns(tmp_path):
    r = cli("render", str(TRUMPET), "-p", "word " * 100, "--model", "random:tiny", "--size", "64", "--fps", "4",
            "--duration", "1", "-o", str(tmp_path / "long.mp4"))
    assert r.returncode == 0, r.stderr
    assert "truncated" in r.stderr


def test_a_song_that_is_a_video_is_never_overwritten(tmp_path):
    """A song that is itself an .mp4: the default output is NAME-musicviz.mp4, naming the song as the
    output is refused in one line, and the song is left as it was; replacing another existing video
    is said before the render."""
    import hashlib

    song = tmp_path / "song.mp4"
    made = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--size", "64", "--fps", "4",
               "--duration", "1", "-o", str(song))
    assert made.returncode == 0, made.stderr
    digest = hashlib.sha256(song.read_bytes()).hexdigest()
    args = ["-p", "x", "--model", "random:tiny", "--size", "64", "--fps", "4"]
    same = cli("render", str(song), *args, "-o", str(song))
    assert same.returncode == 1 and "is the song itself" in same.stderr.strip().splitlines()[-1], same.stderr
    kept = cli("render", str(song), *args, cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert (tmp_path / "song-musicviz.mp4").is_file()
    again = cli("render", str(song), *args, cwd=tmp_path)
    assert again.returncode == 0 and "warning: song-musicviz.mp4 exists; the new video replaces it" in again.stderr
    assert hashlib.sha256(song.read_bytes()).hexdigest() == digest


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


@pytest.mark.parametrize("args,needle", [(["--scheduler", "nope"], "unknown scheduler 'nope'"),
                                         (["--scheduler", "tcd:"], "no timestep after tcd:"),
                                         (["--scheduler", "tcd:soon"], "must be a whole number, got 'soon'"),
                                         (["--scheduler", "lcm:1000"], "must be from 0 to 999, got 1000"),
                                         (["--steps", "3"], "PNDMScheduler takes one step"),
                                         (["--scheduler", "tcd", "--steps", "2"], "TCDScheduler takes one step"),
                                         (["--scheduler", "lcm", "--steps", "0"], "steps must be a whole number from 1 to 8")])
def test_a_bad_scheduler_is_one_line(tmp_path, args, needle):
    refused(tmp_path, [str(TRUMPET), "-p", "x", *args], needle)
