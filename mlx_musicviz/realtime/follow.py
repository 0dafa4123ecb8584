"""Frames that follow a live input (a microphone, line-in or loopback): the causal analyzer's
features drive the walks as the sound arrives, with no look-ahead.

Latency compensation: a frame made now is seen `latency` seconds later (capture + analysis +
generation + display, measured as it runs), so it is drawn for that moment. The noise walk's eased
step is centred on each beat the tracker predicts from tempo and phase, so the motion on screen is
fastest on the audible beat, not a latency after it.
"""

from __future__ import annotations

import threading
import time

import mlx.core as mx
import numpy as np

from ..audio import SAMPLE_RATE
from ..checks import frame_size
from ..walkers import NoiseWalkConfig, PromptWalkConfig, _standardize, circle_noise, cubic_in_out, mix_embeddings
from .analyzer import CausalAnalyzer
from .engine import LiveSettings, encode_jpeg, walk_prompts

POWER_HALF_LIFE = 1.0  # seconds: how fast the held power falls when the sound does
DISPLAY_LATENCY = 0.03  # seconds from a frame's arrival in the page to the screen (decode, next refresh)


class BeatSteps:
    """The noise walk's angle (radians) at a stream time, for live input: an eased step (cubic in-out,
    fastest in its middle) centred on each predicted beat, sized by the sound's power; with no tempo,
    a slow turn at a speed that follows loudness. Times must come in increasing order."""

    def __init__(self, config: NoiseWalkConfig):
        self.config = config
        self.base = 0.0  # radians of the steps completed
        self.step = None  # (start, end, size): the step under way or next
        self.last = None  # the last time asked (seconds)

    def angle(self, t: float, beats: np.ndarray, period: float, power: float) -> float:
        """θ(t): `beats` are the predicted beat times (seconds) from about half a period before t,
        `period` the beat period (seconds, 0 while unknown), `power` the sound's level in [0, 1]."""
        c = self.config
        dt = 0.0 if self.last is None else max(0.0, t - self.last)
        self.last = t
        if self.step is not None and t >= self.step[1]:
            self.base += self.step[2]
            self.step = None
        if period <= 0 or len(beats) == 0:
            if self.step is None:  # no beat: a turn whose speed follows the loudness
                self.base += dt * min(c.max_speed, power * c.distance * 2 * np.pi / 2)
            return self._at(t)
        if self.step is None:
            beat = beats[np.searchsorted(beats, t - period / 2)] if beats[-1] >= t - period / 2 else beats[-1] + period
            size = min(power * c.distance * 2 * np.pi, max(c.max_speed - c.drift, 0.0) * period / 3)
            self.step = (beat - period / 2, beat + period / 2, size)
        return self._at(t)

    def _at(self, t: float) -> float:
        theta = self.base
        if self.step is not None and t > self.step[0]:
            start, end, size = self.step
            theta += size * float(cubic_in_out(np.array([(t - start) / (end - start)]))[0])
        return theta + self.config.drift * t


