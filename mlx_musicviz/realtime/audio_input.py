"""Live audio input through PortAudio (the `sounddevice` package): mono float32 blocks from a
microphone, a line input or a sound server's monitor of what is playing.

PortAudio calls back on its own thread with each block; `LiveInput` queues the blocks, mixed down
to mono, for the caller's thread, so a slow consumer delays the analysis instead of losing audio
(until the queue is full: then blocks are dropped and counted).
"""

from __future__ import annotations

import queue

import numpy as np

from ..errors import MusicvizError

QUEUE_SECONDS = 10.0  # audio the queue holds before blocks are dropped (seconds)


def _sounddevice():
    """The sounddevice module, or one MusicvizError line saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise MusicvizError("live audio input needs the sounddevice package: pip install sounddevice") from None
    except OSError:  # sounddevice raises OSError when the PortAudio library is missing
        raise MusicvizError("live audio input needs the PortAudio library: install libportaudio2 "
                            "(Debian, Ubuntu) or portaudio (Homebrew)") from None
    return sounddevice


def rescan() -> None:
    """Make PortAudio list the devices anew: it lists them once, when first loaded, so a device
    plugged in (or a sound server started) later appears only after this. Close every stream first."""
    sd = _sounddevice()
    sd._terminate()  # sounddevice's documented way to re-scan (it has no public one)
    sd._initialize()


def list_devices() -> list[tuple[int, str, int]]:
    """The audio inputs PortAudio offers: (device index, name, input channels), by index."""
    sd = _sounddevice()
    return [(i, d["name"], int(d["max_input_channels"]))
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def _describe(inputs) -> str:
    return "; ".join(f"{i}: {name}" for i, name, _ in inputs) or "none"


def find_device(device) -> int:
    """The index of an input device given by index (an int or a string of digits), by name (a
    case-insensitive substring that must pick one device, or its exact name), or None: the
    default input."""
    inputs = list_devices()
    if not inputs:
        raise MusicvizError("no audio input device found (is a microphone, line input or sound server there?)")
    if device is None:
        default = _sounddevice().default.device[0]
        return default if any(i == default for i, _, _ in inputs) else inputs[0][0]
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool) or str(device).strip().isdigit():
        index = int(device)
        if any(i == index for i, _, _ in inputs):
            return index
        raise MusicvizError(f"no audio input with index {index}; inputs: {_describe(inputs)}")
    name = str(device).strip().lower()
    exact = [i for i, n, _ in inputs if n.lower() == name]
    found = exact or [i for i, n, _ in inputs if name in n.lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise MusicvizError(f"no audio input named like {device!r}; inputs: {_describe(inputs)}")
    raise MusicvizError(f"{device!r} names several audio inputs: "
                        f"{_describe([d for d in inputs if d[0] in found])}; give more of the name or the index")


class LiveInput:
    """An open input stream: mono float32 blocks of `block` samples at `rate` Hz, oldest first.

    Use it as a context manager (or call `close`); iterate over it, or call `read`, to get the
    blocks. `samples_read` / `rate` is the stream time (seconds) of the blocks read so far;
    `dropped` counts blocks lost to a full queue and `overflows` PortAudio's own input overflows.
    """

    def __init__(self, device: int, rate: int, block: int, channels: int):
        sd = _sounddevice()
        self.device, self.rate, self.block = device, rate, block
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(QUEUE_SECONDS * rate / block)))
        self.samples_read = 0
        self.dropped = 0
        self.overflows = 0
        try:
            self.stream = sd.InputStream(device=device, samplerate=rate, blocksize=block, channels=channels,
                                         dtype="float32", callback=self._callback)
            self.stream.start()
        except sd.PortAudioError as e:
            raise MusicvizError(f"cannot open audio input {device} at {rate} Hz: {e}") from None

    def _callback(self, indata, frames, time, status) -> None:  # PortAudio's thread
        if status.input_overflow:
            self.overflows += 1
        try:
            self.queue.put_nowait(indata.mean(axis=1).astype(np.float32))
        except queue.Full:
            self.dropped += 1

    def read(self, timeout: float = 2.0) -> np.ndarray:
        """The next block (shape (block,)), waiting up to `timeout` seconds for it."""
        try:
            samples = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise MusicvizError(f"no audio from input {self.device} for {timeout:g} s") from None
        self.samples_read += len(samples)
        return samples

    def __iter__(self):
        while self.stream.active:
            yield self.read()

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "LiveInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_input(device=None, rate: int | None = None, block: int = 1024) -> LiveInput:
    """Start reading an input: `device` by index or name (see `find_device`; None: the default
    input), `rate` in Hz (None: the device's default rate), `block` samples per block."""
    sd = _sounddevice()
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or not 16 <= block <= 1 << 16:
        raise MusicvizError(f"block must be a whole number of samples from 16 to 65536, got {block!r}")
    index = find_device(device)
    info = sd.query_devices(index)
    if rate is None:
        rate = int(info["default_samplerate"])
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 8000 <= rate <= 384000:
        raise MusicvizError(f"sample rate must be a whole number of Hz from 8000 to 384000, got {rate!r}")
    channels = min(2, int(info["max_input_channels"]))  # stereo at most: mixed down to mono anyway
    return LiveInput(index, int(rate), int(block), channels)
