"""End to end: song + prompt -> MP4 with a random-weight model; bad inputs give one line and no file."""

import os
import subprocess
import sys

import av
import mlx.core as mx
import numpy as np
import pytest
from reference import SHARED

from mlx_musicviz import render
from mlx_musicviz.audio import load_audio
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.rendering import frame_size
from mlx_musicviz.video import soundtrack
from mlx_musicviz.walkers import default_note_prompts, note_prompts_text, read_note_prompts

TRUMPET = SHARED / "data" / "audio" / "sorohanro_-_solo-trumpet-06.ogg"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "trumpet.mp4"
    return render(str(TRUMPET), "a trumpet in neon light", output=out, model="random:tiny", size=64, fps=12,
                  batch_size=4)


def test_mp4_streams_and_duration(rendered):
    assert rendered.output.exists()
    with av.open(str(rendered.output)) as c:
        video, audio = c.streams.video, c.streams.audio
        assert len(video) == 1 and len(audio) == 1
        assert video[0].codec_context.name == "h264" and audio[0].codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert abs(len(frames) - round(rendered.duration * 12)) <= 1
    assert len(frames) == rendered.frames
    assert abs(len(frames) / 12 - rendered.duration) <= 1 / 12


def test_frames_move(rendered):
    """Consecutive frames change: the video moves. (Random weights saturate the one-step output,
    so this cannot show beat sync at the pixel level; the walkers' tests check the walk itself.)"""
    with av.open(str(rendered.output)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)])
    diffs = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    assert diffs.max() > 0.05 and (diffs > 0).mean() > 0.5


def test_same_seed_same_frames(tmp_path):
    y = (0.1 * np.sin(np.arange(22050) / 10)).astype(np.float32)
    a = render((y, 22050), "x", output=tmp_path / "a.mp4", model="random:tiny", size=64, fps=8)
    b = render((y, 22050), "x", output=tmp_path / "b.mp4", model="random:tiny", size=64, fps=8)

    def frames(p):
        with av.open(str(p)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

    assert np.array_equal(frames(a.output), frames(b.output))


def _bad(tmp_path, args, needle):
    target = tmp_path / "out.mp4"
    model = [] if "--model" in args else ["--model", "random:tiny"]
    size = [] if "--size" in args else ["--size", "64"]
    r = cli("render", *args, *model, *size, "-o", str(target))
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial.mp4")]


def test_missing_file(tmp_path):
    _bad(tmp_path, [str(tmp_path / "nope.mp3"), "-p", "x"], "not found")


def test_empty_file(tmp_path):
    (tmp_path / "empty.ogg").write_bytes(b"")
    _bad(tmp_path, [str(tmp_path / "empty.ogg"), "-p", "x"], "empty")


def test_not_audio(tmp_path):
    (tmp_path / "text.mp3").write_text("hello, I am not music\n" * 100)
    _bad(tmp_path, [str(tmp_path / "text.mp3"), "-p", "x"], "decode")


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
    _bad(tmp_path, [str(tmp_path / "short.wav"), "-p", "x"], "too short")


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
    _bad(tmp_path, [str(TRUMPET), "-p", "x", *args], needle)


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
    _bad(tmp_path, [str(TRUMPET), "-p", "  "], "prompt")


def test_missing_model(tmp_path):
    _bad(tmp_path, [str(TRUMPET), "-p", "x", "--model", str(tmp_path / "no-model")], "model not found")


def test_long_prompt_warns(tmp_path):
    r = cli("render", str(TRUMPET), "-p", "word " * 100, "--model", "random:tiny", "--size", "64", "--fps", "4",
            "--duration", "1", "-o", str(tmp_path / "long.mp4"))
    assert r.returncode == 0, r.stderr
    assert "truncated" in r.stderr


def test_frames_wider_than_tall(tmp_path):
    """--size WIDTHxHEIGHT: a 2:1 video, frames and stream alike (the model's non-square case is
    compared with diffusers in test_pipeline)."""
    r = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--size", "128x64", "--fps", "4",
            "--duration", "2", "-o", str(tmp_path / "wide.mp4"))
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "wide.mp4")) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (128, 64)
    frames = _frames(tmp_path / "wide.mp4")
    assert frames.shape == (8, 64, 128, 3)
    assert frame_size((192, 64)) == frame_size("192x64") == (192, 64) and frame_size(512) == (512, 512)
    for bad in (512.5, "64x", (64, 96), None):
        with pytest.raises(MusicvizError, match="not supported"):
            frame_size(bad)