class InputFrames:
    """Frames of a live input, one at a time, each drawn for the moment it will be seen."""

    def __init__(self, pipe, settings: LiveSettings, size=256, vae: str = "auto", rate: int = SAMPLE_RATE):
        self.pipe, self.vae = pipe, vae
        self.width, self.height = frame_size(size)
        self.analyzer = CausalAnalyzer(rate)
        self.lock = threading.Lock()
        self.latest = None  # the analyzer's newest Frame
        self.weights = np.zeros(12, np.float32)  # the prompt walk's note weights, smoothed
        self._power_t, self._power_held = None, 0.0  # see `_power`
        self.cadence, self.stride, self.n_frames = 1, 1, 0
        self.steps = None  # the noise walk's angle, kept across changes of settings
        self._set(settings.check())

    def _set(self, settings: LiveSettings) -> None:
        self.settings = settings
        self.embeds = self.pipe.encode_prompt(walk_prompts(settings.prompt))
        shape = self.pipe.latent_shape(self.height, self.width)[1:]
        self.n1, self.n2 = circle_noise(shape, settings.seed)
        rows = np.linspace(0.0, 1.0, shape[0])
        self.masks = {"treble": np.clip(1.5 - 3 * rows, 0, 1), "bass": np.clip(3 * rows - 1.5, 0, 1)}
        self.config = NoiseWalkConfig(distance=settings.motion, grid=settings.grid)
        if self.steps is None:
            self.steps = BeatSteps(self.config)
        else:  # the same walk under the new config: the angle goes on from where it is
            self.steps.config = self.config
        mx.eval(self.embeds, self.n1, self.n2)

    def feed(self, block: np.ndarray) -> None:
        """Samples as they arrive (the capture thread)."""
        with self.lock:
            for frame in self.analyzer.process(block):
                self.latest = frame

    def frame_for(self, t: float) -> np.ndarray:
        """uint8 (H, W, 3): the frame to be seen at stream time `t` (seconds)."""
        with self.lock:
            latest, tempo = self.latest, self.analyzer.tempo
            period = 60.0 / tempo if tempo > 0 else 0.0
            beats = self.analyzer.next_beats(t - period, 4) if period else np.zeros(0)
        power = self._power(latest, t)
        theta = self.steps.angle(t, beats, period, power)
        angles = np.full(self.n1.shape[1], theta)
        if latest is not None and self.config.regional:
            for band, mask in self.masks.items():
                angles = angles + self.config.regional_strength * latest.bands[band] * mask
        a = mx.array(angles.astype(np.float32))[None, :, None, None]
        latents = _standardize(mx.cos(a) * self.n1 + mx.sin(a) * self.n2)
        embeds = mix_embeddings(self.embeds[:1], self.embeds[1:], self._note_weights(latest)[None],
                                PromptWalkConfig(mode=self.settings.mode))
        return np.array(self.pipe.generate(latents, embeds, vae=self.vae))[0]

    def _power(self, latest, t: float) -> float:
        """The sound's recent power in [0, 1]: its onset strength or half its loudness, held with a fast
        attack and a release of about two seconds, so that a step chosen between two beats is sized by
        the beats, not by the quiet between them."""
        now = 0.0 if latest is None else max(latest.onset, 0.5 * latest.loudness)
        since = 0.0 if self._power_t is None else max(0.0, t - self._power_t)
        self._power_t, self._power_held = t, max(now, self._power_held * 0.5 ** (since / POWER_HALF_LIFE))
        return self._power_held

    def _note_weights(self, latest) -> np.ndarray:
        """The prompt walk's 12 note weights: toward the strongest note (focus) or the top three
        (cumulative), smoothed over about a quarter of a second."""
        config = PromptWalkConfig(mode=self.settings.mode)
        target = np.zeros(12, np.float32)
        if latest is not None and latest.chroma.max() > 0:
            chroma = latest.chroma
            top = np.argsort(chroma)[::-1][: 1 if config.mode == "focus" else config.top_k]
            target[top] = config.max_alpha * chroma[top] / max(float(chroma[top].sum()), 1e-6) * float(chroma.max())
            target *= min(1.0, latest.loudness * 2)
        self.weights += 0.3 * (target - self.weights)
        return self.weights


class InputGenerator:
    """Makes `InputFrames` as fast as it can, each for the moment it will be seen, on the calling
    thread (the model's), until `stop()`; the same interface as `engine.Generator` for the server."""

    def __init__(self, frames: InputFrames, publish, capture_latency: float, quality: int = 85):
        self.frames, self.publish, self.quality = frames, publish, quality
        self.capture_latency = capture_latency  # seconds from the sound to its samples reaching `feed`
        self.generated = 0
        self.latency = capture_latency + DISPLAY_LATENCY  # seconds, from sound to screen (measured as it runs)
        self.rate = 0.0
        self.error = None
        self._pending = None
        self._stop = threading.Event()

    def buffered(self) -> float:
        return 0.0

    def hold(self) -> float:
        return 0.0

    def analysis(self) -> dict:
        """What the causal analyzer has found so far, for /stats."""
        analyzer = self.frames.analyzer
        return {"beats": len(analyzer.beat_times), "onsets": len(analyzer.onset_times),
                "tempo_bpm": round(analyzer.tempo, 2), "input_s": round(analyzer.now, 3)}

    def follow(self, seconds: float, playing: bool = True) -> None:  # the page's clock means nothing here
        pass

    def seek(self, seconds: float) -> None:
        pass

    def change(self, **changes) -> LiveSettings:
        from dataclasses import replace

        settings = replace(self._pending or self.frames.settings, **changes).check()
        self._pending = settings
        return settings

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        generation = 0.05
        while not self._stop.is_set():
            if self._pending is not None:
                settings, self._pending = self._pending, None
                self.frames._set(settings)
            if self.frames.latest is None:  # no sound has arrived yet
                time.sleep(0.01)
                continue
            t0 = time.perf_counter()
            self.latency = self.capture_latency + self.frames.analyzer.lookahead_s + generation + DISPLAY_LATENCY
            seen_at = self.frames.analyzer.now + self.latency
            image = self.frames.frame_for(seen_at)
            self.publish(self.generated, seen_at, encode_jpeg(image, self.quality))
            self.generated += 1
            spent = time.perf_counter() - t0
            generation = spent if self.generated == 1 else 0.8 * generation + 0.2 * spent
            self.rate = 1.0 / max(generation, 1e-6)
