"""The two walkers: the beat-synced circular walk of the input noise, and the 12-note prompt walk.

Schedules (one angle or weight vector per video frame) are small numpy arrays computed once;
the latents and embeddings themselves are made in mlx per batch of frames on demand, so a
10-minute song never holds all its latents at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .audio import NOTE_NAMES, AudioFeatures
from .errors import MusicvizError

GRID_BEATS = {"quarter": 1, "half": 2, "whole": 4}


def cubic_in_out(x: np.ndarray) -> np.ndarray:
    """Cubic ease-in-out on [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x < 0.5, 4 * x**3, 1 - (-2 * x + 2) ** 3 / 2)


def _standardize(x: mx.array, axes=(1, 2, 3)) -> mx.array:
    mean = x.mean(axis=axes, keepdims=True)
    x = x - mean
    return x * mx.rsqrt(mx.square(x).mean(axis=axes, keepdims=True) + 1e-12)


@dataclass
class NoiseWalkConfig:
    distance: float = 0.25  # fraction of a full turn per step at full power
    grid: str = "quarter"  # step on every beat (quarter), every 2nd (half) or 4th (whole)
    min_interval: float = 0.25  # seconds: beats closer than this are merged
    max_speed: float = 1.5  # radians per second: cap on the instantaneous angular speed
    drift: float = 0.05  # radians per second: slow motion even in silence
    regional: bool = True  # bass drives the bottom of the image, treble the top
    regional_strength: float = 0.35  # radians at full band energy
    fallback_step: float = 2.0  # seconds a step takes at full loudness when there is no steady beat

    def __post_init__(self):
        self.check()  # at once, before the audio analysis: the CLI's options arrive here

    def check(self) -> None:
        """Raise MusicvizError for a grid or distance the walk cannot take."""
        if self.grid not in GRID_BEATS:
            raise MusicvizError(f"grid must be one of {', '.join(GRID_BEATS)}")
        if not 0 <= self.distance <= 1:  # NaN too
            raise MusicvizError(f"motion must be from 0 (still) to 1 (a full turn a step), got {self.distance}")


def angle_schedule(features: AudioFeatures, config: NoiseWalkConfig) -> np.ndarray:
    """θ_k (radians) per video frame: eased steps on the beat grid, powered by percussion; for music
    without a steady beat (features.steady_beat False) a flow that follows loudness and onsets
    (`flowing_angles`)."""
    config.check()
    if not features.steady_beat or len(features.beat_times) < 2:
        return flowing_angles(features, config)
    n = features.n_frames
    times = features.times
    marks = np.asarray(features.beat_times, dtype=np.float64)[:: GRID_BEATS[config.grid]]
    kept = []
    for t in marks:  # merging beats that are too close keeps fast music calm
        if not kept or t - kept[-1] >= config.min_interval:
            kept.append(t)
    marks = np.array(kept + [max(features.duration, (kept[-1] if kept else 0) + 1e-3)])
    power = np.maximum(features.onset_strength, 0.5 * features.loudness)
    theta = np.zeros(n)
    start_angle = 0.0
    for a, b in zip(marks[:-1], marks[1:]):
        span = max(b - a, 1e-3)
        sel = (times >= a) & (times < b)
        p = float(power[sel].mean()) if sel.any() else 0.0
        # Cubic in-out peaks at 3x its mean speed: cap the peak, drift included.
        step = min(p * config.distance * 2 * np.pi, max(config.max_speed - config.drift, 0.0) * span / 3)
        theta[sel] = start_angle + step * cubic_in_out((times[sel] - a) / span)
        start_angle += step
    theta[times < marks[0]] = 0.0
    return theta + config.drift * times


FLOW_SMOOTHING = 0.25  # seconds: Gaussian smoothing of the loudness the flowing walk's speed follows
ACCENT_SECONDS = 0.3  # seconds: an onset's surge of the flowing walk, eased in and out


