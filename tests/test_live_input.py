"""Live audio input through PortAudio, on a real sound server: a PulseAudio started for the test
with a null sink, a click track played into it, and its monitor read back through `open_input`
and the causal analyzer."""

import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.realtime.analyzer import CausalAnalyzer
from mlx_musicviz.realtime.audio_input import rescan

RATE = 22050
SINK = "musicviz_test"


def sounddevice_or_skip():
    """sounddevice with its PortAudio, or a skip that says what to install."""
    try:
        import sounddevice
    except ImportError:
        pytest.skip("sounddevice is not installed (pip install sounddevice)")
    except OSError:
        pytest.skip("the PortAudio library is missing (apt-get install libportaudio2)")
    return sounddevice


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A private PulseAudio server (its own socket, no default configuration) whose only sink is a
    null sink and whose default source is that sink's monitor; stopped after the tests. Clients of
    this process reach it through PULSE_SERVER."""
    sounddevice_or_skip()
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed (apt-get install pulseaudio)")
    root = tmp_path_factory.mktemp("pulse")
    socket = root / "run" / "native"
    socket.parent.mkdir()
    config = root / "server.pa"
    config.write_text(f"load-module module-null-sink sink_name={SINK} rate={RATE}\n"
                      f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket}\n"
                      f"set-default-sink {SINK}\nset-default-source {SINK}.monitor\n")
    env = dict(os.environ, HOME=str(root), XDG_RUNTIME_DIR=str(socket.parent), PULSE_RUNTIME_PATH=str(socket.parent))
    log = open(root / "pulseaudio.log", "wb")
    server = subprocess.Popen(["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--system=false", "-n",
                               "-F", str(config), "--log-target=stderr"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while not socket.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not socket.exists():
        server.kill()
        server.wait()
        pytest.fail(f"pulseaudio did not start: {(root / 'pulseaudio.log').read_text(errors='replace')[-2000:]}")
    previous = os.environ.get("PULSE_SERVER")
    os.environ["PULSE_SERVER"] = f"unix:{socket}"  # read by libpulse when it connects
    rescan()  # PortAudio lists ALSA's pulse device only while a server answers
    try:
        yield socket
    finally:
        if previous is None:
            os.environ.pop("PULSE_SERVER", None)
        else:
            os.environ["PULSE_SERVER"] = previous
        rescan()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def click_track(bpm, seconds, rate=RATE):
    y = np.zeros(int(seconds * rate), np.float32)
    click = (np.hanning(400)[200:] * np.sin(np.arange(200) * 0.9)).astype(np.float32)
    for t in np.arange(0.2, seconds - 0.1, 60.0 / bpm):
        i = int(round(t * rate))
        y[i:i + 200] += 0.8 * click
    return y


def play(y, rate=RATE):
    """Play `y` into the server's default sink (the null sink) through PortAudio, blocking."""
    import sounddevice as sd

    sd.play(y, rate, device="pulse", blocking=True)


def test_list_devices_has_the_server(pulse):
    from mlx_musicviz.realtime.audio_input import find_device, list_devices

    inputs = list_devices()
    assert inputs and all(isinstance(i, int) and isinstance(n, str) and c > 0 for i, n, c in inputs)
    names = [n for _, n, _ in inputs]
    assert "pulse" in names
    index = names.index("pulse")
    assert find_device("PULSE") == inputs[index][0] == find_device(inputs[index][0]) == find_device(str(inputs[index][0]))


@pytest.mark.parametrize("device, message", [("no-such-input", "no audio input named like"), (9999, "no audio input with index")])
def test_unknown_device_names_the_inputs(pulse, device, message):
    from mlx_musicviz.realtime.audio_input import open_input

    with pytest.raises(MusicvizError, match=message) as e:
        open_input(device)
    assert "pulse" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, message", [(dict(block=0), "block"), (dict(rate=100), "sample rate")])
