"""One render shared among processes by mlx's real launcher (`mlx.launch --backend ring` on this machine):
the same frames as a render alone, resumable after a process dies, one line when a process cannot start."""

import os
import shutil
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import soundfile

from mlx_musicviz import render
from mlx_musicviz.sharing import shares, unit_frames

FPS, SECONDS = 4, 20  # units of about 10 s: 2 of them (3 with cadence 3's whole batches)


def launch(n: int, *args, timeout: float = 600, wait: bool = True):
    command = ["mlx.launch", "-n", str(n), "--backend", "ring", "--python", sys.executable, "--", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> str:
    sr = 22050
    t = np.arange(sr * SECONDS) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0.7)
    path = tmp_path_factory.mktemp("song") / "song.wav"
    soundfile.write(path, y.astype(np.float32), sr)
    return str(path)


def render_args(song, output, cadence):
    return ["-m", "mlx_musicviz.cli", "render", song, "-p", "a red fox", "--model", "random:tiny", "--size", "64",
            "--fps", FPS, "--crf", 0, "--cadence", cadence, "-o", output]


def test_units_are_whole_batches_and_faster_processes_take_more():
    assert unit_frames(30, 2, 1, 10.0) == 300 and unit_frames(30, 2, 3, 10.0) == 300
    assert unit_frames(4, 2, 3, 10.0) == 42 and unit_frames(1, 4, 8, 10.0) == 32  # at least one batch
    assert shares(np.array([1.0, 2.1, 1.0, 50.0])).tolist() == [1, 2, 1, 4]


@pytest.mark.slow
@pytest.mark.parametrize("cadence", [1, 3])
def test_a_render_shared_by_two_processes_equals_the_render_alone(song, tmp_path, cadence):
    alone = render(song, "a red fox", output=tmp_path / "alone.mp4", model="random:tiny", size=64, fps=FPS, crf=0,
                   cadence=cadence)
    done = launch(2, *render_args(song, tmp_path / "shared.mp4", cadence))
    assert "wrote" in done.stdout and "Traceback" not in done.stdout, done.stdout
    assert done.stdout.count("wrote") == 1  # rank 0 speaks for both
    shared = decoded(tmp_path / "shared.mp4")
    assert len(shared) == alone.frames > unit_frames(FPS, 2, cadence, 10.0)  # more than one unit
    np.testing.assert_array_equal(shared, decoded(alone.output))
    with av.open(str(tmp_path / "shared.mp4")) as c:
        assert len(c.streams.audio) == 1
    assert sorted(os.listdir(tmp_path)) == ["alone.mp4", "shared.mp4"]  # the units' folder is gone


def _rank_pids(rank: int, marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in command and "mlx_musicviz.cli" in command and f"MLX_RANK={rank}" in environ:
            found.append(int(pid))
    return found


@pytest.mark.slow
def test_a_process_killed_midway_loses_only_its_unit_and_a_rerun_with_three_or_one_finishes(song, tmp_path):
    target = tmp_path / "killed.mp4"
    parts = tmp_path / ".killed.mp4.parts"
    run = launch(2, *render_args(song, target, 1), wait=False)
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and any("+" in p.name for p in parts.iterdir())):
        assert time.monotonic() < deadline and run.poll() is None, run.stdout.read() if run.poll() is not None else ""
        time.sleep(0.2)
    [helper] = _rank_pids(1, str(target))
    os.kill(helper, signal.SIGKILL)
    said = run.communicate(timeout=120)[0]
    assert not target.exists(), said
    kept = [p.name for p in parts.iterdir() if "+" in p.name]
    assert kept and "frames are kept" in said, said
    shutil.copytree(parts, tmp_path / ".by-one.mp4.parts")  # the same kept units, for one process to finish
    again = launch(3, *render_args(song, target, 1))
    assert "wrote" in again.stdout, again.stdout
    alone = render(song, "a red fox", output=tmp_path / "alone.mp4", model="random:tiny", size=64, fps=FPS, crf=0)
    np.testing.assert_array_equal(decoded(target), decoded(alone.output))
    by_one = render(song, "a red fox", output=tmp_path / "by-one.mp4", model="random:tiny", size=64, fps=FPS, crf=0)
    assert by_one.resumed == sum(int(name.split("+")[1][:6]) for name in kept)  # the kept units, not redone
    np.testing.assert_array_equal(decoded(by_one.output), decoded(alone.output))


SCRIPT = """
import sys
import mlx_musicviz as mv
from mlx_musicviz.errors import MusicvizError
rank = int(__import__("os").environ["MLX_RANK"])
song = sys.argv[1] if rank == 0 else sys.argv[1] + ".missing.wav"  # rank 1's host has no copy of the song
try:
    mv.render(song, "x", output=sys.argv[2], model="random:tiny", size=64, fps=4)
except MusicvizError as e:
    print(f"error: {e}", flush=True)
    sys.exit(1)
"""


@pytest.mark.slow
def test_a_process_that_cannot_read_the_song_stops_every_process_with_one_line(song, tmp_path):
    script = tmp_path / "share.py"
    script.write_text(SCRIPT)
    done = launch(2, script, song, tmp_path / "v.mp4", timeout=300)
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and len(set(errors)) == 1, done.stdout  # both processes say the same line
    assert errors[0].startswith("error: rank 1 on ") and "not found" in errors[0], errors
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.slow
def test_many_songs_are_shared_song_by_song(song, tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    (album / "a.wav").symlink_to(song)
    (album / "b.mp3").write_bytes(b"not audio at all")
    done = launch(2, "-m", "mlx_musicviz.cli", "render", album, "-p", "x", "--model", "random:tiny", "--size", "64",
                  "--fps", FPS, "-o", f"{tmp_path / 'videos'}/")
    said = done.stdout + done.stderr
    assert "1 rendered, 0 skipped, 1 failed" in said and "error: 1 of 2 songs failed" in said, said
    assert "Traceback" not in said
    assert os.listdir(tmp_path / "videos") == ["a.mp4"] and len(decoded(tmp_path / "videos" / "a.mp4")) == FPS * SECONDS


def test_one_process_finishes_the_units_a_shared_render_kept_out_of_order(song, tmp_path, monkeypatch):
    """Units kept with a gap before them (a process died on the first): render alone makes the missing
    ones only and joins the same video."""
    import mlx.core as mx

    from mlx_musicviz import rendering

    kw = dict(model="random:tiny", size=64, fps=FPS, crf=0)
    alone = render(song, "x", output=tmp_path / "alone.mp4", **kw)
    unit = unit_frames(FPS, 2, 1, 10.0)

    def stop_after_two_units(done, total):
        if done >= 2 * unit:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:  # a group of one: the shared path in this process
        m.setattr(rendering, "launched_group", lambda: mx.distributed.init(strict=False))
        with pytest.raises(KeyboardInterrupt):
            render(song, "x", output=tmp_path / "v.mp4", progress=stop_after_two_units, **kw)
    parts = tmp_path / ".v.mp4.parts"
    assert sorted(p.name for p in parts.glob("*.mp4")) == [f"00000000+{unit:06d}.mp4", f"{unit:08d}+{unit:06d}.mp4"]
    (parts / f"00000000+{unit:06d}.mp4").unlink()  # the first unit lost: the kept one is out of order
    again = render(song, "x", output=tmp_path / "v.mp4", **kw)
    assert again.resumed == unit and again.frames == alone.frames
    np.testing.assert_array_equal(decoded(again.output), decoded(alone.output))