def _frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_note_prompt_file(tmp_path):
    """`note-prompts` writes the prompts render derives; render reads them back with --note-prompts
    (same video), and an edited file, another beat grid or less motion changes the video."""
    made = cli("note-prompts", "-p", "a trumpet in neon light")
    assert made.returncode == 0, made.stderr
    assert read_note_prompts_text(tmp_path, made.stdout) == default_note_prompts("a trumpet in neon light")
    (tmp_path / "notes.txt").write_text(made.stdout)
    (tmp_path / "edited.txt").write_text(made.stdout.replace("hues", "shapes, a dragon"))
    common = [str(TRUMPET), "-p", "a trumpet in neon light", "--model", "random:tiny", "--size", "64", "--fps", "6",
              "--duration", "3"]
    runs = {"plain": [], "file": ["--note-prompts", str(tmp_path / "notes.txt")],
            "edited": ["--note-prompts", str(tmp_path / "edited.txt")], "whole": ["--beat-grid", "whole"],
            "calm": ["--motion", "0.05"]}
    frames = {}
    for name, extra in runs.items():
        r = cli("render", *common, *extra, "-o", str(tmp_path / f"{name}.mp4"))
        assert r.returncode == 0, r.stderr
        frames[name] = _frames(tmp_path / f"{name}.mp4").astype(float)
    assert np.array_equal(frames["plain"], frames["file"])
    for changed in ("edited", "whole", "calm"):  # random weights saturate the pixels: small but certain differences
        per_frame = np.abs(frames["plain"] - frames[changed]).mean(axis=(1, 2, 3))
        assert (per_frame > 0.1).mean() > 0.5, per_frame  # measured: 0.4-1.1 in every frame


def read_note_prompts_text(tmp_path, text):
    (tmp_path / "prompts.txt").write_text(text)
    return read_note_prompts(tmp_path / "prompts.txt")


def test_note_prompt_file_format(tmp_path):
    plain = [f"prompt {i}" for i in range(12)]
    assert read_note_prompts_text(tmp_path, "\n".join(plain)) == plain
    assert read_note_prompts_text(tmp_path, note_prompts_text(plain)) == plain
    commented = "# my notes\n\n" + "\n\n".join(f"  {p}  " for p in plain) + "\n# end\n"
    assert read_note_prompts_text(tmp_path, commented) == plain
    # a colon that is not a note label belongs to the prompt
    assert read_note_prompts_text(tmp_path, "\n".join(["city: night"] + plain[1:]))[0] == "city: night"
    for text, needle in (("\n".join(plain[:11]), "found 11"), ("\n".join(plain + ["x"]), "found 13"),
                         (note_prompts_text(plain).replace("C#:", "D:"), "the prompt for C# is labelled D"),
                         (note_prompts_text(plain).replace("G: prompt 7", "G:  "), "the prompt for G is empty")):
        with pytest.raises(MusicvizError, match=needle):
            read_note_prompts_text(tmp_path, text)
    (tmp_path / "bom.txt").write_text(note_prompts_text(plain), encoding="utf-8-sig")  # as Windows editors save
    assert read_note_prompts(tmp_path / "bom.txt") == plain
    (tmp_path / "utf16.txt").write_bytes("\n".join(plain).encode("utf-16"))
    for path in (tmp_path / "utf16.txt", tmp_path / "missing.txt"):
        with pytest.raises(MusicvizError, match="cannot read note prompts"):
            read_note_prompts(path)


def test_bad_prompt_files_and_prompts(tmp_path):
    (tmp_path / "two.txt").write_text("a\nb\n")
    _bad(tmp_path, [str(TRUMPET), "-p", "x", "--note-prompts", str(tmp_path / "two.txt")], "need 12 note prompts")
    _bad(tmp_path, [str(TRUMPET), "-p", "x", "--note-prompts", str(tmp_path / "none.txt")], "cannot read")
    _bad(tmp_path, [str(TRUMPET), "-p", "x", "--section-prompt", "a", "--section-prompt", " "], "section prompt is empty")
    with pytest.raises(MusicvizError, match="note prompt is empty"):
        render(str(TRUMPET), "x", output=tmp_path / "x.mp4", model="random:tiny", size=64,
               note_prompts=["a"] * 11 + [""])
    r = cli("note-prompts", "-p", " ")
    assert r.returncode == 1 and r.stderr.startswith("error: the prompt is empty")


