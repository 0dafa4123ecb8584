"""Frames for live mode, on a song's own timeline: the walks and model of `render`, generated from
any frame on (where the page plays or seeks to), a chunk at a time, with settings that change while
it runs (prompt, motion, seed, mode: crossfaded in) and a pace that adapts to the machine.

Frame k is at k / fps seconds, as in a rendered video. With cadence 1 and stride 1 a live frame is
the rendered video's frame for the same settings; a larger cadence (UNet on every cadence-th frame,
latents blended between, as `render --cadence`) or stride (only every stride-th frame: a lower fps)
is how generation keeps up on a slow machine.
"""

from __future__ import annotations

import io
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np

from ..checks import check_prompt, frame_size
from ..errors import MusicvizError
from ..note_prompts import default_note_prompts
from ..rendering import make_walkers
from ..walkers import NoiseWalkConfig, _standardize

# The steps of adaptation, mildest first: (cadence, stride).
PACES = ((1, 1), (2, 1), (3, 1), (4, 1), (6, 1), (8, 1), (8, 2), (8, 3), (8, 4))
MODES = ("focus", "cumulative")
MIN_HOLD, MAX_HOLD = 1.0, 10.0  # seconds of frames the page gathers before it plays
REACT = 0.5  # seconds past the playhead from which a change of settings is shown
WARM_UP_CHUNKS = 2  # the first chunks also pay for warm-up: the pace adapts after them