def test_bad_settings(pulse, kwargs, message):
    from mlx_musicviz.realtime.audio_input import open_input

    with pytest.raises(MusicvizError, match=message):
        open_input("pulse", **kwargs)


def test_clicks_played_into_the_sink_are_heard_at_their_tempo(pulse):
    """10 s of 128-BPM clicks through the null sink and back through its monitor: the blocks carry
    the clicks, and the analyzer finds beats at 128 BPM."""
    from mlx_musicviz.realtime.audio_input import open_input

    bpm, seconds, block = 128, 10.0, 512
    player = threading.Thread(target=play, args=(click_track(bpm, seconds),))
    analyzer = CausalAnalyzer(RATE)
    peaks = []
    with open_input("pulse", rate=RATE, block=block) as live:
        player.start()
        deadline = time.monotonic() + seconds + 10
        while (player.is_alive() or not live.queue.empty()) and time.monotonic() < deadline:
            samples = live.read(timeout=5.0)
            assert samples.shape == (block,) and samples.dtype == np.float32
            peaks.append(float(np.abs(samples).max()))
            analyzer.process(samples)
        player.join()
    peaks = np.array(peaks)
    heard = peaks > 0.1
    assert heard.sum() >= 0.5 * seconds * bpm / 60, f"only {heard.sum()} blocks with a click"
    assert live.dropped == 0
    beats = np.array(analyzer.beat_times)
    late = beats[beats >= beats[0] + 4.0] if len(beats) else beats  # after the tracker has locked on
    assert len(late) >= 8, f"beats {beats}"
    interval = float(np.median(np.diff(late)))
    print(f"heard {heard.sum()} click blocks; tempo {analyzer.tempo:.2f} BPM, beat interval {interval * 1000:.1f} ms")
    assert abs(analyzer.tempo / bpm - 1) < 0.03
    assert abs(interval / (60.0 / bpm) - 1) < 0.03