def test_interrupt_leaves_no_file(tmp_path):
    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render(str(TRUMPET), "x", output=tmp_path / "x.mp4", model="random:tiny", size=64, fps=4, progress=stop)
    assert os.listdir(tmp_path) == []


def test_cli_help_and_version():
    for args in (["--help"], ["render", "--help"], ["convert", "--help"], ["demo", "--help"], ["note-prompts", "--help"],
                 ["preview", "--help"], ["--version"]):
        r = cli(*args)
        assert r.returncode == 0
    assert "Examples" in cli("render", "--help").stdout


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_song(tmp_path):
    """A 60 s render holds no more than a 10 s one (within 15%): frames stream to the encoder."""
    song = SHARED / "data" / "audio" / "Karissa_Hobbs_-_Lets_Go_Fishin.ogg"
    peaks = {}
    for seconds in (10, 60):
        r = render(str(song), "a river at dawn", output=tmp_path / f"{seconds}.mp4", model="random:tiny", size=64,
                   fps=6, duration=seconds, batch_size=4)
        assert r.frames == round(seconds * 6)
        peaks[seconds] = r.peak_memory
    print(f"mlx peak memory: 10 s {peaks[10] / 2**20:.1f} MiB, 60 s {peaks[60] / 2**20:.1f} MiB")
    assert peaks[60] <= 1.15 * peaks[10]


def test_video_frames_follow_the_beat_walk(tmp_path):
    """With a pass-through model (frame = the walk's latents seen as RGB, no network, so nothing
    saturates), the change between consecutive video frames follows the noise walk's angular speed
    on a 120 BPM click track: eased steps from beat to beat, still at the beats themselves.
    The random-weight model cannot show this (its one-step output saturates)."""
    from mlx_musicviz.pipeline import Pipeline, to_uint8
    from mlx_musicviz.walkers import NoiseWalkConfig, angle_schedule

    sr, fps, bpm = 22050, 12, 120
    y = np.zeros(sr * 8, dtype=np.float32)
    for t in np.arange(0.25, 8, 60 / bpm):
        i = int(t * sr)
        y[i:i + 400] += np.random.default_rng(int(t * 100)).standard_normal(400).astype(np.float32) * np.hanning(400)
    pipe = Pipeline.random("tiny")

    def pass_through(latents, vae="tiny"):
        rgb = mx.repeat(mx.repeat(latents[..., :3], 8, axis=1), 8, axis=2)
        return to_uint8(mx.clip(rgb * 0.3, -1, 1))

    pipe.denoise = lambda latents, prompt_embeds: latents
    pipe.decode = pass_through
    walk = NoiseWalkConfig(regional=False)
    result = render((y, sr), "x", output=tmp_path / "walk.mp4", pipeline=pipe, size=64, fps=fps, noise=walk, crf=4)
    with av.open(str(result.output)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)])
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))

    from mlx_musicviz import analyze

    features = analyze((y, sr), fps=fps)
    speed = np.abs(np.diff(angle_schedule(features, walk)))
    r = np.corrcoef(change, speed[: len(change)])[0, 1]
    beats = features.frame_of(features.beat_times)
    beats = beats[(beats > 0) & (beats < len(change))]
    mid = np.clip(beats + round(fps * 60 / bpm / 2), 0, len(change) - 1)
    print(f"frame change vs walk speed: r = {r:.3f}; at beats {change[beats - 1].mean():.2f}, "
          f"mid-beat {change[mid - 1].mean():.2f}")
    assert r > 0.9
    assert change[mid - 1].mean() > 2 * change[beats - 1].mean()


