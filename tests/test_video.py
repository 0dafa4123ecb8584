"""The video's segments and join: a failed join, a full disk, a retry, a signal or a long name never
leave a wrong video; each is one line, and the kept segments stay as they were."""

import errno
import os
import signal
import subprocess
import sys
import time
import wave
from contextlib import contextmanager

import av
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.video import SegmentedVideo, parts_folder

SR, FPS, SECONDS = 22050, 4, 5  # 20 frames; segments of 4 frames (1 s of video)


def beeps(seconds: float = SECONDS) -> np.ndarray:
    n = int(SR * seconds)
    return (0.2 * np.sin(2 * np.pi * 330 * np.arange(n) / SR) * (np.arange(n) % (SR // 2) < 2000)).astype(np.float32)


def write_wav(path, samples: np.ndarray) -> str:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return str(path)


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def folder_state(folder) -> dict:
    """Each file in `folder` and its bytes: what a failed run must leave exactly as it was."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


@contextmanager
def small_disk(tmp_path):
    """A folder on a file system that a test can fill: a 16 MiB tmpfs where the test may mount one (as
    root on Linux), else None (the caller injects ENOSPC instead)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = sys.platform == "linux" and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True).returncode == 0
    try:
        yield mount if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder) -> None:
    """Write into `folder` until its file system is full."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.mark.parametrize("cadence", [1, 3])
def test_a_full_disk_at_the_join_is_one_line_and_retries_change_nothing(tmp_path, monkeypatch, cadence):
    """The join fails on a full disk: one line, exit 1, the segments kept. Three more runs on the still
    full disk fail the same way and leave the segments byte for byte as they were (no frame made
    again); with space freed the video has exactly duration x fps frames and equals a clean render's
    frame for frame."""
    from mlx_musicviz import cli, rendering, video

    monkeypatch.setattr(rendering, "SEGMENT_VIDEO_SECONDS", 1.0)
    song = write_wav(tmp_path / "song.wav", beeps())
    args = ["render", song, "-p", "x", "--model", "random:tiny", "--size", "64", "--fps", str(FPS),
            "--cadence", str(cadence)]
    runner = CliRunner()
    clean = runner.invoke(cli.main, [*args, "-o", str(tmp_path / "clean.mp4")])
    assert clean.exit_code == 0, clean.output
    n = SECONDS * FPS
    assert len(decoded(tmp_path / "clean.mp4")) == n

    join = video.SegmentedVideo._join
    with small_disk(tmp_path) as disk:
        if disk is None:  # no tmpfs here: the join's writes fail as on a full disk
            folder, full = tmp_path, True

            def failing_join(self, samples, rate):
                if full:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return join(self, samples, rate)
        else:
            folder = disk

            def failing_join(self, samples, rate):  # the segments fit; the disk fills before the first join
                if not any(disk.glob("filler*")):
                    fill(disk)
                    (disk / "filler").rename(disk / "filler-kept")
                return join(self, samples, rate)

        monkeypatch.setattr(video.SegmentedVideo, "_join", failing_join)
        target = folder / "v.mp4"
        first = runner.invoke(cli.main, [*args, "-o", str(target)])
        assert first.exit_code == 1
        lines = first.stderr.strip().splitlines()
        assert lines[-1] == (f"error: cannot write {target}: No space left on device; {n} frames are kept in "
                             f"{parts_folder(target)}: run the same render again to continue from there"), first.stderr
        assert not any("Traceback" in line for line in lines) and not target.exists()
        kept = folder_state(parts_folder(target))
        assert sum(int(name[9:15]) for name in kept if name.endswith(".mp4")) == n

        for _ in range(3):
            again = runner.invoke(cli.main, [*args, "-o", str(target)])
            assert again.exit_code == 1 and "No space left on device" in again.stderr.splitlines()[-1]
            assert folder_state(parts_folder(target)) == kept

        if disk is None:
            full = False
        else:
            (disk / "filler-kept").write_bytes(b"")
        done = runner.invoke(cli.main, [*args, "-o", str(target)])
        assert done.exit_code == 0, done.output
        assert f"{n} frames" in done.stdout and f"continued after {n} kept frames" in done.stdout
        np.testing.assert_array_equal(decoded(target), decoded(tmp_path / "clean.mp4"))
        assert not parts_folder(target).exists()


def test_a_full_disk_while_writing_segments_keeps_the_finished_ones(tmp_path, monkeypatch):
    """A segment that cannot be written is one line; the segments finished before it stay, and the
    next run continues from them."""
    target = tmp_path / "v.mp4"
    with SegmentedVideo(target, 64, 64, FPS, 18, {"a": 1}, segment_frames=2, total_frames=6) as v:
        v.write(np.zeros((2, 64, 64, 3), np.uint8))
    real = av.open

    def full_disk(*a, **k):
        raise av.error.OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(av, "open", full_disk)
    with pytest.raises(MusicvizError, match=r"cannot write the render.s segments in .*: No space left on device"):
        with SegmentedVideo(target, 64, 64, FPS, 18, {"a": 1}, segment_frames=2, total_frames=6) as v:
            assert v.frames_done == 2
            v.write(np.zeros((2, 64, 64, 3), np.uint8))
    monkeypatch.setattr(av, "open", real)
    assert sorted(os.listdir(parts_folder(target))) == ["00000000+000002.mp4", "manifest.json"]


def test_frames_past_the_video_are_never_written_or_kept(tmp_path):
    """With the video's length known, segments reaching past it are thrown away, a frame past it is
    refused (a bug, not a longer video), and a join short of it is refused."""
    target = tmp_path / "v.mp4"
    with pytest.raises(KeyboardInterrupt):
        with SegmentedVideo(target, 64, 64, FPS, 18, {"a": 1}, segment_frames=2) as v:
            v.write(np.zeros((5, 64, 64, 3), np.uint8))  # segments 0+2 and 2+2, one frame open
            raise KeyboardInterrupt
    shorter = SegmentedVideo(target, 64, 64, FPS, 18, {"a": 1}, segment_frames=2, total_frames=3)
    assert shorter.frames_done == 2  # 2+2 would reach frame 3 of a 3-frame video
    assert sorted(os.listdir(parts_folder(target))) == ["00000000+000002.mp4", "manifest.json"]
    with pytest.raises(RuntimeError, match="written to a video of 3"):
        shorter.write(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(RuntimeError, match="2 frames to join into a video of 3"):
        shorter.finish(np.zeros((1, SR), np.float32), SR)
    shorter.write(np.zeros((1, 64, 64, 3), np.uint8))
    assert len(decoded(shorter.finish(np.zeros((1, SR), np.float32), SR))) == 3


@pytest.mark.parametrize("cadence", [1, 3])
def test_denoised_latents_start_at_the_first_frame_not_kept(cadence):
    """A resumed render yields the frames from `first_frame` on, each once; with every frame kept it
    yields nothing and runs no UNet."""
    from mlx_musicviz.rendering import denoised_latents

    class Walk:
        def latents(self, frames):
            return np.asarray(frames, np.float32)[:, None, None, None] * np.ones((1, 8, 8, 4), np.float32)

        def embeddings(self, frames):
            return None

    class Pipe:
        calls = 0

        def denoise(self, latents, embeds):
            import mlx.core as mx

            Pipe.calls += 1
            return mx.array(latents)

    n = 10
    for first in (0, 1, 4, 9, 10):
        Pipe.calls = 0
        frames = [int(f) for chunk, _ in denoised_latents(Pipe(), Walk(), Walk(), n, 2, cadence, first) for f in chunk]
        assert frames == list(range(first, n)), (first, frames)
        assert (Pipe.calls == 0) == (first == n)


def test_sigterm_keeps_the_segments_and_the_render_resumes(tmp_path):
    """SIGTERM mid-render (a service manager, `kill`) ends it as Ctrl-C does: one line naming the signal
    and the kept frames, exit 143, nothing at the target; the same command continues from them."""
    song = write_wav(tmp_path / "song.wav", beeps(15))  # 60 frames at 4 fps: segments of 40 (10 s of video)
    target = tmp_path / "v.mp4"
    cmd = [sys.executable, "-m", "mlx_musicviz.cli", "render", song, "-p", "x", "--model", "random:tiny",
           "--size", "64", "--fps", str(FPS), "--batch-size", "1", "-o", str(target)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any(parts_folder(target).glob("00000000+*.mp4")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no segment after 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM; ") and "frames are kept in" in last, err
    assert "Traceback" not in err and not target.exists()
    kept = int(last.split("; ")[1].split()[0])
    assert kept >= 40

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"continued after {kept} kept frames" in again.stdout
    assert len(decoded(target)) == 60


@pytest.mark.parametrize("length", [240, 252, 255, 300])
def test_an_output_name_too_long_for_the_file_system_is_one_line(tmp_path, length):
    """A name the render's working files ('.NAME.parts.lock') would not fit beside, or the file system
    refuses outright, is refused before any work; 243 bytes (255 less 12) is the longest accepted."""
    from mlx_musicviz.video import check_video_path

    name = "v" * (length - 4) + ".mp4"
    if length <= 243:
        assert check_video_path(tmp_path / name).name == name
        return
    with pytest.raises(MusicvizError, match=r"the output's name is \d+ bytes long: at most 243 here"):
        check_video_path(tmp_path / name)
    too_long_folder = tmp_path / ("d" * 300) / "v.mp4"
    with pytest.raises(MusicvizError, match="cannot write .*: File name too long"):
        check_video_path(too_long_folder)