@dataclass(frozen=True)
class LiveSettings:
    """What the frames depend on and a user may change while they play."""

    prompt: str
    motion: float = NoiseWalkConfig.distance  # fraction of a full turn a loud beat moves the noise
    seed: int = 0
    mode: str = "focus"
    grid: str = "quarter"  # the noise moves on every beat, every 2nd or every 4th (see NoiseWalkConfig)

    def check(self) -> "LiveSettings":
        check_prompt(self.prompt)
        NoiseWalkConfig(distance=self.motion, grid=self.grid)  # raises MusicvizError for a motion outside 0..1
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**64:
            raise MusicvizError(f"seed must be an integer from 0 to 2**64 - 1, got {self.seed!r}")
        if self.mode not in MODES:
            raise MusicvizError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        return self


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """uint8 (H, W, 3) -> JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def walk_prompts(prompt: str) -> list[str]:
    """The base prompt and its 12 note prompts, as `render` derives them."""
    return [prompt, *default_note_prompts(prompt)]


class Walks:
    """The noise and prompt walks of one set of settings over the song's features; `embeds` are the
    encoded `walk_prompts(settings.prompt)`."""

    def __init__(self, pipe, features, settings: LiveSettings, size, embeds: mx.array):
        self.settings, self.embeds = settings, embeds
        self.noise, self.prompt = make_walkers(features, pipe, embeds, 1, size, settings.seed,
                                               NoiseWalkConfig(distance=settings.motion, grid=settings.grid), settings.mode)

    def inputs(self, frames: np.ndarray) -> tuple[mx.array, mx.array]:
        return self.noise.latents(frames), self.prompt.embeddings(frames)


class SongFrames:
    """Generate frames of a song from a frame on, in chunks, for a live page.

    features: the song's `AudioFeatures` at the live fps; size: as `render`'s.
    `chunk(first, limit)` makes the frames from `first` (aligned to the pace's stride) up to at most
    `limit` frames' worth of keyframes, returning [(frame index, uint8 image)]. Settings given to
    `change` (from any thread) are taken up by the thread that calls `chunk`: a new prompt's 13
    prompts are encoded one a chunk, so that no chunk waits for all of them, then crossfaded in over
    `crossfade` seconds of frames.
    """

    def __init__(self, pipe, features, settings: LiveSettings, size=256, batch_size: int = 1, vae: str = "auto",
                 crossfade: float | None = None):
        self.pipe, self.features, self.vae = pipe, features, vae
        self.width, self.height = frame_size(size)
        self.batch_size = max(1, int(batch_size))
        settings = settings.check()
        embeds = pipe.encode_prompt(walk_prompts(settings.prompt))
        mx.eval(embeds)
        self.walks = Walks(pipe, features, settings, (self.width, self.height), embeds)
        self._pending = None  # (settings, the prompts to encode, their embeddings so far)
        # Two beats, or a second where there is no beat.
        beat = 60.0 / features.tempo if features.tempo > 0 else 0.5
        self.crossfade = crossfade if crossfade is not None else 2 * beat
        self._fading = None  # (old walks, frames made since the change)
        self._lock = threading.Lock()
        self.pace = 0  # index into PACES

    @property
    def n_frames(self) -> int:
        return self.features.n_frames

    @property
    def fps(self) -> float:
        return self.features.fps

    @property
    def cadence(self) -> int:
        return PACES[self.pace][0]

    @property
    def stride(self) -> int:
        return PACES[self.pace][1]

    @property
    def settings(self) -> LiveSettings:
        return self.walks.settings

    def change(self, **changes) -> LiveSettings:
        """Ask for new settings (prompt, motion, seed, mode), on top of any still being taken up;
        raises MusicvizError for a bad value. They are crossfaded in once ready (see the class)."""
        with self._lock:
            current = self._pending[0] if self._pending else self.settings
            settings = replace(current, **changes).check()
            prompts = walk_prompts(settings.prompt) if settings.prompt != self.settings.prompt else []
            self._pending = (settings, prompts, [])
        return settings

    def take_up(self) -> None:
        """Encode the next prompt of a pending change; once all are, switch walks, fading from the old."""
        with self._lock:
            pending = self._pending
        if pending is None:
            return
        settings, prompts, encoded = pending
        if len(encoded) < len(prompts):
            encoded.append(self.pipe.encode_prompt([prompts[len(encoded)]]))
            mx.eval(encoded[-1])
            if len(encoded) < len(prompts):
                return
        embeds = mx.concatenate(encoded) if prompts else self.walks.embeds
        walks = Walks(self.pipe, self.features, settings, (self.width, self.height), embeds)
        with self._lock:
            if self._pending is pending:  # not replaced by a newer change meanwhile
                self._pending = None
                self._fading = (self.walks, 0.0)
                self.walks = walks

    def _inputs(self, frames: np.ndarray) -> tuple[mx.array, mx.array]:
        with self._lock:
            walks, fading = self.walks, self._fading
        latents, embeds = walks.inputs(frames)
        if fading is None:
            return latents, embeds
        old, made = fading
        span = max(self.crossfade * self.fps, 1.0)
        a = np.clip((made + np.arange(len(frames)) * self.stride + 1) / span, 0, 1).astype(np.float32)
        t = mx.array(a)[:, None, None, None]
        old_latents, old_embeds = old.inputs(frames)
        latents = _standardize((1 - t) * old_latents + t * latents)
        embeds = (1 - t[:, :, :, 0]) * old_embeds + t[:, :, :, 0] * embeds
        with self._lock:
            if self._fading is fading:
                made += len(frames) * self.stride
                self._fading = None if made >= span else (old, made)
        return latents, embeds

    def keyframes(self, first: int, count: int) -> np.ndarray:
        """Up to `count` keyframes from the one at or before `first`: multiples of cadence x stride,
        and the song's last frame, as `rendering.keyframe_indices` places them."""
        step = self.cadence * self.stride
        start = first // step * step
        keys = np.arange(start, min(self.n_frames, start + step * count), step)
        last = self.n_frames - 1
        if len(keys) < count and keys[-1] != last and last - keys[-1] >= 1:
            keys = np.append(keys, last)
        return keys

    def chunk(self, first: int, count: int | None = None) -> list[tuple[int, np.ndarray]]:
        """The frames from `first` (rounded up to the stride) through the keyframes of the next
        `count` (default: batch_size) UNet frames: [(frame index, uint8 (H, W, 3))]."""
        self.take_up()
        count = count or self.batch_size
        stride = self.stride
        first = min(-(-first // stride) * stride, self.n_frames - 1)
        keys = self.keyframes(first, count + 1)
        x0 = self.pipe.denoise(*self._inputs(keys))
        frames = np.arange(first, int(keys[-1]) + (1 if keys[-1] == self.n_frames - 1 else 0), stride)
        frames = frames[frames <= keys[-1]]
        if len(frames) == 0:
            frames = np.array([first])
        a = np.clip(np.searchsorted(keys, frames, side="right") - 1, 0, len(keys) - 1)
        b = np.minimum(a + 1, len(keys) - 1)
        span = np.maximum(keys[b] - keys[a], 1)
        t = mx.array(((frames - keys[a]) / span).astype(np.float32))[:, None, None, None]
        latents = (1 - t) * x0[mx.array(a)] + t * x0[mx.array(b)]  # a keyframe: t = 0, its own x0
        images = np.array(self.pipe.decode(latents, self.vae))
        return list(zip(frames.tolist(), images))

    def adapt(self, frames_per_second: float) -> bool:
        """One step along PACES when generation (frames made per second of wall time, at this pace)
        falls short of the frames the song needs at this pace, or one step back when it has well
        over twice the room; True if the pace changed."""
        need = self.fps / self.stride
        if frames_per_second < 1.1 * need and self.pace < len(PACES) - 1:
            self.pace += 1
            return True
        if self.pace > 0 and frames_per_second > 3.0 * self.fps / PACES[self.pace - 1][1]:
            self.pace -= 1
            return True
        return False


class Generator:
    """Runs `SongFrames` ahead of the playhead: always the first frame not yet made from the playhead
    on (or, while playing, from the first that can still be made before it is due), at most `ahead`
    seconds past it; each frame goes to `publish(index, jpeg)`.

    `run()` works on the calling thread until `stop()`: the thread that loaded the model (mlx
    evaluates a graph on the thread whose streams built it). The other methods may be called from
    any thread (the server's).
    """

    def __init__(self, frames: SongFrames, publish, ahead: float = 3.0, quality: int = 85):
        self.frames, self.publish, self.ahead, self.quality = frames, publish, ahead, quality
        self.playhead = 0.0  # seconds: where the page plays
        self.playing = False
        self.made = set()  # frames made with the current settings, from about the playhead on
        self.generated = 0
        self.chunks = 0
        self.latency = 0.0  # seconds: wall time of the last chunk, from its start to its frames encoded
        self.latencies = deque(maxlen=1000)  # seconds: the latest chunks' latencies, for the benchmark
        self.rate = 0.0  # frames made per second of wall time, smoothed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._made_lock = threading.Lock()
        self.error = None

    def seek(self, seconds: float) -> None:
        """The page plays from `seconds` now."""
        self.follow(seconds, self.playing)

    def follow(self, seconds: float, playing: bool = True) -> None:
        """The page's clock, and whether it plays."""
        self.playhead, self.playing = max(0.0, float(seconds)), bool(playing)
        self._wake.set()

    def next_frame(self) -> int:
        """The first frame to make, on the pace's stride, not made yet: while playing, from when a chunk
        made now would be ready; paused, from the frame shown at the playhead (a frame skipped while
        playing, there, would leave the buffer empty and the page waiting for ever)."""
        fps, stride = self.frames.fps, self.frames.stride
        if self.playing:  # the first that can still be made before it is due
            k = int(np.ceil((self.playhead + 1.5 * self.latency) * fps - 1e-6) // stride * stride)
        else:  # paused or holding: the frame the page shows now, then on (as `buffered` counts them)
            k = int(self.playhead * fps) // stride * stride
        with self._made_lock:
            while k < self.frames.n_frames and k in self.made:
                k += stride
        return k

    def buffered(self) -> float:
        """Seconds of frames made from the playhead on, without a gap."""
        fps, stride = self.frames.fps, self.frames.stride
        frame = end = int(self.playhead * fps)
        with self._made_lock:
            while end < self.frames.n_frames and (end in self.made or end // stride * stride in self.made):
                end += 1
        return (end - frame) / fps

    def change(self, **changes):
        """New settings (see `SongFrames.change`); the frames made more than `REACT` seconds past the
        playhead are made again with them, so that a change shows soon."""
        settings = self.frames.change(**changes)
        keep = int((self.playhead + REACT) * self.frames.fps)
        with self._made_lock:
            self.made = {k for k in self.made if k <= keep}
        self._wake.set()
        return settings

    def hold(self) -> float:
        """Seconds of frames the page should gather before it plays: enough to last to the song's end
        at the current rate of generation (as a video player does), at least MIN_HOLD, at most MAX_HOLD."""
        fps = self.frames.fps
        remaining = max(0.0, self.frames.n_frames / fps - self.playhead)
        need = fps / self.frames.stride
        short = 0.0 if self.rate <= 0 or self.rate >= need else remaining * (1 - self.rate / need)
        return min(remaining, max(MIN_HOLD, min(short, MAX_HOLD)))

    def analysis(self) -> dict:
        """What /stats adds for this kind of generator: nothing (a song's analysis is done up front)."""
        return {}

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def horizon(self) -> float:
        """Seconds past the playhead to make frames for: `ahead`, or while generation is slower than the
        song, as far as the page must gather before it plays (else it would wait for ever)."""
        return max(self.ahead, self.hold() + self.frames.stride / self.frames.fps)

    def step(self) -> bool:
        """Make the next chunk of frames due within the horizon; False if none is due."""
        fps = self.frames.fps
        first = self.next_frame()
        if first >= min(self.frames.n_frames, int((self.playhead + self.horizon()) * fps) + 1):
            self.frames.take_up()  # a change asked for while nothing is due
            return False
        t0 = time.perf_counter()
        made = self.frames.chunk(first)
        for index, image in made:
            self.publish(index, encode_jpeg(image, self.quality))
        with self._made_lock:
            self.made.update(index for index, _ in made)
        self.generated += len(made)
        self.chunks += 1
        self.latency = time.perf_counter() - t0
        self.latencies.append(self.latency)
        rate = len(made) / max(self.latency, 1e-6)
        self.rate = rate if self.rate == 0 else 0.7 * self.rate + 0.3 * rate
        if self.chunks > WARM_UP_CHUNKS and self.frames.adapt(self.rate):
            self.rate = 0.0
        floor = int(self.playhead * fps) - int(2 * fps)
        with self._made_lock:
            self.made = {k for k in self.made if k >= floor}
        return True

    def run(self) -> None:
        """Make frames until `stop()`, waiting for the playhead to move when none is due."""
        while not self._stop.is_set():
            if not self.step():
                self._wake.wait(0.05)
                self._wake.clear()
