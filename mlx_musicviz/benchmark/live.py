"""The live scenario: live mode's generator on a song with a simulated page, no browser.

The page is simulated as `page.html` behaves: it waits until the buffer covers the hold the server asks
for, then its clock runs in real time from the song's start; at each screen refresh (60 Hz) it shows the
newest frame at or before the clock; when the buffer runs dry it pauses and waits again; it reports its
clock to the generator as the page does. What it measures is the server side of live mode (generation,
pace adaptation, scheduling ahead of the clock); the real page in a real browser is tested in
tests/test_live.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .config import PROMPT

REFRESH = 1 / 60  # seconds between the simulated page's screen refreshes
REPORT = 0.25  # seconds between its reports of the clock to the generator


class SimulatedPage:
    """The page's clock and display, on a thread of its own, over frames published by a Generator."""

    def __init__(self, generator, seconds: float, limit: float):
        self.generator, self.seconds, self.limit = generator, seconds, limit
        self.fps = generator.frames.fps
        self.arrived: dict[int, float] = {}  # frame index -> wall time it was published
        self.lock = threading.Lock()
        self.shown: list[tuple[float, int, float, int]] = []  # (wall time, frame, sync error in s, stretch of play)
        self.stalls = 0  # times playback paused for the buffer after it started
        self.started_after = None  # wall seconds from the start to the first playback
        self.played = 0.0  # seconds of the song played

    def publish(self, index: int, jpeg: bytes) -> None:
        with self.lock:
            self.arrived[index] = time.perf_counter()

    def run(self) -> None:
        gen, t0 = self.generator, time.perf_counter()
        clock, playing, since, last_report = 0.0, False, None, 0.0
        end = min(self.seconds, gen.frames.n_frames / self.fps)
        while clock < end and time.perf_counter() - t0 < self.limit:
            now = time.perf_counter()
            if playing:
                clock = self.played + (now - since)
                if gen.buffered() < 0.05 and end - clock > 0.5:  # ran dry: pause and hold, as the page does
                    self.played, playing, self.stalls = clock, False, self.stalls + 1
            elif gen.buffered() >= min(gen.hold(), max(0.0, end - clock - 0.05)):
                playing, since = True, now
                self.started_after = self.started_after if self.started_after is not None else now - t0
            if now - last_report >= REPORT:
                gen.follow(clock, playing)
                last_report = now
            if playing:
                self._show(now, clock, self.stalls)
            time.sleep(REFRESH)
        self.played = clock
        gen.stop()

    def _show(self, now: float, clock: float, stretch: int) -> None:
        with self.lock:
            due = [k for k in self.arrived if k / self.fps <= clock + 1e-6]
        if due:
            best = max(due)
            if not self.shown or self.shown[-1][1] != best:
                self.shown.append((now, best, clock - best / self.fps, stretch))


def bench_live(pipe, audio, size, fps: float, seconds: float) -> dict:
    """Play `seconds` of `audio` through live mode's generator with `pipe` at `size` and `fps`; returns the
    page's figures: frames shown per second of playback, sync error (median and p95, ms: how far the shown
    frame's time lies behind the clock), largest gap between frames shown, stalls, the wait before
    playback, and the generator's rate, chunk latency and the pace it settled at."""
    from ..audio import analyze
    from ..realtime.engine import Generator, LiveSettings, SongFrames

    features = analyze(audio, fps=fps, duration=seconds)
    frames = SongFrames(pipe, features, LiveSettings(PROMPT), size=size)
    generator = Generator(frames, publish=lambda index, jpeg: page.publish(index, jpeg))
    page = SimulatedPage(generator, seconds, limit=60 + 20 * seconds)  # a machine far too slow still ends
    watcher = threading.Thread(target=page.run, daemon=True, name="musicviz-bench-page")
    t0 = time.perf_counter()
    watcher.start()
    generator.run()  # this thread: the one that loaded the model
    watcher.join()
    wall = time.perf_counter() - t0
    sync_ms = 1000 * np.array([e for _, _, e, _ in page.shown]) if page.shown else np.zeros(1)
    # gaps between frames shown while playing (a pause for the buffer is a stall, not a gap, as on the page)
    gaps = [1000 * (b[0] - a[0]) for a, b in zip(page.shown, page.shown[1:]) if a[3] == b[3]] or [0.0]
    return {"model": str(pipe.record.get("source", pipe.folder)), "size": [frames.width, frames.height], "fps": fps, "played_s": page.played, "wall_s": wall, "waited_s": page.started_after,
            "shown": len(page.shown), "displayed_fps": len(page.shown) / max(page.played, 1e-9),
            "sync_min_ms": float(sync_ms.min()), "sync_median_ms": float(np.median(sync_ms)),
            "sync_p95_ms": float(np.percentile(sync_ms, 95)),
            "max_gap_ms": float(max(gaps)), "stalls": page.stalls,
            "generated_fps": generator.generated / max(wall, 1e-9),
            "chunk_latency_ms": 1000 * float(np.median(generator.latencies)) if generator.latencies else None,
            "cadence": frames.cadence, "stride": frames.stride}