def flowing_angles(features: AudioFeatures, config: NoiseWalkConfig) -> np.ndarray:
    """θ_k (radians) per video frame for music without a steady beat: no clock, a flow whose angular
    speed follows the loudness (smoothed over FLOW_SMOOTHING seconds), at full loudness a step
    (config.distance of a turn) every config.fallback_step seconds, and each onset a surge, in
    proportion to its salience (`audio.onset_salience`: noise's onsets barely count) and the
    loudness, eased over ACCENT_SECONDS. Speeds are capped as the beat walk's are: the flow at a third
    of max_speed (the beat walk's mean speed at its cap), a full surge's peak and the whole at
    max_speed, drift included.
    """
    from scipy.ndimage import gaussian_filter1d

    n, fps = features.n_frames, features.fps
    loud = np.asarray(features.loudness, dtype=np.float64)
    if n > 1:
        loud = gaussian_filter1d(loud, FLOW_SMOOTHING * fps, mode="nearest")
    cap = max(config.max_speed - config.drift, 0.0)  # radians per second
    step = config.distance * 2 * np.pi  # radians
    speed = loud * min(step / config.fallback_step, cap / 3)
    salience = np.asarray(features.onset_salience, dtype=np.float64)
    if len(salience) != len(features.onset_times):
        salience = np.zeros(len(features.onset_times))
    span = max(1, int(round(ACCENT_SECONDS * fps)))
    shape = np.diff(cubic_in_out(np.linspace(0.0, 1.0, span + 1)))  # sums to 1
    surge = min(step, cap * ACCENT_SECONDS / 3)  # radians: a full surge peaks at the cap
    for k, s in zip(features.onset_frames, salience):
        part = shape[: n - k]
        speed[k:k + len(part)] += surge * s * loud[k] * fps * part
    speed = np.minimum(speed, cap)
    theta = np.concatenate([[0.0], np.cumsum(speed[:-1]) / fps])
    return theta + config.drift * features.times


class NoiseWalker:
    """Latents for frame k: cos θ_k · N₁ + sin θ_k · N₂, standardised to zero mean, unit variance.

    N₁ and N₂ come from the seed; N₂ is made orthogonal to N₁ with the same norm, so the walk is
    a true circle. With regional reactivity the angle varies down the image: the bottom third
    adds the bass energy, the top third the treble energy.
    """

    def __init__(self, features: AudioFeatures, shape: tuple[int, int, int], seed: int = 0,
                 config: NoiseWalkConfig | None = None):
        self.config = config or NoiseWalkConfig()
        self.features = features
        h = shape[0]
        self.n1, self.n2 = circle_noise(shape, seed)
        self.theta = angle_schedule(features, self.config)
        # Vertical masks (top, middle, bottom) in latent rows; they sum to 1 at every row.
        rows = np.linspace(0.0, 1.0, h)
        top = np.clip(1.5 - 3 * rows, 0, 1)
        bottom = np.clip(3 * rows - 1.5, 0, 1)
        self._masks = {"treble": top, "bass": bottom}
        mx.eval(self.n1, self.n2)

    def angles(self, frames) -> np.ndarray:
        """(len(frames), h) angle of each latent row for these frames."""
        frames = np.asarray(frames)
        base = self.theta[frames][:, None]
        h = self.n1.shape[1]
        out = np.repeat(base, h, axis=1)
        if self.config.regional:
            for band, mask in self._masks.items():
                out = out + self.config.regional_strength * self.features.bands[band][frames][:, None] * mask[None]
        return out

    def latents(self, frames) -> mx.array:
        """(len(frames), h, w, c) float32 latents for these video frames."""
        a = mx.array(self.angles(frames).astype(np.float32))[:, :, None, None]
        return _standardize(mx.cos(a) * self.n1 + mx.sin(a) * self.n2)


def circle_noise(shape: tuple[int, int, int], seed: int = 0) -> tuple[mx.array, mx.array]:
    """The noise walk's two orthogonal, standardized (1, h, w, c) latents for `seed`: the walk at
    angle θ is cos θ · n1 + sin θ · n2, so n1 is where its circle starts."""
    k1, k2 = mx.random.split(mx.random.key(seed))
    n1 = _standardize(mx.random.normal((1, *shape), key=k1))
    n2 = mx.random.normal((1, *shape), key=k2)
    n2 = n2 - (n2 * n1).sum() / (n1 * n1).sum() * n1
    return n1, _standardize(n2)


def slerp(a: mx.array, b: mx.array, t: mx.array) -> mx.array:
    """Spherical interpolation of vectors along the last axis; t broadcasts over leading axes."""
    na = mx.linalg.norm(a, axis=-1, keepdims=True)
    nb = mx.linalg.norm(b, axis=-1, keepdims=True)
    cos = mx.clip((a * b).sum(axis=-1, keepdims=True) / (na * nb + 1e-12), -1.0, 1.0)
    omega = mx.arccos(cos)
    so = mx.sin(omega)
    safe = so > 1e-4
    wa = mx.where(safe, mx.sin((1 - t) * omega) / mx.where(safe, so, 1.0), 1 - t)
    wb = mx.where(safe, mx.sin(t * omega) / mx.where(safe, so, 1.0), t)
    return wa * a + wb * b


@dataclass
class PromptWalkConfig:
    mode: str = "focus"  # "focus" or "cumulative"
    max_alpha: float = 0.6  # cap on how far the walk leaves the base prompt
    smoothing: float = 0.25  # seconds: Gaussian smoothing of the weights in time
    top_k: int = 3  # notes blended in cumulative mode
    crossfade: float = 2.0  # seconds: crossfade between section prompts


