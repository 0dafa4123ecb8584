"""Audio <-> mel-spectrogram images (training sets for image diffusion models, and back to sound).

Image format (documented in the README):
- one column per STFT frame (hop `hop_length` samples), one row per mel band, low frequencies at
  the bottom; tiles of `tile_width` columns (the last one padded with silence);
- values: mel magnitude (power 1) scaled to [0, 1] by either `"db"` (dB relative to `ref_db`,
  floor at `ref_db - top_db`) or `"power"` (x / max_value) ** image_power, then to 8 bits;
  `inverted` stores 255 - value (Riffusion's convention: black is loud);
- mono as grayscale; stereo as RGB with the left channel in red and the right in green;
- every parameter needed to invert the image is in the PNG text chunk "musicviz-mel" (JSON),
  with the tile's index and its count of valid columns.

The "riffusion" preset reproduces Riffusion's images (44.1 kHz, hop 441, window 4410,
n_fft 17640, 512 HTK mel bands 0-10 kHz without normalization, power 0.25, max value 30e6,
inverted, flipped), so images from that ecosystem convert too.
Inversion: mel -> linear magnitude by non-negative least squares (multiplicative updates), then Griffin-Lim with
momentum; consecutive tiles are joined before phase recovery, so there is no seam to click.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .audio import decode_file, find_audio, finite_samples, output_stem
from .errors import MusicvizError
from .files import atomic_output, check_output_path

METADATA_KEY = "musicviz-mel"


MAX_SIDE = 65535  # pixels: the most a PNG tile's side may be here (height = mel bands, width = columns)
MAX_SAMPLES = 1 << 20  # the largest sample rate, FFT and hop (an FFT of 1 Mi samples is 24 s at 44.1 kHz)


@dataclass(frozen=True)
class MelParams:
    sample_rate: int = 44100
    n_fft: int = 4096
    win_length: int = 4096
    hop_length: int = 512  # 11.6 ms a column at 44.1 kHz: a 512-column tile is 5.9 s
    n_mels: int = 512
    f_min: float = 0.0
    f_max: float = 16000.0
    htk: bool = False
    mel_norm: str | None = "slaney"
    scale: str = "db"  # "db" or "power"
    top_db: float = 80.0  # db: the range mapped to 0..255
    ref_db: float | None = None  # db: the level mapped to 255; None = the song's loudest band
    image_power: float = 0.25  # power: exponent after dividing by max_value
    max_value: float | None = None  # power: the magnitude mapped to 255; None = the song's maximum
    inverted: bool = False
    stereo: bool = False
    tile_width: int = 512

    def check(self) -> "MelParams":
        if self.scale not in ("db", "power"):
            raise MusicvizError(f"scale must be 'db' or 'power', not {self.scale!r}")
        if min(self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.tile_width, self.win_length) <= 0:
            raise MusicvizError("sample rate, n_fft, hop, window, mel bands and tile width must be positive")
        if max(self.n_mels, self.tile_width) > MAX_SIDE:
            raise MusicvizError(f"mel bands and tile width are the image's sides: at most {MAX_SIDE} each")
        if max(self.n_fft, self.hop_length, self.sample_rate) > MAX_SAMPLES:
            raise MusicvizError(f"sample rate, n_fft and hop must be at most {MAX_SAMPLES}")
        if self.win_length > self.n_fft:
            raise MusicvizError(f"window {self.win_length} is longer than n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise MusicvizError(f"need 0 <= f_min < f_max <= {self.sample_rate / 2:g} Hz")
        return self


PRESETS = {
    "default": MelParams(),
    "riffusion": MelParams(sample_rate=44100, n_fft=17640, win_length=4410, hop_length=441, n_mels=512, f_min=0.0,
                           f_max=10000.0, htk=True, mel_norm=None, scale="power", image_power=0.25,
                           max_value=30e6, inverted=True),
}


def mel_basis(p: MelParams) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.n_mels, fmin=p.f_min, fmax=p.f_max,
                               htk=p.htk, norm=p.mel_norm)


def mel_magnitude(y: np.ndarray, p: MelParams) -> np.ndarray:
    """(n_mels, frames) mel magnitudes (power 1) of mono samples `y` at p.sample_rate: librosa's centred
    STFT (zero padding), then the mel filters."""
    return np.concatenate([mel for _, mel in mel_tiles(y, p)], axis=1)


def mel_tiles(y: np.ndarray, p: MelParams):
    """(first frame, (n_mels, up to p.tile_width frames) mel magnitudes) for each tile of `y`, as
    `mel_magnitude` gives them, one tile's STFT at a time: a song's spectrogram is never held whole.

    Frame t of librosa's centred STFT is the window at sample t * hop of the signal padded with n_fft // 2
    zeros each side; a tile's frames are the uncentred STFT of their stretch of that padded signal."""
    import librosa

    basis = mel_basis(p)
    half = p.n_fft // 2
    padded = np.pad(np.asarray(y, np.float32), half)
    frames = 1 + len(y) // p.hop_length
    for start in range(0, frames, p.tile_width):
        stop = min(frames, start + p.tile_width)
        stretch = padded[start * p.hop_length:(stop - 1) * p.hop_length + p.n_fft]
        stft = np.abs(librosa.stft(stretch, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length,
                                   center=False))
        yield start, basis @ stft