def test_outputs_get_the_mode_of_a_plain_open(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the finished file must not stay private."""
    from mlx_musicviz.files import atomic_output

    with atomic_output(tmp_path / "x.bin") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"1")
    with open(tmp_path / "plain.bin", "wb") as f:
        f.write(b"1")
    assert os.stat(tmp_path / "x.bin").st_mode & 0o777 == os.stat(tmp_path / "plain.bin").st_mode & 0o777
    # The video writer finishes its own temporary file (it streams into it while frames come).
    from mlx_musicviz.video import VideoWriter

    with VideoWriter(tmp_path / "v.mp4", 64, 64, 24) as writer:
        writer.write(np.zeros((2, 64, 64, 3), np.uint8))
        writer.close()
    assert os.stat(tmp_path / "v.mp4").st_mode & 0o777 == os.stat(tmp_path / "plain.bin").st_mode & 0o777


def unet_counting_pipeline():
    """A random tiny pipeline whose UNet calls append their batch sizes to the list returned with it."""
    from mlx_musicviz.pipeline import Pipeline

    pipe, unet_frames = Pipeline.random("tiny"), []
    denoise = pipe.denoise

    def counting_denoise(latents, prompt_embeds):
        unet_frames.append(latents.shape[0])
        return denoise(latents, prompt_embeds)

    pipe.denoise = counting_denoise
    return pipe, unet_frames


def test_keyframe_indices():
    from mlx_musicviz.rendering import keyframe_indices

    assert keyframe_indices(10, 3).tolist() == [0, 3, 6, 9]
    assert keyframe_indices(11, 3).tolist() == [0, 3, 6, 9, 10]  # the last frame is always generated
    assert keyframe_indices(5, 1).tolist() == [0, 1, 2, 3, 4]
    assert keyframe_indices(1, 4).tolist() == [0]
    assert keyframe_indices(3, 8).tolist() == [0, 2]


def test_cadence_runs_the_unet_on_keyframes_and_blends_between(tmp_path):
    """Cadence 3: the UNet sees only the keyframes (in batches), a keyframe's latents are those of
    the every-frame walk, the frames between are the linear blend of their two keyframes, and the
    video still has every frame."""
    from mlx_musicviz import analyze
    from mlx_musicviz.rendering import denoised_latents, keyframe_indices, make_walkers

    sr, fps = 22050, 12
    y = (0.2 * np.sin(2 * np.pi * 440 * np.arange(sr * 2) / sr)).astype(np.float32)
    features = analyze((y, sr), fps=fps)
    n = features.n_frames
    pipe, unet_frames = unet_counting_pipeline()
    embeds = pipe.encode_prompt(["a", *default_note_prompts("a")])
    noise_walk, prompt_walk = make_walkers(features, pipe, embeds, 1, 64)
    every = {int(f): x for frames, lat in denoised_latents(pipe, noise_walk, prompt_walk, n, 2)
             for f, x in zip(frames, np.array(lat))}
    unet_frames.clear()
    chunks = [(frames, np.array(lat)) for frames, lat in denoised_latents(pipe, noise_walk, prompt_walk, n, 2, 3)]
    keys = keyframe_indices(n, 3)
    assert unet_frames == [2] * (len(keys) // 2) + [1] * (len(keys) % 2)
    assert all(len(frames) <= 2 for frames, _ in chunks)  # the VAE's batches stay at batch_size
    got = {int(f): x for frames, lat in chunks for f, x in zip(frames, lat)}
    assert sorted(got) == list(range(n))
    for k in keys:  # batch composition differs from the every-frame run: BLAS rounding only
        assert np.linalg.norm(got[k] - every[k]) <= 1e-5 * np.linalg.norm(every[k])
    for a, b in zip(keys[:-1], keys[1:]):
        for f in range(a + 1, b):
            t = np.float32((f - a) / (b - a))
            np.testing.assert_allclose(got[f], (1 - t) * got[a] + t * got[b], rtol=0, atol=1e-6)
        assert np.abs(got[a + 1] - got[a]).mean() > 0  # a blend, not a copy of the keyframe

    unet_frames.clear()
    result = render((y, sr), "a", output=tmp_path / "c.mp4", pipeline=pipe, size=64, fps=fps, cadence=3)
    assert (result.frames, result.keyframes, sum(unet_frames)) == (n, len(keys), len(keys))
    with av.open(str(result.output)) as c:
        assert sum(1 for _ in c.decode(video=0)) == n


@pytest.mark.parametrize("cadence", [1, 3])
def test_interrupted_render_resumes_from_its_kept_segments(tmp_path, monkeypatch, cadence):
    """Ctrl-C after 10 frames keeps the two finished 4-frame segments (nothing at the target); the same
    render run again makes only the frames after them (from the keyframe before them) and its video
    equals an uninterrupted render's, frame for frame. Other settings, or resume=False, start over."""
    from mlx_musicviz import rendering
    from mlx_musicviz.rendering import keyframe_indices
    from mlx_musicviz.video import parts_folder

    monkeypatch.setattr(rendering, "SEGMENT_VIDEO_SECONDS", 1.0)  # 4 frames at 4 fps
    sr, fps = 22050, 4
    y = (0.2 * np.sin(2 * np.pi * 330 * np.arange(sr * 5) / sr) * (np.arange(sr * 5) % (sr // 2) < 2000)).astype(np.float32)
    pipe, unet_frames = unet_counting_pipeline()
    kw = dict(pipeline=pipe, size=64, fps=fps, cadence=cadence)
    whole = render((y, sr), "x", output=tmp_path / "whole.mp4", **kw)
    n = whole.frames

    def stop_after_10(done, total):
        if done >= 10:
            raise KeyboardInterrupt

    target = tmp_path / "resumed.mp4"
    with pytest.raises(KeyboardInterrupt) as stopped:
        render((y, sr), "x", output=target, progress=stop_after_10, **kw)
    assert not target.exists()
    assert "8 frames are kept" in " ".join(stopped.value.__notes__)
    kept = sorted(p.name for p in parts_folder(target).iterdir())
    assert kept == ["00000000+000004.mp4", "00000004+000004.mp4", "manifest.json"]

    unet_frames.clear()
    again = render((y, sr), "x", output=target, **kw)
    assert again.resumed == 8 and again.frames == n
    keys = keyframe_indices(n, cadence)
    assert sum(unet_frames) == len(keys) - (np.searchsorted(keys, 8, side="right") - 1)
    assert sorted(os.listdir(tmp_path)) == ["resumed.mp4", "whole.mp4"]  # the segments are gone

    def decoded(path):
        with av.open(str(path)) as c:
            assert len(c.streams.audio) == 1
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

    np.testing.assert_array_equal(decoded(target), decoded(tmp_path / "whole.mp4"))

    if cadence == 1:  # what does not resume: other settings, or resume=False
        for other in (dict(kw, seed=1), dict(kw, resume=False)):
            target.unlink()
            with pytest.raises(KeyboardInterrupt):
                render((y, sr), "x", output=target, progress=stop_after_10, **kw)
            fresh = render((y, sr), "x", output=target, **other)
            assert fresh.resumed == 0 and any("8 frames kept" in w for w in fresh.warnings)


def test_cli_says_where_the_kept_frames_are():
    from mlx_musicviz.cli import _with_notes

    stop = KeyboardInterrupt()
    stop.add_note("8 frames are kept in .x.mp4.parts: run the same render again to continue from there")
    assert _with_notes(stop, "interrupted") == ("interrupted; 8 frames are kept in .x.mp4.parts: run the same "
                                                 "render again to continue from there")
    assert _with_notes(MusicvizError("disk full")) == "disk full"


def test_one_render_at_a_time_per_target(tmp_path):
    """A second render into the same target is refused while the first writes its segments; the
    lock goes with the first one, whether it finishes or fails."""
    from mlx_musicviz.video import SegmentedVideo

    target = tmp_path / "v.mp4"
    first = SegmentedVideo(target, 64, 64, 8, 18, {"song": "a"})
    with pytest.raises(MusicvizError, match="another render is writing"):
        SegmentedVideo(target, 64, 64, 8, 18, {"song": "a"})
    first.write(np.zeros((3, 64, 64, 3), np.uint8))
    first.finish(np.zeros((1, 22050), np.float32), 22050)
    assert sorted(os.listdir(tmp_path)) == ["v.mp4"]
    with pytest.raises(ValueError):
        with SegmentedVideo(target, 64, 64, 8, 18, {"song": "a"}, segment_frames=2) as video:
            video.write(np.zeros((3, 64, 64, 3), np.uint8))
            raise ValueError
    second = SegmentedVideo(target, 64, 64, 8, 18, {"song": "a"})
    assert second.frames_done == 2  # the failed run's finished segment, not its open one
    second.abort()


def test_a_damaged_kept_segment_is_refused_at_the_join(tmp_path):
    """A kept segment whose frames are not what its name says stops the join with one line (and
    nothing at the target) instead of a video with frames missing."""
    from mlx_musicviz.video import SegmentedVideo

    target = tmp_path / "v.mp4"
    with pytest.raises(KeyboardInterrupt):
        with SegmentedVideo(target, 64, 64, 8, 18, {"song": "a"}, segment_frames=2) as video:
            video.write(np.zeros((3, 64, 64, 3), np.uint8))
            raise KeyboardInterrupt
    (segment,) = video.paths
    segment.rename(segment.with_name("00000000+000003.mp4"))
    resumed = SegmentedVideo(target, 64, 64, 8, 18, {"song": "a"})
    assert resumed.frames_done == 3
    with pytest.raises(MusicvizError, match="holds 2 frames"):
        with resumed:
            resumed.finish(np.zeros((1, 22050), np.float32), 22050)
    assert not target.exists()
