"""Interrupted renders: nothing half-written is left, kept segments resume to the same video, one render
at a time per output, damaged segments are refused."""

import os

import av
import numpy as np
import pytest
from render_helpers import TRUMPET, unet_counting_pipeline

from mlx_musicviz import render
from mlx_musicviz.errors import MusicvizError


def test_interrupt_leaves_no_file(tmp_path):
    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render(str(TRUMPET), "x", output=tmp_path / "x.mp4", model="random:tiny", size=64, fps=4, progress=stop)
    assert os.listdir(tmp_path) == []


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


def test_an_interruption_before_any_segment_says_nothing_is_kept(tmp_path):
    """Stopped before the first segment (every 10 s of video): the exception's note says no frames are kept
    yet, and why, so the one line printed is not silent about it."""
    from render_helpers import wav

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        render(str(wav(tmp_path / "s.wav", 2.0)), "x", output=tmp_path / "v.mp4", model="random:tiny", size=64, fps=4,
               progress=stop)
    assert stopped.value.__notes__ == ["no frames kept yet (a segment is kept every 10 s of video or minute of work)"]
