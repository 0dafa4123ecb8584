"""Live input: the walks follow the sound as it arrives, and latency compensation puts the noise
walk's fastest motion on the audible beat."""

import threading
import time

import numpy as np

SR = 22050


def clicks(seconds: float, bpm: float) -> np.ndarray:
    y = np.zeros(int(SR * seconds), np.float32)
    for b in np.arange(0.5, seconds, 60 / bpm):
        i = int(b * SR)
        y[i:i + 400] += 0.8 * np.sin(2 * np.pi * 1500 * np.arange(400) / SR) * np.exp(-np.arange(400) / 80)
    return y


def test_beat_steps_peak_on_the_beat():
    """With a steady predicted grid, the angle's speed is highest on each beat and the steps add up."""
    from mlx_musicviz.realtime.follow import BeatSteps
    from mlx_musicviz.walkers import NoiseWalkConfig

    steps = BeatSteps(NoiseWalkConfig(drift=0.0))
    period, times = 0.5, np.arange(0.0, 4.0, 0.01)
    theta = np.array([steps.angle(t, 0.25 + period * np.arange(int(t / period), int(t / period) + 4), period, 1.0)
                      for t in times])
    speed = np.diff(theta) / 0.01
    mid = (times[1:] + times[:-1]) / 2
    for beat in (0.75, 1.25, 1.75, 2.25):
        near = np.abs(mid - beat) < period / 2
        assert abs(mid[near][np.argmax(speed[near])] - beat) <= 0.011
    assert np.all(np.diff(theta) >= -1e-12)  # the walk only goes forward


def test_latency_compensation_puts_the_motion_on_the_clicks():
    """A 60 BPM click track (slow enough for several frames a beat on a 2-core CPU) fed at real-time pace into the analyzer while frames are made as fast as
    the machine can: once the tempo is found, the noise walk's angle between consecutive frames, at the
    times the frames are shown (publish time + the page's display latency, on the stream's clock), moves
    fastest within one frame interval of the clicks."""
    import mlx_musicviz  # noqa: F401
    from mlx_musicviz.pipeline import Pipeline
    from mlx_musicviz.realtime.engine import LiveSettings
    from mlx_musicviz.realtime.follow import DISPLAY_LATENCY, InputFrames, InputGenerator

    bpm, seconds, block = 60.0, 12.0, 512
    y = clicks(seconds, bpm)
    frames = InputFrames(Pipeline.random("tiny"), LiveSettings("x", motion=0.5), size=64)
    shown, thetas = [], []
    angle = frames.steps.angle

    def recording_angle(t, *args):
        thetas.append(angle(t, *args))
        return thetas[-1]

    frames.steps.angle = recording_angle
    start = {}

    def publish(index, seen_at, jpeg):
        shown.append(time.perf_counter() - start["wall"] + DISPLAY_LATENCY)

    generator = InputGenerator(frames, publish, capture_latency=block / SR)

    def feed():
        start["wall"] = time.perf_counter()
        for i in range(0, len(y), block):
            wait = start["wall"] + (i + block) / SR - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            frames.feed(y[i:i + block])
        generator.stop()

    feeder = threading.Thread(target=feed)
    feeder.start()
    generator.run()
    feeder.join()
    assert abs(frames.analyzer.tempo - bpm) < 3, frames.analyzer.tempo
    shown, thetas = np.array(shown), np.array(thetas[: len(shown)])
    interval = float(np.median(np.diff(shown)))
    speed = np.diff(thetas) / np.maximum(np.diff(shown), 1e-3)
    mid = (shown[1:] + shown[:-1]) / 2
    errors = []
    for beat in np.arange(0.5, seconds, 60 / bpm):
        near = np.abs(mid - beat) < 30 / bpm
        if beat < 5.0 or beat > seconds - 0.5 or near.sum() < 2:
            continue  # the tracker locks on in the first seconds
        errors.append(mid[near][np.argmax(speed[near])] - beat)
    assert len(errors) >= 4, (len(errors), interval)
    print(f"frame interval {interval * 1000:.0f} ms; peak offsets from the clicks (ms): "
          f"{np.round(np.array(errors) * 1000).tolist()}")
    assert np.median(np.abs(errors)) <= interval, (errors, interval)
