"""MP4 writing with PyAV: H.264 (yuv420p, faststart) video plus the song as AAC, written under a
temporary name beside the target and renamed only when complete.

A render streams its frames into `SegmentedVideo`: H.264 segments in a folder beside the target,
each renamed into place once complete, joined with the soundtrack (packets copied, not re-encoded)
when the last frame is in. An interrupted render keeps its finished segments; the same render run
again continues after them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import MusicvizError
from .files import atomic_output, check_output_path, temporary_beside

AUDIO_RATE = 44100
MAX_CRF = 51  # libx264's quality scale for 8-bit video: 0 (lossless) to 51


# Output names and the container each is written as: H.264 with AAC audio goes in the ISO base media
# family only; another name (.avi, .webm, .mkv, .gif) would get an MP4 under a name that misleads players.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}


def check_video_path(output: str | os.PathLike) -> Path:
    """`output` as a Path when a video can be written there: a name ending in one of `CONTAINERS`, in a
    folder that exists and can be written. Raises MusicvizError otherwise."""
    path = check_output_path(output)
    if path.suffix.lower() not in CONTAINERS:
        raise MusicvizError(f"the video is H.264 with AAC audio in an MP4 container: name the output "
                            f"{', '.join(CONTAINERS)}, not {path.name}")
    return path


def frame_rate(fps: float) -> Fraction:
    """The stream's exact frame rate for `fps` (29.97 -> 30000/1001): the segments, their manifest
    and the join must all agree on it."""
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Stream frames (uint8 N x H x W x 3) into an H.264 MP4 (one segment of a render); atomic on `close()`.

    Use as a context manager: an exception (or Ctrl-C) inside deletes the partial file and leaves
    nothing at the target path.
    """

    def __init__(self, output: str | os.PathLike, width: int, height: int, fps: float, crf: int = 18,
                 preset: str = "medium"):
        import av

        self.target = check_output_path(output)
        self.tmp = Path(temporary_beside(self.target, ".partial.mp4"))
        try:
            self.container = av.open(str(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        rate = frame_rate(fps)
        self.video = self.container.add_stream("libx264", rate=rate)
        self.video.width, self.video.height = width, height
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": str(int(crf)), "preset": preset}
        self.video.codec_context.time_base = 1 / rate
        self.frames = 0
        self._closed = False

    def write(self, images: np.ndarray) -> None:
        import av

        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            self.container.mux(self.video.encode(frame))
            self.frames += 1

    def close(self) -> Path:
        self.container.mux(self.video.encode(None))
        self.container.close()
        self._closed = True
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        if not self._closed:
            try:
                self.container.close()
            except Exception:  # the file is being thrown away
                pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def mux_audio(container, samples: np.ndarray, rate: int):
    """Encode `samples` ((channels, n) float32 in [-1, 1] at `rate` Hz) into a new stereo AAC stream
    of `container`, resampled to AUDIO_RATE; return the stream.

    Every frame is stamped with its time (in samples from the first), so the encoder's first packet
    is at -1024, its priming samples, and the muxer declares them in the edit list: players skip
    them and the first sample plays with the first video frame (unstamped, they played 1024 samples,
    23.2 ms, late)."""
    import av

    samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    if samples.shape[0] > 2:
        samples = samples[:2]
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    stream = container.add_stream("aac", rate=AUDIO_RATE)
    stream.layout = "stereo"
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
    written = 0  # samples at AUDIO_RATE handed to the encoder so far

    def encode(frames) -> None:
        nonlocal written
        for out in frames:
            out.pts, out.time_base = written, Fraction(1, AUDIO_RATE)
            written += out.samples
            container.mux(stream.encode(out))

    block = 1 << 14
    for i in range(0, samples.shape[1], block):
        chunk = np.ascontiguousarray(samples[:, i:i + block])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = rate
        encode(resampler.resample(frame))
    encode(resampler.resample(None))
    container.mux(stream.encode(None))
    return stream


def fit_to_video(samples: np.ndarray, rate: int, frames: int, fps: float) -> np.ndarray:
    """`samples` ((channels, n) at `rate` Hz) cut, or padded with silence, to the length of `frames`
    video frames at `fps`, so that the soundtrack ends with the video: the frame count is the
    window's length rounded to whole frames, up to half a frame (at 1 fps, half a second) off."""
    samples = np.atleast_2d(samples)
    n = round(frames * rate / frame_rate(fps))
    if samples.shape[1] >= n:
        return samples[:, :n]
    return np.pad(samples, ((0, 0), (0, n - samples.shape[1])))


def parts_folder(target: Path) -> Path:
    """Where the segments of a render of `target` wait to be joined: a hidden folder beside it."""
    return target.parent / f".{target.name}.parts"


_SEGMENT_NAME = re.compile(r"^(\d{8})\+(\d{6})\.mp4$")  # first frame + frame count


def kept_out_of_order(target: Path) -> bool:
    """Whether the segments kept for `target` leave a gap: units of a shared render (see `sharing`)."""
    kept = sorted((int(m[1]), int(m[2])) for path in parts_folder(Path(target)).glob("*.mp4")
                  if (m := _SEGMENT_NAME.match(path.name)))
    done = 0
    for first, count in kept:
        if first != done:
            return True
        done += count
    return False


class SegmentedVideo:
    """Frames (uint8 N x H x W x 3) into H.264 segments in `parts_folder(output)`; `finish` joins
    them with the soundtrack into `output` and removes the folder.

    A segment is closed (renamed into place) after `segment_frames` frames or once it has been open
    `segment_seconds` of wall time, whichever comes first, so an interruption loses at most that much
    work. `fingerprint` (JSON-able) names everything the frames depend on: segments kept by a run with
    another fingerprint are thrown away, as they are with `resume=False`. `frames_done` frames are
    already kept: write from that frame on. With `total_frames` given, the video holds exactly that
    many: kept segments reaching past it are thrown away, a frame past it is refused, and `finish`
    joins nothing short of it. With `unit_frames` (a render shared among processes), segments are
    units [k * unit_frames, (k + 1) * unit_frames) made in any order and handed in by `keep`; those kept
    are resumed whatever lies between them (`missing` lists the rest).

    Every I/O failure (a full disk, a name too long, no permission) is a MusicvizError with one line;
    the finished segments stay as they were, for the same render run again to continue from.
    """

    def __init__(self, output: str | os.PathLike, width: int, height: int, fps: float, crf: int,
                 fingerprint: dict, resume: bool = True, segment_frames: int = 300, segment_seconds: float = 60.0,
                 total_frames: int | None = None, unit_frames: int | None = None):
        self.target = check_video_path(output)
        self.folder = parts_folder(self.target)
        self._lock_path = self.folder.with_name(self.folder.name + ".lock")
        try:
            self._lock = open(self._lock_path, "a")
        except OSError as e:
            raise MusicvizError(f"cannot write beside {self.target}: {e.strerror or e}") from None
        try:  # one render at a time per target: another would be writing into the same segments
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise MusicvizError(f"another render is writing {self.target} now") from None
        try:
            self.total_frames, self.unit_frames = total_frames, unit_frames
            self._start(width, height, fps, crf, fingerprint, resume, segment_frames, segment_seconds)
        except BaseException:
            self._unlock()
            raise

    def _start(self, width, height, fps, crf, fingerprint, resume, segment_frames, segment_seconds) -> None:
        self.size, self.fps, self.crf = (width, height), fps, crf
        self.segment_frames, self.segment_seconds = max(1, int(segment_frames)), segment_seconds
        manifest = json.loads(json.dumps({  # as it reads back: lists for tuples, strings for keys
            "version": 1, "fingerprint": fingerprint, "width": width, "height": height,
            "fps": str(frame_rate(fps)), "crf": crf}, default=str))
        self.discarded = 0  # frames of another render (or resume=False) thrown away
        kept = self._read_manifest() if resume else None
        segments = self._segments() if kept == manifest else []
        if kept != manifest and self.folder.exists():
            self.discarded = sum(count for _, count, _ in self._segments())
            shutil.rmtree(self.folder)
        if not self.folder.exists():
            try:
                self.folder.mkdir()
                with atomic_output(self.folder / "manifest.json") as tmp:
                    Path(tmp).write_text(json.dumps(manifest, indent=1))
            except OSError as e:
                raise MusicvizError(f"cannot write the render's segments beside {self.target}: {e.strerror or e}") from None
        self.paths, self.frames_done = [], 0
        for first, count, path in segments:  # contiguous from frame 0; anything after a gap (or the end) is redone
            if self.unit_frames is not None:  # shared: whole units, in any order
                if first % self.unit_frames == 0 and count == self._unit_length(first):
                    self.paths.append(path)
                    self.frames_done += count
                continue
            if first != self.frames_done or (self.total_frames is not None and first + count > self.total_frames):
                break
            self.paths.append(path)
            self.frames_done += count
        for _, _, path in [s for s in segments if s[2] not in self.paths]:
            with _io_errors(f"cannot remove {path}"):
                path.unlink()
        self.resumed = self.frames_done
        self._writer = None
        self._opened = 0.0

    def _unit_length(self, first: int) -> int:
        return min(self.unit_frames, self.total_frames - first)

    def missing(self) -> list[int]:
        """The first frames of the units not yet kept (a shared render)."""
        kept = {int(_SEGMENT_NAME.match(path.name)[1]) for path in self.paths}
        return [first for first in range(0, self.total_frames, self.unit_frames) if first not in kept]

    def keep(self, first: int, segment: bytes) -> None:
        """Keep `segment`, the encoded unit starting at frame `first` (a shared render), made elsewhere."""
        count = self._unit_length(first)
        path = self.folder / f"{first:08d}+{count:06d}.mp4"
        with _io_errors(f"cannot write the render's segments in {self.folder}"):
            with atomic_output(path) as tmp:
                Path(tmp).write_bytes(segment)
        self.paths = sorted([*self.paths, path])
        self.frames_done += count

    def _read_manifest(self):
        try:
            return json.loads((self.folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return None

    def _segments(self) -> list[tuple[int, int, Path]]:
        found = []
        for path in self.folder.glob("*.mp4") if self.folder.is_dir() else []:
            m = _SEGMENT_NAME.match(path.name)
            if m:
                found.append((int(m[1]), int(m[2]), path))
        return sorted(found)

    @property
    def frames_written(self) -> int:
        """Frames in the video so far: those kept in finished segments and those in the open one."""
        return self.frames_done + (self._writer.frames if self._writer is not None else 0)

    def write(self, images: np.ndarray) -> None:
        if self.total_frames is not None and self.frames_written + len(images) > self.total_frames:
            raise RuntimeError(f"frames {self.frames_written}..{self.frames_written + len(images) - 1} written to a "
                               f"video of {self.total_frames}")  # a bug, never the user's input
        with _io_errors(f"cannot write the render's segments in {self.folder}", self._drop_open_segment):
            for image in images:
                if self._writer is None:  # named once closed, when its frame count is known
                    self._writer = VideoWriter(self.folder / "open.mp4", *self.size, self.fps, crf=self.crf)
                    self._opened = time.perf_counter()
                self._writer.write(image[None])
                if (self._writer.frames >= self.segment_frames
                        or time.perf_counter() - self._opened >= self.segment_seconds):
                    self._close_segment()

    def _close_segment(self) -> None:
        writer = self._writer
        path = self.folder / f"{self.frames_done:08d}+{writer.frames:06d}.mp4"
        os.replace(writer.close(), path)
        self._writer = None
        self.paths.append(path)
        self.frames_done += writer.frames

    def _drop_open_segment(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def finish(self, samples: np.ndarray, rate: int) -> Path:
        """Close the last segment; write the segments and the soundtrack into the target (atomically)
        and remove the segments' folder. Returns the target."""
        if self._writer is not None:
            with _io_errors(f"cannot write the render's segments in {self.folder}", self._drop_open_segment):
                self._close_segment()
        if self.total_frames is not None and self.frames_done != self.total_frames:
            raise RuntimeError(f"{self.frames_done} frames to join into a video of {self.total_frames}")  # a bug
        with _io_errors(f"cannot write {self.target}"):
            self._join(samples, rate)
        shutil.rmtree(self.folder, ignore_errors=True)
        self._unlock()
        return self.target

    def _join(self, samples: np.ndarray, rate: int) -> None:
        import av

        with atomic_output(self.target) as tmp:
            with av.open(tmp, mode="w", format=CONTAINERS[self.target.suffix.lower()],
                         options={"movflags": "+faststart"}) as out:
                with av.open(str(self.paths[0])) as first:  # every stream is added before the first packet
                    template = first.streams.video[0]
                    video, extradata = out.add_stream_from_template(template), template.codec_context.extradata
                mux_audio(out, fit_to_video(samples, rate, self.frames_done, self.fps), rate)
                offset, frame = 0, 1 / frame_rate(self.fps)
                for path in self.paths:
                    with av.open(str(path)) as segment:
                        stream = segment.streams.video[0]
                        if stream.codec_context.extradata != extradata:
                            raise MusicvizError(f"segment {path.name} was encoded differently; "
                                                "render again without resuming (--restart)")
                        frames = 0
                        for packet in segment.demux(stream):
                            if packet.dts is None:  # the demuxer's end-of-stream marker
                                continue
                            # In frame units, shifted to where the segment starts in the video.
                            pts, dts, duration = (round(t * packet.time_base / frame)
                                                  for t in (packet.pts, packet.dts, packet.duration))
                            packet.time_base = frame
                            packet.pts, packet.dts, packet.duration = pts + offset, dts + offset, duration
                            packet.stream = video
                            out.mux(packet)
                            frames += 1
                        if frames != int(_SEGMENT_NAME.match(path.name)[2]):
                            raise MusicvizError(f"segment {path.name} holds {frames} frames; "
                                                "render again without resuming (--restart)")
                        offset += frames

    def _unlock(self) -> None:
        if not self._lock.closed:
            self._lock_path.unlink(missing_ok=True)
            self._lock.close()  # releases the lock

    def abort(self) -> None:
        """Drop the open segment; keep the finished ones (the folder goes when there are none)."""
        self._drop_open_segment()
        if not self.paths:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._unlock()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            if self.paths:
                exc.add_note(f"{self.frames_done} frames are kept in {self.folder}: run the same render again "
                             "to continue from there")
            elif isinstance(exc, KeyboardInterrupt):  # Ctrl-C, SIGTERM: say why nothing is kept
                exc.add_note("no frames kept yet (a segment is kept every 10 s of video or minute of work)")
        self._unlock()  # also where the block ended without finishing
        return False


@contextmanager
def _io_errors(what: str, cleanup=None):
    """Turn an OSError (a full disk, a name too long, no permission; PyAV's included) into one line,
    "<what>: <reason>", after `cleanup`."""
    try:
        yield
    except OSError as e:
        if cleanup is not None:
            cleanup()
        raise MusicvizError(f"{what}: {e.strerror or e}") from None


def soundtrack(audio, start: float | None, duration: float | None) -> tuple[np.ndarray, int]:
    """(channels, n) float32 samples in [-1, 1] of the window `start` / `duration` (seconds; None: from
    0 / to the end): of a file at AUDIO_RATE, decoding only the window (sample-exact, see
    `audio.decode_blocks`), so a few seconds of a long song take a few seconds' memory; of a
    (samples, rate) pair at its rate."""
    from .audio import check_window, decode_file, is_sample_pair, sample_pair, window_samples

    check_window(start, duration)
    if is_sample_pair(audio):
        y, rate = sample_pair(audio)
        return np.clip(y[:, window_samples(start, duration, rate, y.shape[1])], -1, 1), rate
    y = decode_file(Path(audio), AUDIO_RATE, mono=False, start=start, duration=duration)
    return np.clip(y, -1, 1, out=y), AUDIO_RATE