def test_live_follows_a_real_input(pulse, tmp_path):
    """`musicviz-mlx live --input pulse` on the null sink's monitor, while 128-BPM clicks play into
    the sink: the server hears them (beats found, the tempo within 3 %) and makes frames from them."""
    import json
    import re
    import sys
    import urllib.request

    cmd = [sys.executable, "-m", "mlx_musicviz.cli", "live", "--input", "pulse", "-p", "a lighthouse",
           "--model", "random:tiny", "--size", "64", "--no-open", "--port", "0"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.match(r"live: (\S+)", server.stdout.readline())
        assert url, server.stderr.read() if server.poll() is not None else "no URL"
        play(click_track(128, 12.0))
        with urllib.request.urlopen(url[1] + "stats", timeout=10) as r:
            stats = json.load(r)
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(f"live --input: {stats['beats']} beats, {stats['tempo_bpm']} BPM, {stats['frames_generated']} frames, "
          f"latency {stats['latency_ms']} ms")
    assert stats["frames_generated"] > 10 and stats["beats"] >= 8, stats
    assert abs(stats["tempo_bpm"] / 128 - 1) < 0.03, stats
    assert stats["error"] is None


def play_timed(y, rate=RATE) -> float:
    """Play `y` into the null sink through PortAudio, blocking; returns the wall-clock time (time.time())
    at which its first sample reaches the sink, from PortAudio's DAC time of the first buffer."""
    import sounddevice as sd

    at, first, done = [0], {}, threading.Event()

    def callback(out, frames, when, status):
        if not first:
            first["dac"], first["now"] = when.outputBufferDacTime, when.currentTime
        chunk = y[at[0]:at[0] + frames]
        out[:len(chunk), 0] = chunk
        out[len(chunk):, 0] = 0
        at[0] += frames
        if at[0] >= len(y):
            raise sd.CallbackStop

    with sd.OutputStream(rate, channels=1, dtype="float32", device="pulse", callback=callback,
                         finished_callback=done.set) as stream:
        wall, clock = time.time(), stream.time
        done.wait(len(y) / rate + 10)
        latency = float(stream.latency)
    dac = first["dac"] if first["dac"] > 0 else first["now"] + latency  # a backend without DAC times
    return wall + (dac - clock)


# Records, in the page, the wall-clock time of each frame it draws and how far its pixels moved from the
# frame drawn before (the sum of absolute RGB differences): the motion a viewer sees.
RECORD_SHOWN = """
window.__shown = [];
let previous = null;
const draw = window.show;
window.show = function (index, frame, now, t) {
  draw(index, frame, now, t);
  const canvas = document.getElementById("view");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let change = 0;
  if (previous && previous.length === data.length) {
    for (let i = 0; i < data.length; i += 4) {
      change += Math.abs(data[i] - previous[i]) + Math.abs(data[i + 1] - previous[i + 1]) + Math.abs(data[i + 2] - previous[i + 2]);
    }
  }
  previous = data;
  window.__shown.push([(performance.timeOrigin + now) / 1000, change, index]);
};
"""


@pytest.mark.slow
def test_the_motion_on_the_page_peaks_on_the_clicks_through_the_whole_path(pulse, tmp_path):
    """Latency compensation measured through the whole input path: 60-BPM clicks played into the
    sound server's null sink, `live --input pulse` on its monitor, the frames shown by headless
    Chromium. Once the tempo is found, the change between consecutive frames on the page (pixels, at
    the wall-clock times the page drew them) peaks within one frame interval of the clicks (at the
    times PortAudio says they reached the sink). A beat's peak is the centroid of the change around it
    (the frame with the most change alone lands a frame either side of it as often as not: the eased
    step spreads over the beat, and JPEG and the prompt walk add their own small changes)."""
    import re
    import sys

    from test_live import chromium

    bpm, seconds = 60.0, 20.0
    cmd = [sys.executable, "-m", "mlx_musicviz.cli", "live", "--input", "pulse", "-p", "a lighthouse",
           "--model", "random:tiny", "--size", "64", "--motion", "0.5", "--no-open", "--port", "0"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    browser = None
    try:
        url = re.match(r"live: (\S+)", server.stdout.readline())
        assert url, server.stderr.read() if server.poll() is not None else "no URL"
        browser = chromium()
        browser.get(url[1])
        browser.execute_script(RECORD_SHOWN)
        y = click_track(bpm, seconds)
        start = play_timed(y)
        time.sleep(1.0)
        shown = np.array(browser.execute_script("return window.__shown"), dtype=float)
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=20)
    assert len(shown) > 20, f"{len(shown)} frames shown"
    interval = float(np.median(np.diff(shown[:, 0])))
    speed = shown[1:, 1] / np.maximum(np.diff(shown[:, 0]), 1e-3)  # pixel change a second between two frames
    mid = (shown[1:, 0] + shown[:-1, 0]) / 2
    clicks = start + np.arange(0.2, seconds - 0.1, 60.0 / bpm)
    errors, centroids = [], []
    for click in clicks[clicks >= start + 8.0]:  # after the tracker has locked on
        near = np.abs(mid - click) < 30.0 / bpm
        if near.sum() >= 2:
            errors.append(mid[near][np.argmax(speed[near])] - click)
            w = speed[near] - speed[near].min()
            centroids.append(float(np.sum(w * mid[near]) / max(np.sum(w), 1e-9)) - click)
    print(f"{len(shown)} frames shown, interval {interval * 1000:.0f} ms; offsets of the change's centroid from "
          f"the clicks (ms): {np.round(np.array(centroids) * 1000).tolist()} (median {np.median(centroids) * 1000:.0f}); "
          f"of its largest frame: {np.round(np.array(errors) * 1000).tolist()}")
    assert len(centroids) >= 6, (len(centroids), interval)
    assert np.median(np.abs(centroids)) <= interval, (centroids, interval)
