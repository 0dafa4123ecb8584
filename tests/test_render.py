"""End to end: song + prompt -> MP4 with a random-weight model: streams and duration, motion, seeds,
frame sizes, the beat walk in the frames, bounded memory, file modes, cadence."""

import os

import av
import mlx.core as mx
import numpy as np
import pytest
from reference import DATA
from render_helpers import RATE, TRUMPET, beeps, cli, decoded_frames, unet_counting_pipeline

from mlx_musicviz import render
from mlx_musicviz.checks import frame_size
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.note_prompts import default_note_prompts
from mlx_musicviz.pipeline import Pipeline
from mlx_musicviz.rendering import RANDOM_WEIGHTS_WARNING


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


def test_same_seed_samedecoded_frames(tmp_path):
    y = (0.1 * np.sin(np.arange(22050) / 10)).astype(np.float32)
    a = render((y, 22050), "x", output=tmp_path / "a.mp4", model="random:tiny", size=64, fps=8)
    b = render((y, 22050), "x", output=tmp_path / "b.mp4", model="random:tiny", size=64, fps=8)

    def frames(p):
        with av.open(str(p)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

    assert np.array_equal(frames(a.output), frames(b.output))


def test_frames_wider_than_tall(tmp_path):
    """--size WIDTHxHEIGHT: a 2:1 video, frames and stream alike (the model's non-square case is
    compared with diffusers in test_pipeline)."""
    r = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--size", "128x64", "--fps", "4",
            "--duration", "2", "-o", str(tmp_path / "wide.mp4"))
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "wide.mp4")) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (128, 64)
    frames = decoded_frames(tmp_path / "wide.mp4")
    assert frames.shape == (8, 64, 128, 3)
    assert frame_size((192, 64)) == frame_size("192x64") == (192, 64) and frame_size(512) == (512, 512)
    for bad in (512.5, "64x", (64, 96), None):
        with pytest.raises(MusicvizError, match="not supported"):
            frame_size(bad)


def test_cli_help_and_version():
    for args in (["--help"], ["render", "--help"], ["convert", "--help"], ["demo", "--help"], ["note-prompts", "--help"],
                 ["preview", "--help"], ["--version"]):
        r = cli(*args)
        assert r.returncode == 0
    assert "Examples" in cli("render", "--help").stdout


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_song(tmp_path):
    """A 60 s render holds no more than a 10 s one (within 15%): frames stream to the encoder."""
    song = DATA / "audio" / "Karissa_Hobbs_-_Lets_Go_Fishin.ogg"
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


def test_many_songs_render_into_a_folder_skip_those_done_and_list_failures(tmp_path):
    import soundfile

    songs = tmp_path / "album"
    songs.mkdir()
    for name, seconds in (("one.wav", 0.5), ("two.flac", 0.75)):
        soundfile.write(songs / name, beeps(seconds), RATE)
    (songs / "broken.mp3").write_bytes(b"not audio at all")
    args = ["render", str(songs), "-p", "x", "--model", "random:tiny", "--size", "64", "--fps", "8", "-o",
            str(tmp_path / "videos") + "/"]
    first = cli(*args)
    assert first.returncode == 1, first.stderr
    assert sorted(os.listdir(tmp_path / "videos")) == ["one.mp4", "two.mp4"]
    assert "2 rendered, 0 skipped, 1 failed" in first.stdout
    assert [line for line in first.stderr.splitlines() if line.startswith("failed:")][0].startswith(
        f"failed: {songs / 'broken.mp3'}: ")
    assert first.stderr.strip().splitlines()[-1] == "error: 1 of 3 songs failed" and "Traceback" not in first.stderr
    with av.open(str(tmp_path / "videos" / "two.mp4")) as c:
        assert c.streams.video[0].frames == 6 and len(c.streams.audio) == 1
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "videos").iterdir()}
    again = cli(*args)
    assert again.returncode == 1 and "0 rendered, 2 skipped, 1 failed" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "videos").iterdir()} == stamps