def to_unit(mel: np.ndarray, p: MelParams) -> np.ndarray:
    """Mel magnitudes -> [0, 1] image values (not yet inverted or flipped)."""
    if p.scale == "db":
        db = 20 * np.log10(np.maximum(mel, 1e-10))
        return np.clip((db - (p.ref_db - p.top_db)) / p.top_db, 0, 1)
    return np.clip(mel / p.max_value, 0, 1) ** p.image_power


def from_unit(values: np.ndarray, p: MelParams) -> np.ndarray:
    """[0, 1] image values -> mel magnitudes (black, 0, is silence)."""
    if p.scale == "db":
        mel = 10 ** ((values * p.top_db + p.ref_db - p.top_db) / 20)
        return np.where(values <= 0, 0.0, mel)
    return values ** (1 / p.image_power) * p.max_value


# -- audio -> images ------------------------------------------------------------------------------


def audio_to_images(samples: np.ndarray, p: MelParams, name: str = "") -> list[tuple]:
    """[(PIL image, metadata dict)] tiles of one song. samples: (n,) mono or (channels, n) at p.sample_rate."""
    from PIL import Image

    p.check()
    samples = np.atleast_2d(finite_samples(samples))
    channels = [samples[0], samples[min(1, len(samples) - 1)]] if p.stereo else [samples.mean(axis=0)]
    # two passes over the tiles, one STFT tile at a time: the song's peak first (the level the tiles record)
    peak = max(float(mel.max(initial=0.0)) for c in channels for _, mel in mel_tiles(c, p))
    if p.scale == "db" and p.ref_db is None:
        p = replace(p, ref_db=float(20 * np.log10(max(peak, 1e-10))))
    if p.scale == "power" and p.max_value is None:
        p = replace(p, max_value=max(peak, 1e-10))
    images = []
    for index, tiles in enumerate(zip(*(mel_tiles(c, p) for c in channels))):
        planes = [to_unit(mel, p) for _, mel in tiles]
        valid = planes[0].shape[1]
        tile = np.zeros((len(planes), p.n_mels, p.tile_width))
        for c, plane in enumerate(planes):
            tile[c, :, :valid] = plane
        pixels = np.round(tile * 255).astype(np.uint8)
        if p.inverted:
            pixels = 255 - pixels
        pixels = pixels[:, ::-1, :]  # low frequencies at the bottom
        if p.stereo:
            rgb = np.stack([pixels[0], pixels[1], (pixels[0] // 2 + pixels[1] // 2)], axis=-1)
            image = Image.fromarray(rgb, mode="RGB")
        else:
            image = Image.fromarray(pixels[0], mode="L")
        images.append((image, {**asdict(p), "tile": index, "columns": valid, "source": name}))
    return images


def save_png(image, metadata: dict, path: Path) -> None:
    """Write atomically, with `metadata` as JSON in the PNG text chunk METADATA_KEY."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(metadata))
    with atomic_output(path, make_parents=True) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def folder_to_images(src: Path, out: Path, p: MelParams, progress=None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every audio file under `src` -> PNG tiles in `out` (mirroring sub-folders).

    Returns (written PNGs, [(unreadable file, why)]); unreadable files are skipped, not fatal.
    progress: called as progress(done_files, total_files, path).
    """
    p.check()
    src, out = Path(src), Path(out)
    files = find_audio(src)
    _check_writable(out)
    written, skipped = [], []
    for i, path in enumerate(files):
        try:
            samples = decode_file(path, p.sample_rate, mono=False)  # (channels, n)
            samples = samples if p.stereo else samples.mean(axis=0)  # mono: the channels' mean, as the level it keeps
        except MusicvizError as e:
            skipped.append((path, str(e)))
        else:
            rel = (path.relative_to(src).parent if src.is_dir() else Path()) / output_stem(path)
            for image, meta in audio_to_images(samples, p, path.name):
                target = out / rel.parent / f"{rel.name}_{meta['tile']:04d}.png"
                save_png(image, meta, target)
                written.append(target)
        if progress:
            progress(i + 1, len(files), path)
    return written, skipped


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MusicvizError(f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe-")
        probe.close()
    except OSError as e:
        raise MusicvizError(f"cannot write to {out}: {e.strerror or e}") from None


# -- images -> audio ------------------------------------------------------------------------------


def read_image(path: Path, override: dict | None = None, preset: str | None = None) -> tuple[np.ndarray, MelParams, int]:
    """(values (channels, n_mels, columns) in [0, 1], params, valid columns) of one spectrogram image.

    Parameters come from the image's metadata; a preset or explicit overrides win over it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise MusicvizError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError):
        raise MusicvizError(f"{path} is not an image") from None
    meta = image.info.get(METADATA_KEY)
    fields = set(MelParams.__dataclass_fields__)
    if meta:
        data = json.loads(meta)
        params = MelParams(**{k: v for k, v in data.items() if k in fields})
        columns = int(data.get("columns", image.width))
    elif preset is None and not override:
        raise MusicvizError(f"{path} has no {METADATA_KEY} metadata: give --preset (e.g. riffusion) or the parameters")
    else:
        params, columns = MelParams(), image.width
    if preset is not None:
        if preset not in PRESETS:
            raise MusicvizError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        params = replace(PRESETS[preset], tile_width=params.tile_width)
    if override:
        params = replace(params, **override)
    if params.scale == "db" and params.ref_db is None:
        params = replace(params, ref_db=0.0)
    if params.scale == "power" and params.max_value is None:
        raise MusicvizError(f"{path}: the power scale needs max_value")
    params = replace(params, tile_width=image.width).check()
    if image.height != params.n_mels:
        raise MusicvizError(f"{path} is {image.height} pixels high but the parameters say {params.n_mels} mel bands")
    pixels = np.asarray(image.convert("RGB" if params.stereo else "L"), dtype=np.float64)
    planes = [pixels[..., 0], pixels[..., 1]] if params.stereo else [pixels]
    values = np.stack([pl[::-1, :] for pl in planes]) / 255.0
    if params.inverted:
        values = 1.0 - values
    return values, params, columns


def mel_to_audio(mel: np.ndarray, p: MelParams, iterations: int = 64, seed: int = 0) -> np.ndarray:
    """Mel magnitudes (n_mels, frames) -> samples: NNLS to a linear spectrogram, then Griffin-Lim
    with momentum (`iterations` rounds)."""
    import librosa

    basis = mel_basis(p)
    # Non-negative least squares by multiplicative updates from the clipped pseudo-inverse: a few
    # matrix products, where librosa's L-BFGS NNLS needs memory quadratic in n_fft (Riffusion's 17640).
    linear = np.maximum(np.linalg.pinv(basis) @ mel, 1e-10)
    target = basis.T @ mel
    for _ in range(30):
        linear *= target / np.maximum(basis.T @ (basis @ linear), 1e-12)
    return librosa.griffinlim(linear, n_iter=iterations, hop_length=p.hop_length, win_length=p.win_length,
                              n_fft=p.n_fft, momentum=0.99, init="random", random_state=seed)


def images_to_audio(paths: list[Path], iterations: int = 64, override: dict | None = None,
                    preset: str | None = None, normalize: bool = False) -> tuple[np.ndarray, int]:
    """Consecutive tiles -> (signal ((n,) mono or (2, n) stereo), sample rate in Hz).

    The signal has the level the tiles record (`ref_db` or `max_value`: its mel magnitudes match the
    tiles'), or, with `normalize`, its peak at -1 dBFS. A recorded level that would clip is lowered
    to a -1 dBFS peak, with a `UserWarning` that says by how much."""
    if not paths:
        raise MusicvizError("no images given")
    tiles, params = [], None
    for path in paths:
        values, p, columns = read_image(path, override, preset)
        if params is not None and replace(p, tile_width=0) != replace(params, tile_width=0):
            raise MusicvizError(f"{path} was made with other parameters than {paths[0]}; convert them separately")
        params = params or p
        tiles.append(values[:, :, :columns])
    mels = [from_unit(plane, params) for plane in np.concatenate(tiles, axis=-1)]
    channels = [mel_to_audio(mel, params, iterations) for mel in mels]
    y = np.stack(channels) if len(channels) > 1 else channels[0]
    peak = float(np.abs(y).max())
    if peak == 0:
        return y.astype(np.float32), params.sample_rate
    gain = 10 ** (-1 / 20) / peak if normalize else level_gain(mels, channels, params)
    if not normalize and peak * gain > 1:
        limited = 10 ** (-1 / 20) / peak
        warnings.warn(f"the recorded level would clip: lowered by {20 * np.log10(gain / limited):.1f} dB to a "
                      f"-1 dBFS peak", stacklevel=2)
        gain = limited
    return (y * gain).astype(np.float32), params.sample_rate


def level_gain(mels: list[np.ndarray], channels: list[np.ndarray], p: MelParams) -> float:
    """The gain that gives the signals `channels` the mel magnitudes `mels` (least squares over all
    bands and frames; mel magnitude is linear in the signal's amplitude)."""
    num = den = 0.0
    for target, signal in zip(mels, channels):
        made = mel_magnitude(signal, p)
        n = min(target.shape[1], made.shape[1])
        num += float(np.sum(target[:, :n] * made[:, :n]))
        den += float(np.sum(made[:, :n] ** 2))
    return num / den if den > 0 else 1.0


def check_audio_output(path: str | os.PathLike) -> str:
    """The soundfile format of an output path (WAV or FLAC, by suffix), after checking it can be
    written: call it before the work, so a bad path fails at once."""
    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise MusicvizError(f"output must end in .wav or .flac, not {path.name}")
    check_output_path(path, "audio.wav")
    return fmt


def write_audio(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """WAV or FLAC (by suffix), written atomically."""
    import soundfile

    fmt = check_audio_output(path)
    with atomic_output(path) as tmp:
        soundfile.write(tmp, samples.T if samples.ndim == 2 else samples, sample_rate, format=fmt)
    return path


# -- quality --------------------------------------------------------------------------------------


def round_trip_metrics(original: np.ndarray, restored: np.ndarray, p: MelParams, match_level: bool = True) -> dict:
    """Distance between two mono signals in the mel domain of `p`:
    log-spectral distance (dB, RMS over bands then mean over frames) and spectral convergence
    (||M_a - M_b||_F / ||M_a||_F), after matching their levels unless `match_level` is False; and
    the restored signal's RMS level against the original's (dB)."""
    a = mel_magnitude(np.asarray(original, np.float32), p)
    b = mel_magnitude(np.asarray(restored, np.float32), p)
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n], b[:, :n]
    if match_level:
        b = b * (np.linalg.norm(a) / max(np.linalg.norm(b), 1e-12))
    floor = a.max() * 1e-5  # -100 dB: ignore what neither signal holds
    lsd = np.sqrt(np.mean((20 * np.log10((a + floor) / (b + floor))) ** 2, axis=0)).mean()
    sc = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
    rms = [np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))) for x in (original, restored)]
    level = 20 * np.log10(max(rms[1], 1e-12) / max(rms[0], 1e-12))
    return {"log_spectral_distance_db": float(lsd), "spectral_convergence": float(sc), "level_db": float(level)}