def note_weights(features: AudioFeatures, config: PromptWalkConfig) -> np.ndarray:
    """(n_frames, 12) weight of each note prompt per frame; rows sum to at most max_alpha."""
    from scipy.ndimage import gaussian_filter1d

    if config.mode not in ("focus", "cumulative"):
        raise MusicvizError(f"prompt walk mode must be 'focus' or 'cumulative', not {config.mode!r}")
    n = features.n_frames
    weights = np.zeros((n, 12))
    onsets = np.unique(features.onset_frames) if len(features.onset_times) else np.zeros(0, int)
    held = np.zeros(12)
    starts = list(onsets) + [n]
    for k, nxt in zip(starts[:-1], starts[1:]):
        chroma = features.chroma[k]
        if config.mode == "focus":
            # the note whose chroma rose most at this onset; strength from its magnitude
            note = int(np.argmax(features.chroma_delta[k])) if features.chroma_delta[k].max() > 0 else int(np.argmax(chroma))
            held = np.zeros(12)
            held[note] = config.max_alpha * float(chroma[note])
        else:
            top = np.argsort(chroma)[::-1][: config.top_k]
            held = np.zeros(12)
            total = float(chroma[top].sum())
            if total > 0:
                held[top] = config.max_alpha * chroma[top] / total * float(chroma[top].max())
        weights[k:nxt] = held
    sigma = config.smoothing * features.fps
    if sigma > 0 and n > 1:
        weights = gaussian_filter1d(weights, sigma, axis=0, mode="nearest")
    total = weights.sum(axis=1, keepdims=True)
    scale = np.where(total > config.max_alpha, config.max_alpha / np.maximum(total, 1e-12), 1.0)
    return np.nan_to_num(weights * scale)


class PromptWalker:
    """Per-frame prompt embeddings between the base prompt(s) and the 12 note prompts.

    base: (S, 77, D) embeddings, one per section (S = 1 without a section schedule);
    notes: (12, 77, D) embeddings of the note prompts (C, C#, ..., B). Both encoded once.
    """

    def __init__(self, features: AudioFeatures, base: mx.array, notes: mx.array,
                 config: PromptWalkConfig | None = None):
        if notes.shape[0] != 12:
            raise MusicvizError(f"need 12 note prompts (C to B), got {notes.shape[0]}")
        self.config = config or PromptWalkConfig()
        self.features = features
        self.base, self.notes = base, notes
        self.weights = note_weights(features, self.config).astype(np.float32)
        self.section_mix = self._section_mix(base.shape[0])

    def _section_mix(self, s: int) -> np.ndarray:
        """(n_frames, S) crossfade weights of the section base prompts."""
        f = self.features
        mix = np.zeros((f.n_frames, s), dtype=np.float32)
        if s == 1:
            mix[:] = 1
            return mix
        bounds = list(f.section_times) if len(f.section_times) else [0.0]
        section = np.minimum(f.section_of_frames(), len(bounds) - 1) % s
        mix[np.arange(f.n_frames), section] = 1
        half = self.config.crossfade / 2
        for i, b in enumerate(bounds[1:], start=1):
            sel = np.abs(f.times - b) < half
            if sel.any() and half > 0:
                x = (f.times[sel] - (b - half)) / (2 * half)
                prev, cur = (i - 1) % s, i % s
                mix[sel] = 0
                mix[sel, prev] = 1 - x
                mix[sel, cur] += x
        return mix

    def dominant_notes(self) -> list[str | None]:
        """Name of the strongest note per frame (None where the base prompt holds)."""
        idx = self.weights.argmax(axis=1)
        return [NOTE_NAMES[i] if self.weights[k, i] > 1e-3 else None for k, i in enumerate(idx)]

    def embeddings(self, frames) -> mx.array:
        """(len(frames), 77, D) prompt embeddings for these video frames."""
        frames = np.asarray(frames)
        mix = mx.array(self.section_mix[frames])  # (B, S)
        base = mx.einsum("bs,sld->bld", mix, self.base)
        return mix_embeddings(base, self.notes, self.weights[frames], self.config)


def mix_embeddings(base: mx.array, notes: mx.array, weights: np.ndarray, config: PromptWalkConfig) -> mx.array:
    """(B, 77, D) embeddings between `base` ((B or 1, 77, D)) and the 12 `notes` ((12, 77, D)) by note
    `weights` ((B, 12), rows summing to at most 1): in focus mode the slerp from the base toward the
    weighted note prompt, in cumulative mode the linear blend."""
    w = mx.array(np.asarray(weights, dtype=np.float32))
    alpha = w.sum(axis=1)[:, None, None]
    if config.mode == "cumulative":
        return (1 - alpha) * base + mx.einsum("bn,nld->bld", w, notes)
    target = mx.einsum("bn,nld->bld", w / mx.maximum(alpha[:, :, 0], 1e-12), notes)
    target = mx.where(alpha > 1e-6, target, base)
    return slerp(base, target, alpha)