def test_many_songs_name_twins_by_their_kind_and_refuse_a_video_as_the_folder(tmp_path):
    import soundfile

    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("groove.wav", "groove.flac"):
        soundfile.write(songs / name, beeps(0.25), RATE)
    args = ["-p", "x", "--model", "random:tiny", "--size", "64", "--fps", "8"]
    listed = cli("render", songs / "groove.wav", songs / "groove.flac", songs / "groove.wav", *args, "-o", tmp_path / "a")
    assert listed.returncode == 0, listed.stderr
    assert sorted(os.listdir(tmp_path / "a")) == ["groove-flac.mp4", "groove-wav.mp4"]  # the song named twice: once
    alone = cli("render", songs / "groove.flac", *args, "-o", f"{tmp_path / 'a'}/")  # the same name, alone or not
    assert "is there already, skipped" in alone.stdout and str(tmp_path / "a" / "groove-flac.mp4") in alone.stdout
    refused = cli("render", songs, *args, "-o", tmp_path / "x.mp4")
    assert refused.returncode == 1 and "-o names a folder for them" in refused.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_the_compute_dtype_is_the_devices_unless_told_and_the_progress_line_names_it(tmp_path, monkeypatch):
    """float16 on a GPU and float32 on the CPU by default (`default_dtype`); the GPU's default taken on the
    CPU device (as a GPU would, only slower) gives a float16 pipeline whose frames are finite and close to
    float32's; `--dtype` overrides, the progress line names it, and a bad dtype is one line."""
    import warnings

    from mlx_musicviz import load_pipeline
    from mlx_musicviz.checks import check_dtype
    from mlx_musicviz.ops import device

    assert device.default_dtype(mx.gpu) == mx.float16 and device.default_dtype(mx.cpu) == mx.float32
    assert check_dtype(None) == check_dtype("auto") == mx.float32  # this machine's CPU device
    assert check_dtype("bfloat16") == mx.bfloat16 and check_dtype(mx.float16) == mx.float16
    for bad in ("half", mx.int32, 16):
        with pytest.raises(MusicvizError, match="dtype must be auto, float32"):
            check_dtype(bad)
    assert load_pipeline("random:tiny").dtype == mx.float32
    monkeypatch.setattr(device, "default_dtype", lambda d=None: mx.float16)  # as on a GPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 on the CPU device is slow, and says so
        half = load_pipeline("random:tiny")
    assert half.dtype == mx.float16
    latents = mx.random.normal((1, 8, 8, 4), key=mx.random.key(0))
    embeds = half.encode_prompt("a lighthouse")
    got = np.array(half.denoise(latents, embeds).astype(mx.float32))
    full = np.array(load_pipeline("random:tiny", dtype="float32").denoise(latents, embeds))
    assert np.isfinite(got).all() and np.linalg.norm(got - full) / np.linalg.norm(full) < 2e-2
    r = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--size", "64", "--duration", "0.5",
            "--dtype", "bfloat16", "-o", str(tmp_path / "v.mp4"))
    assert r.returncode == 0 and "frames (bfloat16)" in r.stderr, r.stderr
    assert "warning: bfloat16 compute on the CPU" in r.stderr and "UserWarning" not in r.stderr  # one line, no source
    with pytest.raises(MusicvizError, match="steps and dtype shape a model as it loads"):  # not silently ignored
        render(TRUMPET, "x", output=tmp_path / "w.mp4", pipeline=load_pipeline("random:tiny"), dtype="float16", steps=2)
    r = cli("render", str(TRUMPET), "-p", "x", "--model", "random:tiny", "--dtype", "half", "-o", str(tmp_path / "w.mp4"))
    assert r.returncode != 0 and "'half' is not one of 'auto', 'float32', 'float16', 'bfloat16'" in r.stderr
